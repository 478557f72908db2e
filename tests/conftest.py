"""Fixtures: one local cluster per test session, a fresh namespace per test, an API client, and per test module
a nats-server (JetStream, file storage), an HTTP record receiver and the platform (a module that needs other
gateway settings defines its own ``platform``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kltest import Cluster, create_namespace, start_cluster
from kltest.platform import FAST_ASYNC, Env, PlatformUnderTest, running_platform
from kltest.records import Records
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # Kept when the cluster did not end well, so its component logs can be read afterwards.
    tmp = Path(tempfile.mkdtemp(prefix="kubelambda-test-"))
    running = start_cluster(tmp)
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, (
            f"the local cluster exited with {code}; its logs are in {tmp}/logs and {tmp}/serve.log"
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    async with KubeClient.from_kubeconfig(cluster.kubeconfig) as client:
        yield client


@pytest.fixture
async def namespace(cluster: Cluster, kube: KubeClient) -> AsyncIterator[str]:
    name = await create_namespace(kube, "t")
    yield name
    await kube.delete(resource_path("v1", "namespaces", name=name))


@pytest.fixture(scope="module")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    async with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
async def records() -> AsyncIterator[Records]:
    got = Records()
    await got.start()
    yield got
    await got.stop()


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    """The operator and the gateway, Event invocations in the module's NATS, retried within a second."""
    async with running_platform(cluster, kube, nats_url=nats_server.url, **FAST_ASYNC) as platform:
        yield platform


@pytest.fixture
def env(
    platform: PlatformUnderTest, cluster: Cluster, kube: KubeClient, namespace: str, records: Records
) -> Env:
    return Env(cluster, kube, platform.gateway, platform.url, namespace, records)
