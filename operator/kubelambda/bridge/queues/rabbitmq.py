"""RabbitMQ queues (AMQP 0-9-1, aio-pika) as an SQS-style event source (``eventSource: kubelambda:rabbitmq``).

- The bridge consumes the queue with manual acks and a prefetch of ``2 * batchSize * (maxConcurrency + 1)``
  (a batch being gathered and the next one waiting, per slot: acks free credit while the next batch is ready).
- Success: ``basic.ack``. Function failure (or a message named in ``batchItemFailures``): ``basic.nack`` with
  ``requeue=true``, so the broker's own limits apply: on a quorum queue with ``x-delivery-limit`` the message is
  dead-lettered to the queue's ``x-dead-letter-exchange`` (or dropped without one) once the limit is passed,
  exactly like SQS's redrive policy. Classic queues have no delivery limit: a failing message comes back until
  the function accepts it (use a quorum queue for a redrive policy).
- With ``KUBELAMBDA_BRIDGE_QUEUE_RABBITMQ_REQUEUE=false`` a failed message is rejected with ``requeue=false``
  instead: the queue's dead-letter exchange takes it at once (a classic queue's redrive, or a DLX + TTL retry loop
  that brings it back later); a queue without a DLX drops it.
- ``ApproximateReceiveCount`` is ``x-delivery-count + 1`` on quorum queues, plus the message's rejections from
  this queue recorded in ``x-death`` (dead-letter loops); otherwise 1, or 2 for a message the broker flags
  ``redelivered`` (classic queues keep no count).
- Throttles keep the messages unacknowledged (no delivery attempt used); RabbitMQ's ``consumer_timeout``
  (30 min by default) bounds how long.
- ``lag`` is the queue's ready-message count (a passive ``queue.declare``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
import yarl
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.queues._batch import Message, string_headers
from kubelambda.bridge.queues._core import QueueBridge, QueueSettings


def _ms(value: Any) -> int:
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value) * 1000


def receive_count(delivery_count: Any, deaths: Any, *, queue: str, redelivered: bool) -> int:
    """``ApproximateReceiveCount`` of a delivery.

    Quorum queues count returns in ``x-delivery-count``. A message that came back through a dead-letter loop
    (rejected to a DLX, back after a TTL) carries ``x-death`` entries; its rejections from this queue count.
    Otherwise RabbitMQ only says whether it was ``redelivered`` (then at least 2).
    """
    count = 1
    if isinstance(delivery_count, int):
        count += delivery_count
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, dict) and death.get("queue") == queue and death.get("reason") == "rejected":
                n = death.get("count")
                count += n if isinstance(n, int) else 1
    if count == 1 and redelivered:
        count = 2
    return count


class RabbitMQBroker:
    event_source = "kubelambda:rabbitmq"
    lease_renew_seconds: float | None = None  # unacknowledged messages stay ours until the channel closes

    def __init__(self, ctx: BridgeContext, settings: QueueSettings) -> None:
        spec = ctx.trigger.spec.queue
        assert spec is not None
        assert spec.rabbitmq is not None
        self.ctx = ctx
        self.spec = spec.rabbitmq
        self.prefetch = min(65535, spec.batch_size * 2 * (spec.max_concurrency + 1))
        self.settings = settings
        self.event_source_arn = f"arn:kubelambda:rabbitmq:{ctx.region}:{ctx.namespace}:{self.spec.queue}"
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def connect(self) -> None:
        url = yarl.URL(self.spec.url)
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            url = url.with_user(secret.get("username", url.user)).with_password(
                secret.get("password", url.password)
            )
        self.buffer = asyncio.Queue()
        self.connection = await aio_pika.connect(url, timeout=10)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=self.prefetch)
        # Passive: the queue and its arguments (quorum, delivery limit, dead-letter exchange) are the user's.
        self.queue = await self.channel.declare_queue(self.spec.queue, passive=True)
        buffer = self.buffer
        await self.queue.consume(lambda m: _put(buffer, m), consumer_tag=f"kubelambda-{self.ctx.bridge_id}")

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.connection = self.channel = self.queue = None

    def _alive(self) -> None:
        if (
            self.connection is None
            or self.connection.is_closed
            or self.channel is None
            or self.channel.is_closed
        ):
            raise ConnectionError("the AMQP connection closed")

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        self._alive()
        got: list[AbstractIncomingMessage] = []
        try:
            got.append(await asyncio.wait_for(self.buffer.get(), timeout=max(wait_seconds, 0.001)))
        except TimeoutError:
            self._alive()
            return []
        while len(got) < max_count and not self.buffer.empty():
            got.append(self.buffer.get_nowait())
        now = int(time.time() * 1000)
        return [self._message(m, now) for m in got]

    def _message(self, m: AbstractIncomingMessage, now: int) -> Message:
        headers = dict(m.headers or {})
        receives = receive_count(
            headers.pop("x-delivery-count", None),
            headers.get("x-death"),
            queue=self.spec.queue,
            redelivered=bool(m.redelivered),
        )
        sent = _ms(m.timestamp) or now
        return Message(
            message_id=m.message_id or f"{self.spec.queue}-{m.delivery_tag}",
            body=m.body,
            receive_count=receives,
            sent_timestamp_ms=sent,
            first_receive_timestamp_ms=now if receives == 1 else sent,
            sender_id=m.user_id or m.app_id or "",
            message_attributes=string_headers(headers),
            receipt_handle=str(m.delivery_tag),
            handle=m,
        )

    async def ack(self, messages: Sequence[Message]) -> None:
        for m in messages:
            await m.handle.ack()

    async def retry(self, messages: Sequence[Message]) -> None:
        for m in messages:
            await m.handle.nack(requeue=self.settings.rabbitmq_requeue)

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        self._alive()  # nothing to renew: an unacknowledged message stays ours while the channel lives

    async def depth(self) -> int | None:
        if self.connection is None or self.connection.is_closed:
            return None
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(self.spec.queue, passive=True)
            count = queue.declaration_result.message_count
            return int(count) if count is not None else None
        finally:
            await channel.close()


async def _put(buffer: asyncio.Queue[AbstractIncomingMessage], message: AbstractIncomingMessage) -> None:
    buffer.put_nowait(message)


class RabbitMQQueue(QueueBridge):
    """Trigger source ``queue.rabbitmq``."""

    def make_broker(self, ctx: BridgeContext, settings: QueueSettings) -> RabbitMQBroker:
        return RabbitMQBroker(ctx, settings)


BRIDGE = RabbitMQQueue
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
