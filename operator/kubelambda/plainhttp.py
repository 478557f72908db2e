"""HTTP/1.1 POSTs over kept-alive ``http://`` connections: the invocation path's client (bridge → gateway,
gateway → agent, standalone async worker → gateway).

aiohttp's client spent ~150-270 µs of CPU per request (request and response objects, URL handling, cookie jar,
timers, a stream reader), more than the gateway's own work per warm call. This does only what an invocation needs:
a POST with a body of known length (head and body handed to the transport together: one ``writev``, no copy of
the body), and a response parsed by httptools (the llhttp parser of Node.js, as uvicorn uses it) straight from the
protocol's ``data_received``: ``Content-Length``, chunked, or ended by the connection's close.

What it promises its callers (kubelambda.gateway.proxy maps these onto "try another instance" and "failed
mid-invocation"):

- :class:`ConnectFailed` (an ``OSError``): no connection could be made (refused, unreachable, or not accepted
  within ``connect_timeout``); nothing was sent.
- ``ConnectionResetError`` (any other ``OSError``): the connection failed before any of the answer's head
  arrived.
- :class:`Disconnected`: the server closed the connection after the request was written, before its answer was
  complete (it may have acted on the request), or the connection failed within the answer.
- :class:`ProtocolError`: the answer is not an HTTP/1.x response.
- :class:`TooLarge`: the answer's body is over ``max_body``; the connection is dropped as soon as that is known
  (``Content-Length``, or the bytes of a chunked or close-ended body counted as they arrive), never read further.
- ``TimeoutError``: no complete answer within ``timeout`` (connecting included); the connection is dropped.

Never a retry: a POST is not idempotent, and one whose connection failed may have run. Connections are kept
alive only when the answer allows it (``Connection: close`` and HTTP/1.0 do not), and an idle one is closed after
``idle_seconds``, well before the servers' own idle timeouts (the gateway's aiohttp server: 75 s; the agent's Go
server: 2 min), so a server never closes a connection just as a request is written on it. Bytes arriving on an
idle connection (answering nothing) make it unusable.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httptools

IDLE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's client keeps them 15 s too)."""
MAX_IDLE = 256
"""Idle connections kept per origin; more are closed when their request ends (those in use are bounded by the
callers: the gateway's throttler, one per batch in flight for a bridge)."""
HEAD_LIMIT = 1 << 20
"""Longest status line and header block read."""


class ProtocolError(ConnectionError):
    """The server's answer is not an HTTP/1.x response this client reads."""


class ConnectFailed(ConnectionError):
    """No connection could be made (refused, unreachable, or not accepted within the connect timeout): the request
    was not sent."""


class Disconnected(ConnectionError):
    """The connection ended after the request was written and before its answer was complete: the server may have
    acted on the request."""


