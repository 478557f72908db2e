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
- ``messageId`` is the stream sequence; ``ApproximateReceiveCount`` is JetStream's delivery count;
  ``lag`` is the consumer's pending count.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.queues._batch import Message, string_headers
from kubelambda.bridge.queues._core import QueueBridge, QueueSettings


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
        self.sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.spec.stream)

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
        if self.nc is None or not self.nc.is_connected:
            raise ConnectionError("the NATS connection closed")
        try:
            got: list[Msg] = await self.sub.fetch(max_count, timeout=max(wait_seconds, 0.01))
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        now = int(time.time() * 1000)
        return [self._message(m, now) for m in got]

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
