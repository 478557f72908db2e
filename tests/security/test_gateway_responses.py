"""Issue 17, item 1: a function behind an HTTP route must not control the gateway's framing.

A real gateway with HTTP routes and one Function that answers whatever the request's path asks for: its own
``Content-Length``/``Transfer-Encoding``/``Connection`` (response splitting on a keep-alive connection), a 1xx
status, a header with CR/LF in it, a body that is not base64 although it says so. Each attack is sent over one raw
keep-alive connection, so a smuggled second response would be read as the answer to the next request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from kltest import Cluster
from kltest.platform import Env, PlatformUnderTest, python_function, running_platform
from kubelambda.kube import KubeClient

pytestmark = pytest.mark.integration

HANDLER = """
import base64


def handler(event, context):
    path = event["rawPath"]
    if path == "/split":
        smuggled = "HTTP/1.1 200 OK\\r\\nContent-Length: 7\\r\\n\\r\\nsmuggle"
        return {
            "statusCode": 200,
            "headers": {"Content-Length": "2", "Transfer-Encoding": "chunked", "Connection": "keep-alive",
                        "Keep-Alive": "timeout=999", "Upgrade": "h2c", "TE": "trailers", "Trailer": "X-T",
                        "Proxy-Authenticate": "Basic", "X-Kept": "yes"},
            "body": "hi" + smuggled,
        }
    if path == "/crlf":
        return {"statusCode": 200, "headers": {"X-Evil": "a\\r\\nSet-Cookie: pwned=1"}, "body": "x"}
    if path == "/crlf-name":
        return {"statusCode": 200, "headers": {"X-Evil\\r\\nSet-Cookie": "pwned=1"}, "body": "x"}
    if path == "/crlf-cookie":
        return {"statusCode": 200, "cookies": ["a=1\\r\\nX-Injected: 1"], "body": "x"}
    if path == "/informational":
        return {"statusCode": 101, "headers": {"Upgrade": "websocket"}, "body": ""}
    if path == "/status-text":
        return {"statusCode": "200 OK", "body": "x"}
    if path == "/bad-base64":
        return {"statusCode": 200, "isBase64Encoded": True, "body": "not base64!"}
    if path == "/headers-list":
        return {"statusCode": 200, "headers": ["X-A: 1"], "body": "x"}
    if path == "/cookies":
        return {"statusCode": 201, "cookies": ["a=1; Path=/", "b=2; HttpOnly"], "headers": {"X-Kept": "yes"},
                "body": base64.b64encode(b"\\x00\\x01binary").decode(), "isBase64Encoded": True}
    return {"statusCode": 200, "body": "plain"}
"""


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(cluster, kube, http_routes=True) as running:
        yield running


class Connection:
    """One raw HTTP/1.1 keep-alive connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        lengths = [v for k, v in headers if k.lower() == "content-length"]
        assert len(lengths) == 1, (
            headers
        )  # framed by the gateway: exactly one length, never chunked by request
        assert not [v for k, v in headers if k.lower() == "transfer-encoding"], headers
        body = await asyncio.wait_for(self.reader.readexactly(int(lengths[0])), 60)
        return int(status_line.split()[1]), headers, body


@pytest.fixture
async def connection(platform: PlatformUnderTest) -> AsyncIterator[Connection]:
    host, port = platform.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    yield Connection(reader, writer)
    writer.close()


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [k.lower() for k, _ in headers]


async def test_a_function_cannot_frame_or_split_the_response(
    env: Env, connection: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await env.deploy(python_function("framer", HANDLER))
    base = f"/http/{env.namespace}/framer"

    # Its own framing headers are dropped: the gateway's Content-Length frames the whole body.
    status, headers, body = await connection.get(f"{base}/split")
    assert status == 200
    assert body.startswith(b"hi")
    assert body.endswith(b"smuggle")
    for dropped in ("transfer-encoding", "keep-alive", "upgrade", "te", "trailer", "proxy-authenticate"):
        assert dropped not in names(headers), headers
    assert ("X-Kept", "yes") in headers
    # The next request on the same connection gets its own answer, not the smuggled one.
    status, _, body = await connection.get(f"{base}/plain")
    assert (status, body) == (200, b"plain")

    # Malformed responses: API Gateway's 500, each logged once with the reason; the connection stays usable.
    malformed = {
        "/crlf": "header 'X-Evil' has a control character",
        "/crlf-name": "is not a token",
        "/crlf-cookie": "header 'Set-Cookie' has a control character",
        "/informational": "statusCode 101 is not within 200..599",
        "/status-text": "statusCode '200 OK' is not an integer",
        "/bad-base64": "body is not valid base64",
        "/headers-list": "headers is a list, not an object",
    }
    with caplog.at_level(logging.WARNING, logger="kubelambda.gateway.app"):
        for path, reason in malformed.items():
            status, headers, body = await connection.get(f"{base}{path}")
            assert (status, body) == (500, b'{"message": "Internal Server Error"}'), path
            assert "set-cookie" not in names(headers), headers
            assert "x-injected" not in names(headers), headers
            logged = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
            assert len(logged) == 1, (path, [r.getMessage() for r in caplog.records])
            assert "Traceback" not in body.decode()

    # Nothing else broke: cookies become one Set-Cookie each (payload 2.0), base64 bodies are decoded.
    status, headers, body = await connection.get(f"{base}/cookies")
    assert status == 201
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]
    assert body == b"\x00\x01binary"
    assert ("X-Kept", "yes") in headers
    status, _, body = await connection.get(f"{base}/plain")
    assert (status, body) == (200, b"plain")
