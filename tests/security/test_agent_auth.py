"""Issue 17, item 7: the agent's admin endpoints answer only the gateway.

The attack: a pod that reaches port 8080 of a function pod or a warm-pool pod (the local cluster enforces no
NetworkPolicy, so every pod can) calls ``/invoke``, ``/specialize`` or ``/metrics`` directly, bypassing the
gateway's authentication, or with the token it knows (its own function's). Expected: 401 without the pod's
own token; the gateway, which derives the tokens from the platform's agent key, still invokes both kinds of pod.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.platform import (
    AGENT_KEY,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
)
from kltest.warmpool import pool_of, wait_free_pool_pods, warm_pool_platform
from kubelambda.agentauth import bearer, function_token, pool_token
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.warmpool import PoolPod
from kubelambda.kube import KubeClient

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
HELLO = "def handler(event, context):\n    return {'function': context.function_name, 'event': event}\n"


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with warm_pool_platform(cluster, kube, {"python3.11": 1}) as platform:
        yield platform


async def free_pool_pod(gateway: Gateway) -> PoolPod:
    return (await wait_free_pool_pods(gateway, "python3.11", 1))[0]


async def call(method: str, url: str, token: str | None = None, body: JSON | None = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=bearer(token)) as resp,
    ):
        return resp.status, await resp.text()


async def invoke(url: str, name: str, payload: JSON) -> tuple[JSON, dict[str, str]]:
    def run() -> tuple[JSON, dict[str, str]]:
        response = lambda_client(url).invoke(FunctionName=name, Payload=json.dumps(payload).encode())
        assert "FunctionError" not in response, response["Payload"].read()
        return json.loads(response["Payload"].read()), response["ResponseMetadata"]["HTTPHeaders"]

    return await asyncio.to_thread(run)


async def test_a_function_pod_answers_only_its_own_token(env: Env) -> None:
    doc = python_function("target", HELLO)
    doc["spec"]["scaling"] = {"minInstances": 1, "warmPool": False}
    await env.deploy(doc)
    endpoints = await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.ready_endpoints((env.namespace, "target"))),
        bool,
        what="target's own pod ready",
        timeout=120,
    )
    base = f"http://{endpoints[0]}"
    event = {"from": "an attacker"}
    neighbour = function_token(
        AGENT_KEY, env.namespace, "attacker"
    )  # the token the attacker's function knows
    for token in (None, "guess", neighbour):
        for path in ("/invoke", "/2015-03-31/functions/target/invocations"):
            status, text = await call("POST", base + path, token, event)
            assert status == 401, (path, token, status, text)
        status, text = await call("GET", base + "/metrics", token)
        assert status == 401, ("/metrics", token, status, text)
    assert (await call("GET", base + "/healthz"))[0] == 200  # the kubelet's probes need no token

    # Nothing else broke: the gateway's invokes carry the token.
    body, _ = await invoke(env.url, f"{env.namespace}/target", {"from": "the gateway"})
    assert body == {"function": "target", "event": {"from": "the gateway"}}
    own = function_token(AGENT_KEY, env.namespace, "target")
    assert (await call("GET", base + "/metrics", own))[0] == 200


async def test_a_pool_pod_cannot_be_specialised_nor_invoked_without_the_gateways_tokens(env: Env) -> None:
    pod = await free_pool_pod(env.gateway)
    base = f"http://{pod.ip}:8080"
    evil = {
        "functionName": "evil",
        "handler": "app.handler",
        "memoryMB": 128,
        "timeoutSeconds": 3,
        "codeSha256": "0" * 64,
        "inline": {"app.py": "def handler(e, c):\n    return 'pwned'\n"},
        "agentToken": "mine",
    }
    neighbour = function_token(AGENT_KEY, env.namespace, "attacker")
    for token in (None, "guess", neighbour):
        status, text = await call("POST", base + "/specialize", token, evil)
        assert status == 401, (token, status, text)
        assert (await call("POST", base + "/invoke", token, {}))[0] == 401
    ns = env.gateway.settings.warm_pool_namespace
    status, text = await call("GET", base + "/specialize", pool_token(AGENT_KEY, ns, "python3.11"))
    assert (status, json.loads(text)["state"]) == (200, "generic"), text

    # Nothing else broke: the gateway specialises a pool pod and invokes it; then only the function's token
    # opens it (the pool's token no longer does).
    await env.deploy(python_function("pooled", HELLO))
    body, headers = await invoke(env.url, f"{env.namespace}/pooled", {"n": 1})
    assert body == {"function": "pooled", "event": {"n": 1}}
    served = headers.get("x-kubelambda-warm-pool")
    assert served is not None, headers
    specialised = pool_of(env.gateway).pods[served]
    target = f"http://{specialised.ip}:8080/invoke"
    assert (await call("POST", target, pool_token(AGENT_KEY, ns, "python3.11"), {}))[0] == 401
    assert (await call("POST", target, function_token(AGENT_KEY, env.namespace, "pooled"), {}))[0] == 200
