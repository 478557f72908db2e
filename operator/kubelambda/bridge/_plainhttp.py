"""HTTP/1.1 POSTs to one ``http://`` origin over kept-alive connections: the bridges' invocations of the gateway.

A bridge sends one request per batch to the same URL; aiohttp's client spent ~150-250 µs of CPU on each (request
and response objects, URL handling, cookie jar, timers), a tenth of a queue bridge's CPU per message at batch 10,
where this spends ~20 µs (bench/queue_bench.py). It does only what that path needs: a POST with a body of known
length, a response with ``Content-Length``, chunked or ended by the connection's close (parsed by httptools: the
llhttp parser of Node.js, as uvicorn uses it); connections kept alive between requests (one per request in flight)
and dropped after ``IDLE_SECONDS`` unused, before a server's own keep-alive timeout (the gateway's aiohttp server:
75 s) closes them under a request. No retry: as with aiohttp for
a POST, a request whose connection failed raises, and the caller treats it as the gateway being unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import httptools

IDLE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's client keeps them 15 s too)."""
READ_LIMIT = 1 << 20
"""Longest status line and header block read."""
READ_CHUNK = 1 << 16


class _Answer:
    """httptools' callbacks for one response: its headers (names in lower case), body parts, and whether its
    connection may carry another request (llhttp answers that only from within its callbacks)."""

    __slots__ = ("body", "complete", "headers", "headers_complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def until_close(self) -> bool:
        """The body is delimited by the connection's close (no length, not chunked): the close ends it."""
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
            and self.parser.get_status_code() not in (204, 304)
        )

    def response(self) -> Response:
        return Response(self.parser.get_status_code(), self.headers, b"".join(self.body))


class ProtocolError(ConnectionError):
    """The server's answer is not an HTTP/1.1 response this client reads."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    body: bytes


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class PlainHttp:
    """POSTs to ``url`` (``http://host[:port]/path``)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self._head = f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode("ascii")
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, headers: Mapping[str, str], *, timeout: float) -> Response:
        """One request; raises ``OSError`` (``ConnectionError``, ``ProtocolError``) or ``TimeoutError``."""
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (self._head, lines.encode("latin-1"), len(body), body)
        async with asyncio.timeout(timeout):
            conn = self._take() or await self._open()
            try:
                conn.writer.write(request)
                response, keep = await self._read(conn.reader)
            except BaseException:
                conn.close()
                raise
        if keep:
            conn.used = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < IDLE_SECONDS and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_LIMIT)
        return _Connection(reader, writer)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[Response, bool]:
        """The response, and whether its connection may carry another request. httptools (llhttp, the parser
        of Node.js) reads it: status line, headers, a body by ``Content-Length``, chunked, or ended by the
        connection's close."""
        answer = _Answer()
        read = 0
        while not answer.complete:
            data = await reader.read(READ_CHUNK)
            if not data:
                if answer.headers_complete and answer.until_close():
                    return answer.response(), False
                where = "within the response" if read else "without answering"
                raise ConnectionResetError(f"the server closed the connection {where}")
            read += len(data)
            if not answer.headers_complete and read > READ_LIMIT:
                raise ProtocolError("the response's header block is too long")
            try:
                answer.parser.feed_data(data)
            except httptools.HttpParserError as e:
                raise ProtocolError(f"not an HTTP/1.x response this client reads: {e}") from e
        return answer.response(), answer.keep_alive

    def close(self) -> None:
        """Closes the idle connections (one in use is closed by its request when it ends)."""
        while self._idle:
            self._idle.pop().close()
