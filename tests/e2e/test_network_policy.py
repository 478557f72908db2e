"""NetworkPolicies enforced on the container node (kube-router's controller): a Function's ingress policy (the
operator's) admits the gateway and refuses a pod of another namespace; its egress policy denies the cloud metadata
address (the chart's ``networkPolicy.functionEgressDeny``) that a pod without policies reaches."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kltest import Cluster, create_namespace, wait_for
from kltest.cluster import backend
from kltest.e2e import connect, function_pods, invoke, node_bridge, on_node, python, ready
from kubelambda.devcluster._chart import RESTRICTED
from kubelambda.kube import KubeClient, resource_path

SYSTEM = "kubelambda-system"
METADATA = "169.254.169.254"
METADATA_PORT = 8169  # outside the NodePort range, which kube-router lets every pod reach on the node
PROBER_IMAGE = "ghcr.io/kubelambda/runtime-python:3.11"


@pytest.fixture
def metadata_listener() -> Iterator[None]:
    """A TCP listener on the metadata address, on the node's bridge (a pod reaches it through its gateway): on
    this host for the container node; inside the kind node for the kind backend (socat, which the node has)."""
    on_node("ip", "addr", "add", f"{METADATA}/32", "dev", node_bridge())
    try:
        if backend() == "kind":
            listen = f"socat TCP-LISTEN:{METADATA_PORT},bind={METADATA},fork,reuseaddr SYSTEM:true"
            pid = on_node("sh", "-c", f"{listen} >/dev/null 2>&1 & echo $!").strip()
            try:
                deadline = time.monotonic() + 30
                while f"{METADATA}:{METADATA_PORT}" not in on_node("ss", "-Hltn"):
                    assert time.monotonic() < deadline, f"socat in the kind node is not listening ({pid})"
                    time.sleep(0.1)
                yield
            finally:
                on_node("kill", pid, check=False)
            return
        with listening(METADATA, METADATA_PORT):
            yield
    finally:
        on_node("ip", "addr", "del", f"{METADATA}/32", "dev", node_bridge(), check=False)


@contextlib.contextmanager
def listening(address: str, port: int) -> Iterator[None]:
    """A TCP listener in this process that accepts and closes every connection."""
    server = socket.create_server((address, port))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
async def prober(cluster: Cluster, kube: KubeClient) -> AsyncIterator[tuple[str, str]]:
    """A pod in a namespace of its own, with no NetworkPolicy: (namespace, pod name)."""
    ns = await create_namespace(kube, "prober", labels=RESTRICTED)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "prober"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "prober",
                    "image": PROBER_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", "import signal; signal.pause()"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    await kube.create(resource_path("v1", "pods", namespace=ns), pod)
    await wait_for(
        lambda: kube.get(resource_path("v1", "pods", namespace=ns, name="prober")),
        lambda p: any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
        ),
        what="the prober pod Ready",
        timeout=120,
    )
    yield ns, "prober"
    await kube.delete(resource_path("v1", "namespaces", name=ns))


async def test_function_policies_admit_the_gateway_only_and_deny_metadata(
    cluster: Cluster,
    kube: KubeClient,
    client: Any,
    namespace: str,
    prober: tuple[str, str],
    metadata_listener: None,
) -> None:
    code = "def handler(event, context):\n    return 'guarded'\n"
    cluster.apply(python("guarded", code, scaling={"minInstances": 1}), namespace)
    await ready(cluster, namespace, "guarded")
    answer = await asyncio.to_thread(invoke, client, f"{namespace}/guarded")
    assert answer["body"] == "guarded", answer["body"]  # through the gateway, which the policy admits
    [pod] = [p for p in await function_pods(kube, namespace) if p["status"].get("phase") == "Running"]
    fn_pod, fn_ip = pod["metadata"]["name"], pod["status"]["podIP"]
    policies = cluster.kubectl("get", "networkpolicies", "-n", namespace, "-o", "name").stdout.split()
    assert len(policies) == 2, policies  # the operator's ingress and egress policies
    [gateway] = cluster.kubectl_json(
        "get", "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=gateway", "--field-selector",
        "status.phase=Running",
    )["items"][:1]  # fmt: skip
    gateway_pod, gateway_ip = gateway["metadata"]["name"], gateway["status"]["podIP"]
    prober_ns, prober_pod = prober

    # The prober reaches what no policy closes to it: the gateway's port and the metadata listener.
    assert connect(cluster, prober_ns, prober_pod, gateway_ip, 8080) == "connected"
    assert connect(cluster, prober_ns, prober_pod, METADATA, METADATA_PORT) == "connected"
    # The function's agent: open to the gateway, closed to the prober (once kube-router has synced the pod).
    assert connect(cluster, SYSTEM, gateway_pod, fn_ip, 8080) == "connected"
    refused = await wait_for(
        lambda: asyncio.to_thread(connect, cluster, prober_ns, prober_pod, fn_ip, 8080),
        lambda out: out != "connected",
        what="the function's ingress policy to refuse the prober",
        timeout=60,
    )
    print(f"prober -> function pod {fn_ip}:8080: {refused}")
    assert connect(cluster, SYSTEM, gateway_pod, fn_ip, 8080) == "connected"
    # The function pod cannot reach the metadata address (its egress policy's except).
    denied = connect(cluster, namespace, fn_pod, METADATA, METADATA_PORT)
    print(f"function pod -> {METADATA}:{METADATA_PORT}: {denied}")
    assert denied != "connected", denied
    assert connect(cluster, namespace, fn_pod, gateway_ip, 8080) == "connected"  # other egress stays open
