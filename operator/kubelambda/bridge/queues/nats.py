"""NATS JetStream as an SQS-style work queue (pull consumer, nats-py; ``eventSource: kubelambda:nats``).

- The bridge pulls from the durable consumer ``kubelambda-<namespace>-<trigger>`` of the stream. When that
  consumer does not exist the bridge creates it (explicit acks, ``AckWait`` = visibility timeout,
  ``MaxDeliver`` = max receive count, the Trigger's subject as filter); when it exists, its configuration is the
  user's and is used as it is (create it yourself to choose ``MaxDeliver``, ``AckWait``, ``BackOff``).
- Success: ``+ACK``. Function failure: ``-NAK`` (redelivered at once, one delivery used); after ``MaxDeliver``
  deliveries JetStream stops delivering the message and publishes a
  ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` advisory (JetStream's dead-letter hook).
- While the function runs, and while a throttled batch waits, the bridge sends ``+WPI`` (in progress) every
  third of ``AckWait``, so slow functions and throttles use no delivery attempt.
- The bridge pulls with its own requests on a private inbox (``$JS.API.CONSUMER.MSG.NEXT``, one request open at
  a time, for as many messages as the batches of the free slots need): nats-py's ``fetch`` waits for each message
  in a task of its own, which in a busy bridge cost an event-loop turn per message.
- ``messageId`` is the stream sequence; ``ApproximateReceiveCount`` is JetStream's delivery count;
  ``lag`` is the consumer's pending count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy, Header, StatusCode

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.queues._batch import Message, string_headers
from kubelambda.bridge.queues._core import QueueBridge, QueueSettings

REQUEST_ENDED = frozenset({StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT})
"""Statuses that end a pull request without an error (no messages, expired, the server's limits on waiting
requests); any other status (but the ``100`` heartbeat) is an error, as in nats-py's own fetch."""
EXPIRES_MARGIN_SECONDS = 0.0001


