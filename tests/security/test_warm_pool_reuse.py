"""Issue 17, item 6: a warm-pool pod that ever served a function is never specialised again, and a
``/specialize`` never reaches a pod it was not meant for.

Root cause of the cross-runtime answer seen once (a python Function's first cold invoke answered by a Node.js
runtime's ``Runtime.ImportModuleError: Cannot find module 'app'``): the gateway picks pool pods from its watch,
whose addresses lag the cluster, and pod addresses are reused at once (the local node hands a released address
to the next pod first). A /specialize meant for a deleted python pool pod then reached the Node.js pool pod now
holding its address, which accepted it and failed to load ``app``. The first test builds exactly that stale
view and checks the fix (the request names its runtime and pod uid; another pod refuses it, 421).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from kltest import Cluster, wait_for
from kltest.platform import (
    AGENT_KEY,
    POOL_NS,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
)
from kltest.warmpool import free_pool_pods, pool_of, wait_free_pool_pods, warm_pool_platform
from kubelambda import metrics
from kubelambda.agentauth import bearer, pool_token
from kubelambda.gateway.warmpool import PoolPod
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
SIZES = {"python3.11": 1, "nodejs20": 1}

HELLO = "def handler(event, context):\n    return {'runtime': 'python', 'function': context.function_name}\n"
# Code that makes its pod's agent restart: it kills its parent (the agent) mid-invocation.
KILL_AGENT = "import os, signal\n\ndef handler(event, context):\n    os.kill(os.getppid(), signal.SIGKILL)\n"


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with warm_pool_platform(cluster, kube, SIZES) as platform:
        yield platform


async def invoke(url: str, name: str) -> tuple[int, bytes, bool, dict[str, str]]:
    def call() -> tuple[int, bytes, bool, dict[str, str]]:
        response = lambda_client(url).invoke(FunctionName=name, Payload=b"{}")
        headers = response["ResponseMetadata"]["HTTPHeaders"]
        return response["StatusCode"], response["Payload"].read(), "FunctionError" in response, headers

    return await asyncio.to_thread(call)


async def agent_state(ip: str, runtime: str) -> JSON:
    headers = bearer(pool_token(AGENT_KEY, POOL_NS, runtime))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{ip}:8080/specialize", headers=headers) as resp,
    ):
        state: JSON = await resp.json(content_type=None)
        return state


async def test_a_specialisation_sent_to_a_stale_address_never_runs_on_the_pod_now_holding_it(
    env: Env,
) -> None:
    gateway = env.gateway
    pool = pool_of(gateway)
    (node_pod,) = (await wait_free_pool_pods(gateway, "nodejs20", 1))[:1]
    # The gateway's view right after python pool pods were deleted and a Node.js pod got an address of theirs:
    # the only free python pod it knows of is gone, and its address is the Node.js pod's.
    hidden = {real.name for real in free_pool_pods(gateway, "python3.11")}
    pool._taken |= hidden
    stale = PoolPod(
        name="warm-pool-python3-11-deleted",
        uid="00000000-0000-0000-0000-000000000000",
        runtime="python3.11",
        ip=node_pod.ip,
        ready=True,
        free=True,
        deleting=False,
        function=None,
        claimed_at=None,
    )
    pool.pods[stale.name] = stale
    try:
        await env.deploy(python_function("hello", HELLO))
        status, payload, error, headers = await invoke(env.url, f"{env.namespace}/hello")
    finally:
        pool.pods.pop(stale.name, None)
        pool._taken -= hidden
    assert (status, error) == (200, False), payload
    assert json.loads(payload) == {"runtime": "python", "function": "hello"}
    assert headers.get("x-kubelambda-warm-pool") != node_pod.name
    # The Node.js pod refused and is still generic: nothing else broke, it serves the next Node.js function.
    assert (await agent_state(node_pod.ip, "nodejs20"))["state"] == "generic"
    assert node_pod.name not in pool._taken


async def test_a_pool_pod_whose_function_restarts_its_agent_is_never_specialised_again(env: Env) -> None:
    gateway = env.gateway
    # Retired as "failed" (the gateway saw its agent fail mid-invocation) or "restarted" (the pod watch saw the
    # kubelet restart it first): either way before any other reason, and never handed out again.
    retired = [metrics.WARM_POOL_RETIRED.labels(reason) for reason in ("failed", "restarted")]
    before = sum(c._value.get() for c in retired)
    await wait_free_pool_pods(gateway, "python3.11", 1)
    await env.deploy(python_function("restarter", KILL_AGENT))
    with pytest.raises(ClientError, match="ServiceException"):
        # The agent dies mid-invocation: the gateway answers a ServiceException.
        await invoke(env.url, f"{env.namespace}/restarter")
    # The gateway retires the pod that failed (the kubelet restarts its agent, which has forgotten its function):
    # it is deleted and never handed to anyone.
    serving = pool_of(gateway).serving.get((env.namespace, "restarter")) or []
    pod = serving[0].pod if serving else None  # None: already retired (the counter below says so)
    if pod is not None:
        path = resource_path("v1", "pods", namespace=POOL_NS, name=pod)
        await wait_for(
            lambda: env.kube.get_or_none(path),
            lambda p: p is None or p["metadata"].get("deletionTimestamp") is not None,
            what=f"pool pod {pod} deleted after its agent restarted",
            timeout=120,
        )
    await wait_for(
        lambda: asyncio.sleep(0, result=sum(c._value.get() for c in retired)),
        lambda n: n >= before + 1,
        what="a pool pod retired with reason failed or restarted",
        timeout=120,
    )

    # Nothing else broke: another function's cold start is served by another pool pod, correctly.
    await env.deploy(python_function("after", HELLO))
    status, payload, error, headers = await invoke(env.url, f"{env.namespace}/after")
    assert (status, error) == (200, False), payload
    assert json.loads(payload)["function"] == "after"
    assert headers.get("x-kubelambda-warm-pool") != pod
