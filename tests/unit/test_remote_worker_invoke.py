"""The standalone async worker's calls of the gateway (gateway/remoteworker.RemoteInvoker) over the plain client,
against a real aiohttp server answering as the gateway's Invoke API does: the outcome of each answer, the headers
it sends, and a gateway it cannot reach."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from kltest.loopback import serve_app
from kubelambda.asyncworker.decide import Outcome
from kubelambda.asyncworker.record import Response
from kubelambda.gateway.registry import Registry
from kubelambda.gateway.remoteworker import RemoteInvoker


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def invoke(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        kind = request.match_info["name"]
        if kind == "throttled":
            return web.Response(status=429, body=b'{"Type": "User"}')
        if kind == "broken":
            return web.Response(status=500, body=b'{"Type": "Service"}')
        if kind == "failing":
            return web.Response(
                body=b'{"errorMessage": "boom"}',
                headers={"X-Amz-Function-Error": "Unhandled", "X-Kubelambda-Outcome": "function_error"},
            )
        return web.Response(body=body, headers={"X-Kubelambda-Outcome": "success"})

    app = web.Application()
    app.router.add_post("/2015-03-31/functions/ns/{name}/invocations", invoke)
    async with serve_app(app) as url:
        yield url, seen


@pytest.mark.parametrize(
    ("function", "outcome", "response"),
    [
        ("ok", Outcome.SUCCESS, Response(200, None, b'{"n": 1}')),
        ("failing", Outcome.FUNCTION_ERROR, Response(200, "Unhandled", b'{"errorMessage": "boom"}')),
        ("throttled", Outcome.THROTTLED, None),
        ("broken", Outcome.SYSTEM_ERROR, None),
    ],
    ids=["success", "function-error", "throttled", "platform-error"],
)
async def test_each_answer_of_the_gateway_is_an_outcome(
    gateway: tuple[str, list[web.Request]], function: str, outcome: Outcome, response: Response | None
) -> None:
    url, seen = gateway
    async with aiohttp.ClientSession() as http:
        invoker = RemoteInvoker(url, http, Registry(), region="us-east-1", token=lambda: "tok")
        assert invoker.plain is not None
        got = await invoker.invoke_for_worker(
            "ns",
            function,
            b'{"n": 1}',
            request_id="req-1",
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        )
        invoker.close()
    assert got == (outcome, response)
    headers = seen[-1].headers
    assert headers["Authorization"] == "Bearer tok"
    assert headers["X-Kubelambda-Async-Request-Id"] == "req-1"
    assert headers["traceparent"].startswith("00-1111")


async def test_a_gateway_it_cannot_reach_is_a_platform_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        async with aiohttp.ClientSession() as http:
            invoker = RemoteInvoker(f"http://127.0.0.1:{port}", http, Registry(), region="us-east-1")
            assert await invoker.invoke_for_worker("ns", "fn", b"{}", request_id="r") == (
                Outcome.SYSTEM_ERROR,
                None,
            )
