"""Issue 17, item 2: what one client can make the gateway hold, and what its errors tell.

A real gateway with small limits (1 MB of request bodies in total, 1 MB responses, 2 s to send headers or a
body): a connection that never finishes its headers is closed, a body that trickles is answered 408, a request
that would take the buffered bytes over the global cap is answered 429 before it is read (and goes through once
the bytes are given back), a response over the cap is Lambda's ``Function.ResponseSizeTooLarge``, JSON nested
past the parser's depth is a 400, and an instance that dies mid-invocation is a 500 that names no pod address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.platform import Env, PlatformUnderTest, python_function, running_platform
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
ONE_MB = 1_000_000
HANDLER = """
import time


def handler(event, context):
    if event.get("big"):
        return "x" * event["big"]
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"n": len(event.get("pad", ""))}
"""


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(
        cluster,
        kube,
        max_buffered_request_bytes=ONE_MB,
        max_response_bytes=ONE_MB,
        body_timeout_seconds=2.0,
        idle_timeout_seconds=2.0,
    ) as running:
        yield running


async def invoke(env: Env, name: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    # A new connection each time: the gateway closes idle ones after 2 s here.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{env.url}/2015-03-31/functions/{env.namespace}/{name}/invocations", data=body) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def raw(env: Env) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = env.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def head(env: Env, name: str, length: int) -> bytes:
    return (
        f"POST /2015-03-31/functions/{env.namespace}/{name}/invocations HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture
async def limited(env: Env) -> Env:
    await env.deploy(python_function("limited", HANDLER, timeoutSeconds=60))
    return env


async def test_slow_headers_and_slow_bodies_are_cut_off(limited: Env) -> None:
    env = limited
    reader, writer = await raw(env)
    writer.write(b"POST /2015-03-31/functions/x/invocations HTTP/1.1\r\nHost: gateway\r\n")  # never finished
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the gateway, nothing answered
    writer.close()

    reader, writer = await raw(env)
    writer.write(head(env, "limited", 1000) + b'{"pad": "')  # and no more
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert status_line.split()[1] == b"408", status_line
    writer.close()

    status, _, body = await invoke(env, "limited", b"{}")  # nothing else broke
    assert (status, json.loads(body)) == (200, {"n": 0})


async def test_buffered_request_bytes_have_a_global_cap(limited: Env) -> None:
    env = limited
    gateway = env.gateway
    big = json.dumps({"pad": "a" * (900_000 - 11)}).encode()
    assert len(big) == 900_000
    reader, writer = await raw(env)
    writer.write(head(env, "limited", len(big)) + big[:-1])  # holds 900 kB of the 1 MB, all but its last byte
    await writer.drain()
    await wait_for(
        lambda: asyncio.sleep(0, result=gateway.buffered),
        lambda held: held >= 899_999,
        what="the first request's bytes held",
    )
    other = json.dumps({"pad": "b" * 199_989}).encode()
    status, headers, body = await invoke(env, "limited", other)
    assert status == 429
    assert headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(body)["Reason"] == "ConcurrentInvocationLimitExceeded"

    writer.write(big[-1:])  # the first one finishes and runs
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 60)
    assert status_line.split()[1] == b"200", status_line
    writer.close()
    await wait_for(
        lambda: asyncio.sleep(0, result=gateway.buffered), lambda held: held == 0, what="bytes back"
    )
    status, _, body = await invoke(env, "limited", other)
    assert (status, json.loads(body)) == (200, {"n": 199_989})


async def test_responses_over_the_cap_and_deep_json_are_lambdas_errors(limited: Env) -> None:
    env = limited
    status, headers, body = await invoke(env, "limited", json.dumps({"big": 1_500_000}).encode())
    assert status == 200
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert json.loads(body) == {
        "errorMessage": f"Response payload size exceeded maximum allowed payload size ({ONE_MB} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
    deep = b"[" * 100_000 + b"]" * 100_000
    status, headers, body = await invoke(env, "limited", deep)
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "InvalidRequestContentException"
    assert b"nested too deeply" in body
    status, _, body = await invoke(env, "limited", json.dumps({"big": 10}).encode())
    assert (status, json.loads(body)) == (200, "x" * 10)


async def test_an_instance_lost_mid_invocation_is_a_500_naming_no_address(
    limited: Env, kube: KubeClient
) -> None:
    env = limited
    call = asyncio.create_task(invoke(env, "limited", json.dumps({"sleep": 60}).encode()))
    busy: Any = await wait_for(
        lambda: asyncio.sleep(0, result=[e for e, n in env.gateway.path.balancer.load.items() if n > 0]),
        bool,
        what="the invocation running on an instance",
        timeout=60,
    )
    address = busy[0].rsplit(":", 1)[0]
    pods = await kube.list(
        resource_path("v1", "pods", namespace=env.namespace),
        params={"labelSelector": "kubelambda.io/function=limited"},
    )
    (pod,) = [p for p in pods["items"] if p["status"].get("podIP") == address]
    await kube.delete(
        resource_path("v1", "pods", namespace=env.namespace, name=pod["metadata"]["name"]),
        grace_period_seconds=0,
    )
    status, headers, body = await asyncio.wait_for(call, 60)
    assert status == 500, body
    assert headers["x-amzn-ErrorType"] == "ServiceException"
    assert address not in body.decode()
    assert "Traceback" not in body.decode()
