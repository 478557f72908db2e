"""Issue 17, item 3: the gateway's RBAC is no path to the cluster.

The attack: whoever holds the gateway's token (a gateway bug, a leaked token) uses its write rights. Before, those
were pod patch/delete and Deployment create in the system namespace, beside the operator's ServiceAccount (which
reads every Secret), and ``deployments/scale`` in every namespace (scale kube-system/coredns to zero). Expected:
pool objects only in the warm-pool namespace, which holds no platform ServiceAccount, and the scale of exactly
the Deployments of Functions, each through the Role its Function carries (gone with the Function). The gateway
runs as hack/gateway-rbac.yaml's ServiceAccount here, so its own work (scaling from zero, the warm pool) proves
that what is left is enough.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kltest import Cluster, wait_for
from kltest.platform import (
    POOL_NS,
    SYSTEM_NS,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
)
from kltest.warmpool import warm_pool_platform
from kubelambda.kube import ApiError, KubeClient, resource_path

pytestmark = pytest.mark.integration
GATEWAY = f"system:serviceaccount:{SYSTEM_NS}:kubelambda-gateway"
HELLO = "def handler(event, context):\n    return {'ok': True}\n"


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with warm_pool_platform(cluster, kube, {"python3.11": 1}) as platform:
        yield platform


def can_i(cluster: Cluster, verb: str, what: str, namespace: str, subresource: str | None = None) -> bool:
    """``kubectl auth can-i --as`` the gateway's ServiceAccount."""
    args = ["auth", "can-i", verb, what, "-n", namespace, "--as", GATEWAY]
    if subresource is not None:
        args.append(f"--subresource={subresource}")
    answer = cluster.kubectl(*args, check=False)
    assert answer.stdout.strip() in ("yes", "no"), (
        f"kubectl {' '.join(args)}: {answer.stdout} {answer.stderr}"
    )
    return answer.stdout.strip() == "yes"


async def test_the_gateway_may_not_scale_system_deployments_nor_touch_the_platform_namespace(
    env: Env,
) -> None:
    refused = [
        ("patch", "deployments/coredns", "kube-system", "scale"),
        ("get", "deployments/coredns", "kube-system", "scale"),
        ("patch", "deployments/kubelambda-operator", SYSTEM_NS, "scale"),
        ("delete", "pods", SYSTEM_NS, None),
        ("patch", "pods", SYSTEM_NS, None),
        ("create", "pods", SYSTEM_NS, None),
        ("create", "deployments", SYSTEM_NS, None),
        ("patch", "deployments", SYSTEM_NS, None),
        ("create", "networkpolicies", SYSTEM_NS, None),
        ("patch", "deployments", env.namespace, "scale"),  # a tenant's own Deployments (no Function)
        ("create", "serviceaccounts/token", POOL_NS, None),
    ]
    allowed = {what: can_i(env.cluster, *what) for what in refused}
    assert not any(allowed.values()), f"the gateway may: {[w for w, yes in allowed.items() if yes]}"
    # What it keeps: its pool objects in their own namespace, which holds no platform ServiceAccount.
    for verb, what in (
        ("delete", "pods"),
        ("patch", "pods"),
        ("patch", "deployments"),
        ("create", "deployments"),
    ):
        assert can_i(env.cluster, verb, what, POOL_NS), f"the gateway lost {verb} {what} in {POOL_NS}"
    accounts = await env.kube.list(resource_path("v1", "serviceaccounts", namespace=POOL_NS))
    assert [a["metadata"]["name"] for a in accounts["items"]] in ([], ["default"])
    pods = await env.kube.list(resource_path("v1", "pods", namespace=POOL_NS))
    assert any("kubelambda.io/pool-runtime" in p["metadata"]["labels"] for p in pods["items"]), "no pool pod"
    system = await env.kube.list(
        resource_path("v1", "pods", namespace=SYSTEM_NS),
        params={"labelSelector": "kubelambda.io/pool-runtime"},
    )
    assert system["items"] == [], "pool pods in the system namespace"


async def test_the_gateway_scales_a_functions_deployment_and_no_other(env: Env) -> None:
    doc = python_function("scaled", HELLO)
    doc["spec"]["scaling"] = {"warmPool": False}
    await env.deploy(doc)
    # A tenant's Deployment beside it, with a name the gateway could guess.
    env.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "bystander"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "bystander"}},
                "template": {
                    "metadata": {"labels": {"app": "bystander"}},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
                },
            },
        }
    )
    assert can_i(env.cluster, "patch", "deployments/scaled", env.namespace, "scale")
    assert can_i(env.cluster, "get", "deployments/scaled", env.namespace, "scale")
    assert not can_i(env.cluster, "patch", "deployments/bystander", env.namespace, "scale")
    assert not can_i(
        env.cluster, "patch", "deployments/scaled", env.namespace
    )  # the scale only, not the spec

    # The attack with the gateway's own client: refused by the API server.
    scale = resource_path(
        "apps/v1", "deployments", namespace=env.namespace, name="bystander", subresource="scale"
    )
    with pytest.raises(ApiError) as refused:
        await env.gateway.kube.patch(scale, {"spec": {"replicas": 3}})
    assert refused.value.status == 403
    live = await env.kube.get(scale)
    assert int(live["spec"].get("replicas", 0)) == 0

    # Its own work is intact: an invoke from zero makes the gateway scale the Function's Deployment.
    response = await asyncio.to_thread(
        lambda_client(env.url).invoke, FunctionName=f"{env.namespace}/scaled", Payload=b"{}"
    )
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response, response["Payload"].read()

    # The right goes with the Function (the garbage collector removes its Role and RoleBinding).
    await env.kube.delete(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace, name="scaled")
    )
    await wait_for(
        lambda: env.kube.get_or_none(
            resource_path(
                "rbac.authorization.k8s.io/v1", "rolebindings", namespace=env.namespace, name="scaled-scale"
            )
        ),
        lambda found: found is None,
        what="the Function's scale RoleBinding removed with it",
        timeout=60,
    )
    assert not can_i(env.cluster, "patch", "deployments/scaled", env.namespace, "scale")
