"""The e2e suite: kubelambda from its Helm chart on the container node (``kubelambda dev serve --node container``:
containerd, the real kubelet, CNI, kube-proxy), started once per session; Functions are invoked with boto3 through
the chart's gateway on its NodePort, signed with the developer's access key from ``.kubelambda/dev.json``.

Needs root, Docker with the images of ``make images``, and the container node's Debian packages (``make e2e``
checks and builds them). The last module (``test_zz_down``) stops the cluster with ``kubelambda dev down`` and
checks that nothing it made is left on the host.

``KUBELAMBDA_TEST_BACKEND=kind`` (``make e2e-kind``): the same suite on the kind cluster that hack/kind-up.sh made
on this machine from a locally assembled node image, with the chart installed the same way."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kltest import Cluster, create_namespace, start_cluster
from kltest.cluster import backend, kind_cluster, kubectl_bin
from kltest.e2e import host_snapshot
from kltest.platform import lambda_client
from kubelambda.devcluster import DevState
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._chart import GATEWAY_NODE_PORT, RESTRICTED
from kubelambda.devcluster._containernode import cleanup_host, host_leftovers
from kubelambda.devcluster._platform import Platform
from kubelambda.kube import KubeClient, resource_path

# KUBELAMBDA_E2E_DIR: another folder, for two suites on one machine (a kind run and a container-node run).
E2E_DIR = Path(os.environ.get("KUBELAMBDA_E2E_DIR") or Path(tempfile.gettempdir()) / "kubelambda-e2e")
# The kind backend's: never the container node's folder (a run there removes it first, and test_zz stops it).
KIND_E2E_DIR = Path(tempfile.gettempdir()) / "kubelambda-e2e-kind"


def kind_platform() -> Cluster:
    """The kind cluster hack/kind-up.sh made, chart installed: the gateway on the node's NodePort, and the
    developer's access key made as ``dev up`` makes it."""
    running = kind_cluster(KIND_E2E_DIR)
    node = running.state.node
    inspect = ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", node]
    node_ip = subprocess.run(inspect, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    helper = Platform(KIND_E2E_DIR, ensure_binaries(quiet=True), running.kubeconfig)

    async def developer_key() -> None:
        async with KubeClient.from_kubeconfig(running.kubeconfig) as kube:
            await helper._developer_key(kube)

    asyncio.run(developer_key())
    s = running.state
    s.node_ip, s.node_kind, s.gateway_url = node_ip, "kind", f"http://{node_ip}:{GATEWAY_NODE_PORT}"
    s.aws_access_key_id, s.aws_secret_access_key = helper.access_key_id, helper.secret_access_key
    return running


@pytest.fixture(scope="session")
def host_before() -> dict[str, set[str]]:
    if os.environ.get("KUBELAMBDA_E2E_STATE_DIR"):
        return {}
    if backend() == "kind":  # inside the kind node, the platform installed (hack/kind-up.sh)
        return host_snapshot()
    left = host_leftovers()
    assert not left, f"a container node's leftovers are on this machine before the suite: {left}"
    return host_snapshot()


@pytest.fixture(scope="session")
def cluster(host_before: dict[str, set[str]]) -> Iterator[Cluster]:
    # A container node already running (kubelambda dev up --node container) is used instead of a new one.
    running_dir = os.environ.get("KUBELAMBDA_E2E_STATE_DIR")
    if running_dir:
        state = DevState.read(Path(running_dir))
        if state is None or state.state != "running" or state.node_kind != "container":
            raise RuntimeError(
                f"KUBELAMBDA_E2E_STATE_DIR={running_dir}: no running container node recorded there"
            )
        yield Cluster(state_dir=Path(running_dir), proc=None, state=state, kubectl_path=kubectl_bin())
        return
    if backend() == "kind":
        yield kind_platform()
        return
    shutil.rmtree(E2E_DIR, ignore_errors=True)
    running = start_cluster(E2E_DIR, platform=True, timeout=1500, args=["--node", "container"])
    try:
        yield running
    finally:
        code = running.stop(timeout=180)
        left = cleanup_host(E2E_DIR)  # a supervisor that failed leaves its containers: never leave them
        assert code == 0, f"the cluster exited with {code}; logs in {E2E_DIR}/logs and {E2E_DIR}/serve.log"
        assert not left, left


@pytest.fixture(scope="session")
def client(cluster: Cluster) -> Any:
    s = cluster.state
    assert s.gateway_url, "dev.json names no gateway"
    assert s.aws_access_key_id, "dev.json names no access key"
    return lambda_client(s.gateway_url, s.aws_access_key_id, s.aws_secret_access_key)


@pytest.fixture
async def namespace(cluster: Cluster, kube: KubeClient) -> AsyncIterator[str]:
    """Each test's namespace enforces Pod Security ``restricted``: every function pod of the suite must pass it."""
    name = await create_namespace(kube, "t", labels=RESTRICTED)
    yield name
    await kube.delete(resource_path("v1", "namespaces", name=name))
