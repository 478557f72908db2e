"""Fixtures: one local cluster per test session, a fresh namespace per test, an API client, and per test module
a nats-server (JetStream, file storage) and an HTTP record receiver."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kltest import Cluster, create_namespace, start_cluster
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
        assert isinstance(server, NatsServer)
        yield server


@pytest.fixture(scope="module")
async def records() -> AsyncIterator[Records]:
    got = Records()
    await got.start()
    yield got
    await got.stop()
