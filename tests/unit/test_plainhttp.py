"""The invocations' HTTP/1.1 client (kubelambda.plainhttp) as the bridges use it, against a real aiohttp server
(the gateway's HTTP stack) and raw sockets for what aiohttp never sends: keep-alive reuse, chunked and
close-delimited bodies, a connection the server closed, a timeout, a refused connection, a malformed answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kltest.loopback import serve_app
from kubelambda.bridge._context import Invoker
from kubelambda.plainhttp import PlainHttp, ProtocolError, Response


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """An aiohttp server answering as the gateway's Invoke API does; notes each request (and its connection)."""
    seen: list[dict[str, object]] = []

    async def invoke(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        seen.append(
            {
                "path": request.path_qs,
                "body": body,
                "headers": dict(request.headers),
                "peer": transport.get_extra_info("peername") if transport else None,
            }
        )
        if request.query.get("kind") == "chunked":
            resp = web.StreamResponse(headers={"X-Amzn-RequestId": "r-chunked"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b'{"a":', b" 1", b"}"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if request.query.get("kind") == "error":
            return web.Response(
                body=b'{"errorMessage":"boom"}', headers={"X-Amz-Function-Error": "Unhandled"}
            )
        if request.query.get("kind") == "close":
            return web.Response(body=body, headers={"Connection": "close"})
        if request.query.get("kind") == "slow":
            await asyncio.sleep(1)  # past the client's 0.2 s timeout
        return web.Response(body=body, headers={"X-Amzn-RequestId": "r-1"})

    app = web.Application()
    app.router.add_post("/2015-03-31/functions/ns/fn/invocations", invoke)
    async with serve_app(app) as url:
        yield f"{url}/2015-03-31/functions/ns/fn/invocations", seen


async def test_requests_carry_body_and_headers_over_kept_alive_connections(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    """One after the other: one connection; four at once: one each, reused by the next four."""
    url, seen = gateway
    client = PlainHttp(url)
    for i in range(3):
        body = b'{"n": %d, "text": "caf\xc3\xa9"}' % i
        answer = await client.post(body, {"Content-Type": "application/json", "X-Test": "v"}, timeout=5)
        assert (answer.status, answer.body, answer.headers["x-amzn-requestid"]) == (200, body, "r-1")
    assert [s["body"] for s in seen] == [b'{"n": %d, "text": "caf\xc3\xa9"}' % i for i in range(3)]
    assert {s["peer"] for s in seen} == {seen[0]["peer"]}
    headers = seen[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Test"] == "v"
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == url.split("/")[2]
    for _ in range(2):
        answers = await asyncio.gather(*(client.post(b"%d" % i, {}, timeout=5) for i in range(4)))
        assert sorted(a.body for a in answers) == [b"0", b"1", b"2", b"3"]
    assert len({s["peer"] for s in seen}) == 4  # the first connection among them
    client.close()


async def test_a_chunked_answer_an_error_header_and_a_closing_server(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    url, seen = gateway
    client = PlainHttp(url + "?kind=chunked")
    answer = await client.post(b"{}", {}, timeout=5)
    assert (answer.status, answer.body, answer.headers["x-amzn-requestid"]) == (200, b'{"a": 1}', "r-chunked")
    answer = await PlainHttp(url + "?kind=error").post(b"{}", {}, timeout=5)
    assert answer.headers["x-amz-function-error"] == "Unhandled"
    closing = PlainHttp(url + "?kind=close")
    for body in (b"one", b"two"):  # the server closed the first connection: the second request opens another
        assert (await closing.post(body, {}, timeout=5)).body == body
    assert seen[-1]["peer"] != seen[-2]["peer"]
    assert seen[-2]["path"] == "/2015-03-31/functions/ns/fn/invocations?kind=close"


async def test_a_timeout_closes_the_connection_and_the_next_request_works(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    url, _ = gateway
    client = PlainHttp(url + "?kind=slow")
    with pytest.raises(TimeoutError):
        await client.post(b"{}", {}, timeout=0.2)
    assert client.origin.idle == 0
    assert (await PlainHttp(url).post(b"ok", {}, timeout=5)).body == b"ok"


async def post_to_raw_server(answer: bytes) -> Response:
    """A POST to a server that reads the request's head, writes ``answer`` and closes the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await PlainHttp(f"http://127.0.0.1:{port}/x").post(b"", {}, timeout=5)


async def test_a_body_ended_by_the_close_a_server_that_hangs_up_and_one_that_is_not_http() -> None:
    answer = await post_to_raw_server(b"HTTP/1.1 200 OK\r\nX-Amz-Function-Error: Unhandled\r\n\r\nall of it")
    assert (answer.status, answer.body, answer.headers["x-amz-function-error"]) == (
        200,
        b"all of it",
        "Unhandled",
    )
    with pytest.raises(ConnectionError):
        await post_to_raw_server(b"")
    with pytest.raises(ProtocolError, match=r"not an HTTP/1\.x response"):
        await post_to_raw_server(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ProtocolError, match=r"(?i)chunk size"):
        await post_to_raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


async def test_the_invoker_answers_status_0_when_the_gateway_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: a connection is refused
        invoker = Invoker(None, gateway_url=f"http://127.0.0.1:{port}", namespace="ns", function="fn")  # type: ignore[arg-type]
        result = await invoker.invoke({"a": 1})
    assert result.status == 0
    assert result.payload


async def test_the_invoker_reads_status_payload_and_headers_through_it(
    gateway: tuple[str, list[dict[str, object]]],
) -> None:
    url, seen = gateway
    base = url.split("/2015-03-31/")[0]
    invoker = Invoker(None, gateway_url=base, namespace="ns", function="fn", token=lambda: "tok")  # type: ignore[arg-type]
    assert invoker.plain is not None
    result = await invoker.invoke({"Records": [1]})
    assert (result.status, result.payload, result.request_id, result.function_error) == (
        200,
        b'{"Records": [1]}',
        "r-1",
        None,
    )
    headers = seen[-1]["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer tok"
    assert headers["X-Amz-Invocation-Type"] == "RequestResponse"
    invoker.close()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http:// URL"):
        PlainHttp("https://gateway/x")
