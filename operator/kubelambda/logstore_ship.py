"""A platform component's own log lines into the log store (docs/logs.md): a Trigger bridge's pod ships what it
logs (batches it invoked, a source it could not reach) beside the records of the function it invokes, as the agent
ships a function pod's lines.

:class:`LogShipper` is a :class:`logging.Handler`: ``emit`` formats the record into the agent's record schema and
appends it to a bounded buffer (never blocks, never does I/O); one asyncio task publishes the buffer every
``linger`` seconds as one message on ``kubelambda.logs.<namespace>.<function>.none`` (newline-separated records,
as the agent sends a request's records). What is not stored — the buffer full, the store refusing it, no
connection — is counted in ``kubelambda_bridge_log_records_dropped_total``, never lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from datetime import UTC, datetime

import nats
import nats.errors
from nats.aio.client import Client as NATS

from kubelambda import logstore, metrics, natsauth

DEFAULT_BUFFER = 8192
MAX_MESSAGE_BYTES = 256 * 1024


class LogShipper(logging.Handler):
    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        function: str,
        pod: str,
        component: str,
        buffer: int = DEFAULT_BUFFER,
        linger: float = 0.2,
    ) -> None:
        super().__init__(level=logging.INFO)
        self.url = url
        self.inbox = natsauth.log_inbox(namespace)
        self.subject = logstore.subject(namespace, function, logstore.NO_REQUEST)
        self.fields = {"namespace": namespace, "function": function, "version": "", "pod": pod}
        self.component = component  # e.g. "bridge/nightly", in each record
        self.linger = linger
        self._buffer: deque[bytes] = deque()
        self._limit = buffer
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        # The Python runtime's text format's head, so that `kubelambda logs --level` reads the level.
        self.setFormatter(logging.Formatter("[%(levelname)s]\t%(name)s: %(message)s"))

    def record_bytes(self, record: logging.LogRecord) -> bytes:
        message = self.format(record)
        truncated = len(message) > 64 * 1024
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            **self.fields,
            "stream": "stderr",
            "message": message[: 64 * 1024],
            "source": self.component,
        }
        if truncated:
            doc["truncated"] = True
        return json.dumps(doc, ensure_ascii=False).encode()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("nats"):
            return  # the client's own complaints about the store would feed the store
        try:
            data = self.record_bytes(record)
        except Exception:
            self.handleError(record)
            return
        with self._lock:
            if len(self._buffer) >= self._limit:
                metrics.BRIDGE_LOG_RECORDS_DROPPED.labels("buffer_full").inc()
                return
            self._buffer.append(data)
            first = len(self._buffer) == 1
        if first and self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        """Starts the sender on the running loop; records emitted before are kept and sent."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._buffer:
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="log shipper")

    def _take(self) -> list[bytes]:
        with self._lock:
            taken = list(self._buffer)
            self._buffer.clear()
        return taken

    async def _send(self, records: list[bytes]) -> None:
        """Publishes ``records`` in messages of at most MAX_MESSAGE_BYTES; counts what was stored or dropped."""
        batch: list[bytes] = []
        size = 0
        for data in [*records, b""]:
            if batch and (not data or size + len(data) + 1 > MAX_MESSAGE_BYTES):
                try:
                    if self._nc is None or not self._nc.is_connected:
                        raise ConnectionError("not connected to the log store")
                    await self._nc.jetstream().publish(self.subject, b"\n".join(batch), timeout=10)
                    metrics.BRIDGE_LOG_RECORDS_STORED.inc(len(batch))
                except (OSError, TimeoutError, ConnectionError, nats.errors.Error) as e:
                    metrics.BRIDGE_LOG_RECORDS_DROPPED.labels(type(e).__name__).inc(len(batch))
                batch, size = [], 0
            if data:
                batch.append(data)
                size += len(data) + 1

    async def _connect(self) -> None:
        if self._nc is None or self._nc.is_closed:
            try:
                self._nc = await nats.connect(
                    self.url,
                    connect_timeout=3,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    inbox_prefix=self.inbox,  # the namespace's log user subscribes only there
                )
            except (OSError, TimeoutError, nats.errors.Error):
                self._nc = None  # what comes meanwhile is counted as dropped; tried again at the next batch

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._connect()
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.linger)
            await self._send(self._take())

    async def aclose(self) -> None:
        """Sends what is buffered (bounded by the publish timeout) and disconnects."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._connect()
        await self._send(self._take())
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._loop = None