def consumer_name(namespace: str, trigger: str) -> str:
    """The durable consumer of a Trigger (JetStream names allow no dots, spaces, ``*`` or ``>``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"kubelambda-{namespace}-{trigger}")


class NatsBroker:
    event_source = "kubelambda:nats"

    def __init__(self, ctx: BridgeContext, settings: QueueSettings) -> None:
        spec = ctx.trigger.spec.queue
        assert spec is not None
        assert spec.nats is not None
        self.ctx = ctx
        self.spec = spec.nats
        self.settings = settings
        self.max_ack_pending = spec.batch_size * (spec.max_concurrency + 1)
        self.durable = consumer_name(ctx.namespace, ctx.name)
        self.event_source_arn = f"arn:kubelambda:nats:{ctx.region}:{ctx.namespace}:{self.spec.stream}"
        self.lease_renew_seconds: float | None = settings.visibility_timeout_seconds / 3
        self.nc: Client | None = None
        self.sub: Any = None
        self._creds: str | None = None
        self.pull_subject = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.spec.stream}.{self.durable}"
        self.inbox = ""
        self.buffer: deque[Msg] = deque()
        self.arrived = asyncio.Event()
        self.owed = 0
        """Messages the open pull request may still deliver (0: none is open)."""
        self.request_ends = 0.0
        """When the open request expires at the latest (monotonic), should its end status never come."""
        self.error: str | None = None

    async def connect(self) -> None:
        options: dict[str, Any] = {
            "connect_timeout": 5,
            "allow_reconnect": False,  # the queue core reconnects, reporting SourceReachable
            "max_reconnect_attempts": 0,
            "error_cb": _ignore,
            "disconnected_cb": _ignore_none,
        }
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            if "token" in secret:
                options["token"] = secret["token"]
            if "creds" in secret:
                fd, self._creds = tempfile.mkstemp(prefix="nats-", suffix=".creds")
                with os.fdopen(fd, "w") as f:
                    f.write(secret["creds"])
                options["user_credentials"] = self._creds
        self.nc = await nats.connect(self.spec.url, **options)
        js = self.nc.jetstream()
        try:
            info = await js.consumer_info(self.spec.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(
                self.spec.stream,
                ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.settings.visibility_timeout_seconds,
                    max_deliver=self.settings.max_receive_count or -1,
                    filter_subject=self.spec.subject,
                    max_ack_pending=max(1000, self.max_ack_pending),
                ),
            )
        ack_wait = info.config.ack_wait or self.settings.visibility_timeout_seconds
        self.lease_renew_seconds = max(0.5, float(ack_wait) / 3)
        self.buffer = deque()
        self.arrived = asyncio.Event()
        self.owed = 0
        self.error = None
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox, cb=self._arrive)

    async def _arrive(self, m: Msg) -> None:
        status = m.headers.get(Header.STATUS) if m.headers else None
        if status:
            if status == StatusCode.CONTROL_MESSAGE:
                return
            self.owed = 0  # the request is over
            if status not in REQUEST_ENDED:
                description = m.headers.get(Header.DESCRIPTION, "") if m.headers else ""
                self.error = f"JetStream answered the pull request with {status} {description}".strip()
        else:
            self.owed = max(0, self.owed - 1)
            self.buffer.append(m)
        self.arrived.set()

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.nc = None
        self.sub = None
        if self._creds:
            with contextlib.suppress(OSError):
                os.unlink(self._creds)
            self._creds = None

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        """What the open pull request delivered, up to ``max_count``; with nothing delivered, a new request
        for ``max_count`` (when none is open) and a wait of up to ``wait_seconds`` for its first message."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("the NATS connection closed")
        self._raise_error()
        buffer = self.buffer
        if not buffer:
            wait = max(wait_seconds, 0.01)
            if self.owed == 0 or time.monotonic() > self.request_ends:
                expires = int((wait - EXPIRES_MARGIN_SECONDS) * 1e9)
                self.owed = max_count
                self.request_ends = time.monotonic() + wait + 1.0
                request = json.dumps({"batch": max_count, "expires": expires}).encode()
                await nc.publish(self.pull_subject, request, reply=self.inbox)
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), wait)
            self._raise_error()
        now = int(time.time() * 1000)
        return [self._message(buffer.popleft(), now) for _ in range(min(max_count, len(buffer)))]

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise ConnectionError(error)

    def _message(self, m: Msg, now: int) -> Message:
        meta = m.metadata
        sent = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else now
        return Message(
            message_id=str(meta.sequence.stream),
            body=m.data,
            receive_count=meta.num_delivered,
            sent_timestamp_ms=sent,
            first_receive_timestamp_ms=now if meta.num_delivered == 1 else sent,
            sender_id="",
            message_attributes=string_headers(m.headers),
            receipt_handle=m.reply,
            handle=m,
        )

    async def ack(self, messages: Sequence[Message]) -> None:
        for m in messages:
            await m.handle.ack()
        if self.nc is not None:
            await self.nc.flush(timeout=10)  # acks are fire-and-forget publishes: make sure they left

    async def retry(self, messages: Sequence[Message]) -> None:
        for m in messages:
            await m.handle.nak()
        if self.nc is not None:
            await self.nc.flush(timeout=10)

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        for m in messages:
            await m.handle.in_progress()

    async def depth(self) -> int | None:
        if self.nc is None or not self.nc.is_connected:
            return None
        info = await self.nc.jetstream().consumer_info(self.spec.stream, self.durable)
        return int(info.num_pending or 0)


async def _ignore(_: Exception) -> None:
    return None


async def _ignore_none() -> None:
    return None


class NatsQueue(QueueBridge):
    """Trigger source ``queue.nats``."""

    def make_broker(self, ctx: BridgeContext, settings: QueueSettings) -> NatsBroker:
        return NatsBroker(ctx, settings)


BRIDGE = NatsQueue
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
