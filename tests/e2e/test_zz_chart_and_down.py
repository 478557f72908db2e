"""The suite's last module (it changes and then removes the platform): ``helm upgrade`` to a python3.11 warm pool
and a cold invoke served by a pool pod, ``helm upgrade`` to two gateway replicas and the pool sized 0, ``helm
uninstall`` leaving nothing but the CRDs, then ``kubelambda dev down`` leaving nothing on the host."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.e2e import host_snapshot, invoke, python, ready
from kltest.platform import lambda_client
from kubelambda.devcluster._binaries import ensure_binaries, repo_root
from kubelambda.devcluster._chart import RESTRICTED
from kubelambda.devcluster._containernode import host_leftovers

SYSTEM = "kubelambda-system"
POOL_NS = "kubelambda-warm-pool"
# In the release namespace after `helm uninstall`: what Kubernetes makes in every namespace, and NATS's claim
# (Kubernetes keeps a StatefulSet's claims: accepted events survive an uninstall, docs/helm.md). Besides these, only
# the developer's access-key Secret (`dev up` makes it, as `kubelambda access-key create` would) may stay.
KEPT = {
    "configmap/kube-root-ca.crt",
    "serviceaccount/default",
    "persistentvolumeclaim/data-kubelambda-nats-0",
}
INSTANCE = "app.kubernetes.io/instance=kubelambda"
POOL = "kubelambda.io/pool-runtime=python3.11"
GATEWAY = "app.kubernetes.io/component=gateway"


def helm(cluster: Cluster, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    result = subprocess.run(
        [str(ensure_binaries(quiet=True).helm), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.mark.timeout(600)
async def test_a_cold_invoke_is_served_by_a_warm_pool_pod(cluster: Cluster, namespace: str) -> None:
    # One gateway replica: each replica keeps its own pool view and claims in memory (docs/warm-pools.md), and
    # before leader election a second replica scaled a function the first had just activated back to zero.
    helm(
        cluster, "upgrade", "kubelambda", str(repo_root() / "helm" / "kubelambda"), "-n", SYSTEM,
        "--reuse-values", "--set", "gateway.replicas=1", "--set", "gateway.warmPools.sizes.python3\\.11=1",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    # The session's client keeps its connections, NodePort-forwarded to the gateway pod before the upgrade, which
    # drains them without a pool: a new client, once the old pod is gone.
    await wait_for(
        lambda: asyncio.to_thread(
            lambda: cluster.kubectl("get", "pods", "-n", SYSTEM, "-l", GATEWAY, "-o", "name").stdout.split()
        ),
        lambda pods: len(pods) == 1,
        what="the gateway pods from before the upgrade to go",
        timeout=120,
    )
    s = cluster.state
    client = lambda_client(s.gateway_url, s.aws_access_key_id, s.aws_secret_access_key)

    def ready_pool_pods() -> list[Any]:
        pods = cluster.kubectl_json("get", "pods", "-A", "-l", POOL)["items"]
        return [
            p
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]

    [pool_pod, *_] = await wait_for(
        lambda: asyncio.to_thread(ready_pool_pods),
        bool,
        what="a ready python3.11 pool pod (the gateway applies its pool Deployment)",
        timeout=300,
    )
    # Pool pods are containers of the kubelet too.
    assert pool_pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    cluster.apply(python("pooled", "def handler(event, context):\n    return 'from the pool'\n"), namespace)
    await ready(cluster, namespace, "pooled")
    answer = await asyncio.to_thread(invoke, client, f"{namespace}/pooled")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert answer["body"] == "from the pool", answer["body"]
    assert headers.get("x-kubelambda-cold-start") == "true", headers
    served_by = headers.get("x-kubelambda-warm-pool")
    assert served_by is not None, f"the cold invoke was not served by a pool pod: {headers}"
    pool_pods = {
        p["metadata"]["name"] for p in cluster.kubectl_json("get", "pods", "-A", "-l", POOL)["items"]
    }
    assert served_by in pool_pods, (served_by, pool_pods)  # a claimed pod keeps its runtime label


@pytest.mark.timeout(900)
async def test_helm_upgrade_to_a_changed_value(cluster: Cluster, client: Any) -> None:
    helm(
        cluster, "upgrade", "kubelambda", str(repo_root() / "helm" / "kubelambda"), "-n", SYSTEM,
        "--reuse-values", "--set", "gateway.replicas=2", "--wait", "--timeout", "5m",
    )  # fmt: skip
    deployment = cluster.kubectl_json("get", "deployment", "-n", SYSTEM, "kubelambda-gateway")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
    # The upgraded gateway answers, authenticating the developer's key: no such Function.
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await asyncio.to_thread(client.invoke, FunctionName="default/no-such-function", Payload=b"{}")


@pytest.mark.timeout(900)
async def test_helm_uninstall_leaves_only_the_crds(cluster: Cluster) -> None:
    # The warm-pool test left the gateway's pool Deployment (made at run time, not a release object) in the pool
    # namespace: the uninstall removes it with that namespace, a release object.
    assert cluster.kubectl(
        "get", "deployments", "-n", POOL_NS, "-l", "kubelambda.io/pool", "-o", "name"
    ).stdout
    namespace = cluster.kubectl_json("get", "namespace", POOL_NS)
    assert RESTRICTED.items() <= namespace["metadata"]["labels"].items(), namespace["metadata"]["labels"]
    assert cluster.kubectl("get", "leases", "-n", SYSTEM, "-o", "name").stdout  # the gateway replicas' Leases
    helm(cluster, "uninstall", "kubelambda", "-n", SYSTEM, "--wait", "--timeout", "5m")
    kinds = ",".join(
        kind
        for kind in cluster.kubectl(
            "api-resources", "--verbs=list", "--namespaced", "-o", "name"
        ).stdout.split()
        if kind not in ("events", "events.events.k8s.io")
    )

    def left() -> list[str]:
        # Every object in the release namespace, but what Kubernetes and `dev up` put there.
        names = [
            name
            for name in cluster.kubectl("get", kinds, "-n", SYSTEM, "-o", "name").stdout.split()
            if name not in KEPT and not name.startswith("secret/kubelambda-access-key-")
        ]
        names += cluster.kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", INSTANCE, "-o", "name"
        ).stdout.split()
        names += cluster.kubectl(
            "get", "namespace", POOL_NS, "--ignore-not-found", "-o", "name"
        ).stdout.split()
        return names

    await wait_for(
        lambda: asyncio.to_thread(left),
        lambda names: not names,
        what="the release's objects and what the platform made at run time to go",
        timeout=240,
    )
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/functions.kubelambda.io" in crds, crds


def test_dev_down_leaves_nothing_on_the_host(cluster: Cluster, host_before: dict[str, set[str]]) -> None:
    down = subprocess.run(
        [sys.executable, "-m", "kubelambda", "dev", "down", "--state-dir", str(cluster.state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert host_leftovers() == []
    if not host_before:  # KUBELAMBDA_E2E_STATE_DIR: no snapshot from before that cluster started
        return
    after = host_snapshot()
    ours = ("klbr0", "10.245.", "KUBE-", "CNI-", "/run/kubelambda", "/var/lib/kubelambda", "veth")
    for what, lines in after.items():
        new = [line for line in lines - host_before[what] if any(mark in line for mark in ours)]
        assert not new, f"{what} left by the container node: {new}"
    assert not list(Path("/run/kubelambda").glob("containerd*")), list(Path("/run/kubelambda").iterdir())
