"""The suite's last module (it changes and then removes the platform): ``helm upgrade`` to a python3.11 warm pool in
a namespace the chart did not create (``gateway.warmPools.createNamespace=false``) and a cold invoke served by a
pool pod, ``helm upgrade`` to two gateway replicas, ``helm uninstall`` leaving nothing but the CRDs, then
``kubelambda dev down`` leaving nothing on the host."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.cluster import backend
from kltest.e2e import invoke, new_on_node, python, ready
from kltest.platform import lambda_client
from kubelambda.devcluster._binaries import ensure_binaries, repo_root
from kubelambda.devcluster._chart import RESTRICTED
from kubelambda.devcluster._containernode import host_leftovers

SYSTEM = "kubelambda-system"
CHART_POOL_NS = "kubelambda-warm-pool"  # the chart's (gateway.warmPools.createNamespace, the default)
POOL_NS = "kubelambda-e2e-pools"  # a namespace of the user's, given with createNamespace=false
# What Kubernetes makes in every namespace: all a namespace holds after `helm uninstall` (uninstall.keepData off:
# NATS's claim and the developer's access-key Secret, which `dev up` made, go too).
KEPT = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
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
    # The chart made its warm-pool namespace, enforcing Pod Security "restricted".
    labels = cluster.kubectl_json("get", "namespace", CHART_POOL_NS)["metadata"]["labels"]
    assert RESTRICTED.items() <= labels.items(), labels
    # The pools in a namespace of the user's (createNamespace=false), so that the uninstall test sees the chart's
    # hook delete them: nothing deletes that namespace. The chart's own goes with the upgrade.
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": POOL_NS, "labels": RESTRICTED}},
        "default",
    )
    # One gateway replica: each replica keeps its own pool view and claims in memory (docs/warm-pools.md), and
    # before leader election a second replica scaled a function the first had just activated back to zero.
    helm(
        cluster, "upgrade", "kubelambda", str(repo_root() / "helm" / "kubelambda"), "-n", SYSTEM,
        "--reuse-values", "--set", "gateway.replicas=1", "--set", "gateway.warmPools.sizes.python3\\.11=1",
        "--set", "gateway.warmPools.createNamespace=false", "--set", f"gateway.warmPools.namespace={POOL_NS}",
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
    # What the platform made at run time, which the release does not own: the gateway's pool Deployment and its
    # NetworkPolicy and pods (a claimed one released by its ReplicaSet) in the user's pool namespace, the gateway
    # replicas' Leases, NATS's claim (the StatefulSet's), the developer's access key (a Secret `dev up` made).
    before = {
        "pools": cluster.kubectl("get", "deployments,networkpolicies", "-n", POOL_NS, "-o", "name").stdout,
        "leases": cluster.kubectl("get", "leases", "-n", SYSTEM, "-o", "name").stdout,
        "claim": cluster.kubectl("get", "pvc", "-n", SYSTEM, "-o", "name").stdout,
        "access key": cluster.kubectl(
            "get", "secrets", "-n", SYSTEM, "-l", "kubelambda.io/access-key=true", "-o", "name"
        ).stdout,
    }
    assert all(before.values()), before
    helm(cluster, "uninstall", "kubelambda", "-n", SYSTEM, "--wait", "--timeout", "5m")
    kinds = ",".join(
        kind
        for kind in cluster.kubectl(
            "api-resources", "--verbs=list", "--namespaced", "-o", "name"
        ).stdout.split()
        if kind not in ("events", "events.events.k8s.io")
    )

    def left() -> list[str]:
        # Every object of every namespaced kind in the release namespace and the pool namespace, but what
        # Kubernetes puts in every namespace; the release's cluster-wide RBAC; the chart's pool namespace.
        names = [
            f"{ns}: {name}"
            for ns in (SYSTEM, POOL_NS)
            for name in cluster.kubectl("get", kinds, "-n", ns, "-o", "name").stdout.split()
            if name not in KEPT
        ]
        names += cluster.kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", INSTANCE, "-o", "name"
        ).stdout.split()
        names += cluster.kubectl(
            "get", "namespace", CHART_POOL_NS, "--ignore-not-found", "-o", "name"
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
    cluster.kubectl("delete", "namespace", POOL_NS, "--wait=false")


async def test_dev_down_leaves_nothing_on_the_host(
    cluster: Cluster, host_before: dict[str, set[str]]
) -> None:
    if backend() == "kind":
        # No `dev down` on kind (make kind-local-down deletes the cluster): the same property inside the kind node.
        # The suite's pods, the platform's with the uninstall, are gone with everything their sandboxes had:
        # veths, mounts, iptables rules and chains, ipsets (the test namespaces go in the background).
        await wait_for(
            lambda: asyncio.to_thread(new_on_node, host_before),
            lambda new: not new,
            what="the kind node to hold nothing the suite's pods made",
            timeout=240,  # under pytest-timeout's 300 s, so a failure names what is left
        )
        return
    down = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelambda", "dev", "down", "--state-dir", str(cluster.state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert host_leftovers() == []
    if not host_before:  # KUBELAMBDA_E2E_STATE_DIR: no snapshot from before that cluster started
        return
    new = new_on_node(host_before)
    assert not new, f"left by the container node: {new}"
    assert not list(Path("/run/kubelambda").glob("containerd*")), list(Path("/run/kubelambda").iterdir())
