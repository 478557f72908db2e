"""HTTP/1.1 POSTs to one ``http://`` origin over kept-alive connections: the bridges' invocations of the gateway.

A bridge sends one request per batch to the same URL; aiohttp's client spent ~150-250 µs of CPU on each (request
and response objects, URL handling, cookie jar, timers), a tenth of a queue bridge's CPU per message at batch 10,
where this spends ~20 µs (bench/queue_bench.py). It does only what that path needs: a POST with a body of known
length, a response with ``Content-Length``, chunked or ended by the connection's close; connections kept alive
between requests (one per request in flight) and dropped after ``IDLE_SECONDS`` unused, before a server's own
keep-alive timeout (the gateway's aiohttp server: 75 s) closes them under a request. No retry: as with aiohttp for
a POST, a request whose connection failed raises, and the caller treats it as the gateway being unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

IDLE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's client keeps them 15 s too)."""
READ_LIMIT = 1 << 20
"""Longest status line and header block read (the reader's buffer limit)."""


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
        """The response, and whether its connection may carry another request."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise ConnectionResetError("the server closed the connection without answering") from e
        except asyncio.LimitOverrunError as e:
            raise ProtocolError("the response's header block is too long") from e
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        status = int(code)
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        try:
            if status in (204, 304) or 100 <= status < 200:
                body = b""
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body = await _chunked(reader)
            elif "content-length" in headers:
                length = headers["content-length"]
                if not length.isdigit():
                    raise ProtocolError(f"bad Content-Length {length[:40]!r}")
                body = await reader.readexactly(int(length))
            else:
                body = await reader.read()  # delimited by the connection's close
                keep = False
        except asyncio.IncompleteReadError as e:
            raise ConnectionResetError("the server closed the connection within the response body") from e
        return Response(status, headers, body), keep

    def close(self) -> None:
        """Closes the idle connections (one in use is closed by its request when it ends)."""
        while self._idle:
            self._idle.pop().close()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, then the blank line
                pass
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
        parts.append(chunk[:-2])
