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

TESTS = Path(__file__).resolve().parent

LONGEST_FIRST = (
    "integration/test_docs.py",  # 1,081 s
    "integration/test_dev_cli.py",  # 424 s
    "integration/test_queue_bridges.py",  # 388 s
    "integration/test_stream_bridges.py",  # 220 s
    "integration/test_wheel.py",  # 200 s
    "integration/test_lambda_api.py",  # 186 s
    "integration/test_cli.py",  # 167 s
    "integration/test_logs.py",  # 163 s
    "integration/test_ha.py",  # 158 s
    "integration/test_auth.py",  # 148 s
    "integration/test_bucket_bridge.py",  # 145 s
    "integration/test_async_crash.py",  # 126 s
    "integration/test_triggers.py",  # 115 s
)
"""The modules that take minutes, longest first (each one's seconds in a run with two workers at load 13-72,
2026-12-06). They run first, so that under pytest-xdist (``make test-local``: ``--dist loadfile``, whole modules
handed out in this order to whichever worker is nearly done) no worker starts one of them while the other is about
to finish; the unit tests come last, to fill the gaps."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def order(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.relative_to(TESTS).as_posix()
        return rank.get(name, len(rank)), name.startswith("unit/")

    items.sort(key=order)  # stable: each module's tests keep their order


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