class TooLarge(Exception):
    """The answer's body is over the caller's ``max_body`` (the rest of it was not read)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    body: bytes


def request_head(target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    """``POST target`` to ``host`` with ``headers`` and a body of ``length`` bytes: the bytes before the body. A line
    break in any of them is refused (it would end a line early: another header, or another request, smuggled in)."""
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    head = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {length}\r\n\r\n"
    if head.count("\n") != len(headers) + 4 or head.count("\r") != head.count("\n"):
        bad = [
            f"{k}: {v}"
            for k, v in (("target", target), ("Host", host), *headers.items())
            if "\r" in k + v or "\n" in k + v
        ]
        raise ValueError(f"a request line or header holds a line break: {bad[0]!r}")
    return head.encode("utf-8")


class _Connection(asyncio.Protocol):
    """One connection, and httptools' callbacks for the answer it waits for."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.open = True
        self.used = 0.0  # when its last answer completed (time.monotonic)
        self.waiter: asyncio.Future[Response] | None = None
        # The answer being read:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.limit = math.inf
        self.head_done = False
        self.answer: Response | None = None  # the answer, once complete
        self.keep = False  # the connection may carry another request after this answer
        self.too_large = False
        self.messages = 0

    # -- asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes that answer nothing: not a connection to use again
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ProtocolError(f"not an HTTP/1.x response this client reads: {e}"))
            return
        if self.too_large:
            self._fail(TooLarge())
        elif self.answer is not None:
            waiter.set_result(self.answer)
        elif not self.head_done:
            self.size += len(data)  # until the head is complete, ``size`` counts its bytes
            if self.size > HEAD_LIMIT:
                self._fail(ProtocolError("the response's header block is too long"))

    def eof_received(self) -> bool:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.head_done and self._until_close():  # the close ends the body: the answer is complete
                self.keep = False
                waiter.set_result(Response(self.parser.get_status_code(), self.headers, b"".join(self.body)))
            else:
                where = "within the answer" if self.head_done else "without answering"
                self._fail(Disconnected(f"the server closed the connection {where}"))
        self.open = False
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_exception(Disconnected("the connection was closed before the answer was complete"))
            elif self.head_done:
                waiter.set_exception(Disconnected(f"the connection failed within the answer: {exc!r}"))
            elif isinstance(exc, OSError):
                waiter.set_exception(exc)
            else:
                waiter.set_exception(ConnectionResetError(f"the connection failed: {exc!r}"))

    # -- httptools' callbacks

    def on_message_begin(self) -> None:
        self.messages += 1
        if self.messages > 1:  # a second answer to one request (a broken server): ignored, and the connection
            self.headers = {}  # is not used again (exchange); the first answer's headers stay as they were
            self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.messages > 1:
            return
        self.head_done = True
        self.size = 0  # from here, the body's bytes
        self.keep = self.parser.should_keep_alive()
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self.too_large = True

    def on_body(self, body: bytes) -> None:
        if self.too_large or self.messages > 1:
            return
        self.size += len(body)
        if self.size > self.limit:
            self.too_large = True
            self.body.clear()
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.messages == 1 and not self.too_large:
            self.answer = Response(self.parser.get_status_code(), self.headers, b"".join(self.body))

    # -- the client's side

    def _until_close(self) -> bool:
        """The body is delimited by the connection's close (no length, not chunked): the close ends it."""
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
            and self.parser.get_status_code() not in (204, 304)
        )

    def _fail(self, error: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    async def exchange(self, head: bytes, body: bytes, *, timeout: float, max_body: float) -> Response:
        """Writes the request and waits for its answer; the connection is closed unless it may be used again."""
        transport = self.transport
        assert transport is not None
        if transport.is_closing():  # closed by the server as it was opened (uvloop raises on writing to it)
            raise ConnectionResetError("the connection closed before the request was written")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self.waiter = waiter
        self.headers = {}
        self.body = []
        self.size = 0
        self.limit = max_body
        self.head_done = self.keep = self.too_large = False
        self.answer = None
        self.messages = 0
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            if body:
                transport.writelines((head, body))  # uvloop: one writev, the body not copied
            else:
                transport.write(head)
            return await waiter
        except BaseException:
            self.close()  # a timeout, a failure, a cancelled caller: never reused mid-answer
            raise
        finally:
            timer.cancel()
            self.waiter = None
            if not (self.keep and self.messages == 1):
                self.close()

    def reusable(self, now: float, idle_seconds: float) -> bool:
        # is_closing: a transport that failed closes at once, and tells the protocol a loop iteration later.
        transport = self.transport
        return (
            self.open
            and now - self.used < idle_seconds
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Origin:
    """Kept-alive connections to one ``host:port``: one per request in flight, at most ``max_idle`` kept idle, none
    idle for ``idle_seconds`` or more. ``connect_timeout``: how long a connection may take to be accepted (None: the
    request's own timeout)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # its Host header
        self.busy = 0  # requests in flight
        self._idle: list[_Connection] = []

    async def post(self, head: bytes, body: bytes, *, timeout: float, max_body: float = math.inf) -> Response:
        """One request (``head``: :func:`request_head`), answered within ``timeout`` (connecting included); raises as
        the module says."""
        self.busy += 1
        try:
            conn = self._take()
            if conn is None:
                started = time.monotonic()
                conn = await self._open(timeout)
                timeout -= time.monotonic() - started
            answer = await conn.exchange(head, body, timeout=timeout, max_body=max_body)
        finally:
            self.busy -= 1
        if conn.open:
            conn.used = time.monotonic()
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                conn.close()
        return answer

    def _take(self) -> _Connection | None:
        if not self._idle:
            return None
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be near its idle limit
            if conn.reusable(now, self.idle_seconds):
                return conn
            conn.close()
        return None

    async def _open(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connect = self.connect_timeout if self.connect_timeout is not None else math.inf
        try:
            async with asyncio.timeout(min(connect, timeout)):
                transport, conn = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError:
            if connect > timeout:
                raise
            raise ConnectFailed(
                f"{self.host}:{self.port} did not accept a connection within {connect:g} s"
            ) from None
        except OSError as e:
            raise ConnectFailed(f"no connection to {self.host}:{self.port}: {e}") from e
        conn.transport = transport  # uvloop calls connection_made only after this returns
        return conn

    def sweep(self, now: float) -> None:
        """Closes the idle connections past ``idle_seconds`` (and those the server closed)."""
        keep = []
        for conn in self._idle:
            if conn.reusable(now, self.idle_seconds):
                keep.append(conn)
            else:
                conn.close()
        self._idle = keep

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Closes the idle connections (one in use is closed or kept by its request when it ends)."""
        while self._idle:
            self._idle.pop().close()


class PlainHttp:
    """POSTs to one ``url`` (``http://host[:port]/path``): a bridge's or an async worker's calls of the gateway."""

    def __init__(self, url: str, *, idle_seconds: float = IDLE_SECONDS) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        self.origin = Origin(parts.hostname, parts.port or 80, idle_seconds=idle_seconds)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host = parts.netloc

    async def post(self, body: bytes, headers: Mapping[str, str], *, timeout: float) -> Response:
        """One request; raises ``OSError`` (``ConnectionError``, ``ProtocolError``) or ``TimeoutError``."""
        head = request_head(self.target, self.host, headers, len(body))
        return await self.origin.post(head, body, timeout=timeout)

    def close(self) -> None:
        self.origin.close()


class Origins:
    """Origins by ``host:port`` (the gateway's agents: thousands, coming and going). An origin with nothing idle
    and nothing in flight is forgotten by the sweep that runs every ``idle_seconds`` while any is known, so the
    pools of instances that went away are released within two sweeps."""

    def __init__(
        self,
        *,
        connect_timeout: float | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self.origins: dict[str, Origin] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, endpoint: str) -> Origin:
        """The origin of ``endpoint`` (``host:port``, an IPv6 host without brackets)."""
        origin = self.origins.get(endpoint)
        if origin is None:
            host, _, port = endpoint.rpartition(":")
            origin = self.origins[endpoint] = Origin(
                host,
                int(port),
                connect_timeout=self.connect_timeout,
                idle_seconds=self.idle_seconds,
                max_idle=self.max_idle,
            )
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.idle_seconds, self._sweep)
        return origin

    def _sweep(self) -> None:
        now = time.monotonic()
        for endpoint, origin in list(self.origins.items()):
            origin.sweep(now)
            if not origin.idle and not origin.busy:
                del self.origins[endpoint]
        self._sweeper = (
            asyncio.get_running_loop().call_later(self.idle_seconds, self._sweep) if self.origins else None
        )

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self.origins.values():
            origin.close()
        self.origins.clear()
