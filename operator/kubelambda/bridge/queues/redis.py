"""A Redis stream read through a consumer group, as an SQS-style work queue (``eventSource: kubelambda:redis``).

- Group: ``consumerGroup`` or ``kubelambda-<namespace>-<trigger>``, created at ``0`` (the whole stream is
  the backlog) with ``MKSTREAM`` when missing; consumer: the bridge's own id (one per bridge process).
- New entries come from ``XREADGROUP >``. An entry delivered but not acknowledged within the visibility timeout
  (``KUBELAMBDA_BRIDGE_QUEUE_VISIBILITY_TIMEOUT_SECONDS``, default 30 s) is claimed again with ``XAUTOCLAIM``,
  by this bridge or any other consumer of the group: that is how a failed message, or the batch of a bridge that
  died, becomes visible again. While the function runs the bridge resets the entries' idle time
  (``XCLAIM ... JUSTID``, which does not count a delivery).
- Success: ``XACK`` (the entry stays in the stream for other groups; trim the stream with ``MAXLEN``/``MINID``).
  One ``XACK`` is in flight at a time: the batches that succeed meanwhile are acknowledged together by the next
  one (a batch's acknowledgement returns once the ``XACK`` naming its entries answered).
- ``ApproximateReceiveCount`` is the entry's delivery count from ``XPENDING``. An entry claimed more than
  ``max receive count`` times (``KUBELAMBDA_BRIDGE_QUEUE_MAX_RECEIVE_COUNT``, default 5; 0 = never) is copied to
  the dead-letter stream ``<key>:dlq`` (its fields, plus ``kubelambda-source-id`` and
  ``kubelambda-receive-count``) and acknowledged, in one ``MULTI``, instead of being delivered again.
- The body is the entry's ``body`` field; the other fields become String (or Binary) message attributes.
  An entry without a ``body`` field is sent as a JSON object of all its fields (non-UTF-8 values base64).
- ``messageId`` is the entry id; ``SentTimestamp`` its millisecond part; ``lag`` is the group's lag (Redis 7).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from kubelambda import metrics
from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.queues._batch import Message, attribute, dead_letter
from kubelambda.bridge.queues._core import QueueBridge, QueueSettings


def group_name(namespace: str, trigger: str) -> str:
    return f"kubelambda-{namespace}-{trigger}"


def dlq_key(key: str) -> str:
    return f"{key}:dlq"


def entry_body(fields: dict[bytes, bytes]) -> tuple[bytes, dict[str, Any]]:
    """The body and the message attributes of a stream entry."""
    if len(fields) == 1 and b"body" in fields:
        return fields[b"body"], {}
    if b"body" in fields:
        rest = {k.decode(errors="replace"): attribute(v) for k, v in sorted(fields.items()) if k != b"body"}
        return fields[b"body"], rest
    as_text: dict[str, str] = {}
    for k, v in sorted(fields.items()):
        try:
            as_text[k.decode()] = v.decode()
        except UnicodeDecodeError:
            as_text[k.decode(errors="replace")] = base64.b64encode(v).decode()
    return json.dumps(as_text).encode(), {}


class RedisBroker:
    event_source = "kubelambda:redis"

    def __init__(self, ctx: BridgeContext, settings: QueueSettings) -> None:
        spec = ctx.trigger.spec.queue
        assert spec is not None
        assert spec.redis is not None
        self.ctx = ctx
        self.spec = spec.redis
        self.settings = settings
        self.key = self.spec.key
        self.group = self.spec.consumer_group or group_name(ctx.namespace, ctx.name)
        self.consumer = ctx.bridge_id
        self.event_source_arn = f"arn:kubelambda:redis:{ctx.region}:{ctx.namespace}:{self.key}"
        self.lease_renew_seconds: float | None = settings.visibility_timeout_seconds / 3
        self.idle_ms = int(settings.visibility_timeout_seconds * 1000)
        self.client: aioredis.Redis | None = None
        self._cursor = "0-0"
        self._next_sweep = 0.0
        self._acks: list[bytes] = []
        """Entries of succeeded batches waiting for the next ``XACK``."""
        self._acked: asyncio.Future[None] | None = None
        """Resolved when the ``XACK`` that will carry ``_acks`` answered."""
        self._acking: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        password = None
        if self.spec.credentials_secret:
            password = (await self.ctx.secrets.get(self.spec.credentials_secret)).get("password")
        self.client = aioredis.from_url(
            self.spec.url, password=password, socket_connect_timeout=5, decode_responses=False
        )
        try:
            await self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._cursor = "0-0"
        self._next_sweep = 0.0

    async def close(self) -> None:
        if self._acking is not None:
            self._acking.cancel()
            await asyncio.wait({self._acking})
        if self.client is not None:
            await self.client.aclose()
        self.client = None

    def _redis(self) -> aioredis.Redis:
        if self.client is None:
            raise ConnectionError("not connected to Redis")
        return self.client

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        client = self._redis()
        now = time.monotonic()
        if now >= self._next_sweep or self._cursor != "0-0":
            claimed = await self._reclaim(max_count)
            if self._cursor == "0-0":
                self._next_sweep = now + min(1.0, self.settings.visibility_timeout_seconds / 4)
            if claimed:
                return claimed
        block = max(1, int(wait_seconds * 1000))
        answer = await client.xreadgroup(
            self.group, self.consumer, {self.key: ">"}, count=max_count, block=block
        )
        wall = int(time.time() * 1000)
        out: list[Message] = []
        stream_entries: Any = answer or []
        for _stream, entries in stream_entries:
            for entry_id, fields in entries:
                out.append(self._message(entry_id, fields, receives=1, now=wall))
        return out

    async def _reclaim(self, max_count: int) -> list[Message]:
        """Entries idle past the visibility timeout (failed, or held by a consumer that died)."""
        client = self._redis()
        cursor, entries, *_ = await client.xautoclaim(
            self.key, self.group, self.consumer, self.idle_ms, start_id=self._cursor, count=max_count
        )
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        entries = [(i, f) for i, f in entries if f is not None]
        if not entries:
            return []
        first, last = entries[0][0], entries[-1][0]
        pending = await client.xpending_range(
            self.key, self.group, min=first, max=last, count=100_000, consumername=self.consumer
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        wall = int(time.time() * 1000)
        out: list[Message] = []
        for entry_id, fields in entries:
            receives = counts.get(entry_id, 2)
            if dead_letter(receives, max_receive_count=self.settings.max_receive_count):
                await self._dead_letter(entry_id, fields, receives)
                continue
            out.append(self._message(entry_id, fields, receives=receives, now=wall))
        return out

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], receives: int) -> None:
        copy: dict[Any, Any] = dict(fields)
        copy[b"kubelambda-source-id"] = entry_id
        copy[b"kubelambda-receive-count"] = str(receives - 1).encode()
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.xadd(dlq_key(self.key), copy)
            pipe.xack(self.key, self.group, entry_id)
            await pipe.execute()
        metrics.BRIDGE_DISCARDED.labels("max_receive_count").inc()

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes], *, receives: int, now: int) -> Message:
        ident = entry_id.decode()
        body, attributes = entry_body(fields)
        sent = int(ident.split("-", 1)[0])
        return Message(
            message_id=ident,
            body=body,
            receive_count=receives,
            sent_timestamp_ms=sent,
            first_receive_timestamp_ms=now if receives == 1 else sent,
            sender_id="",
            message_attributes=attributes,
            receipt_handle=ident,
            handle=entry_id,
        )

    async def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledges ``messages`` with the next ``XACK`` (the entries of batches that succeed while one is in
        flight go together in the next: at batch 10 an ``XACK`` per batch was a fifth of the bridge's samples);
        returns once it answered, raises what it raised."""
        self._redis()
        self._acks.extend(m.handle for m in messages)
        if self._acked is None:
            self._acked = asyncio.get_running_loop().create_future()
            self._acked.add_done_callback(_retrieve)
        acked = self._acked
        if self._acking is None:
            self._acking = asyncio.create_task(self._send_acks())
        await asyncio.shield(acked)  # a cancelled batch must not cancel the others' acknowledgement

    async def _send_acks(self) -> None:
        try:
            while self._acks:
                ids, self._acks = self._acks, []
                acked, self._acked = self._acked, None
                assert acked is not None
                try:
                    await self._redis().xack(self.key, self.group, *ids)
                except asyncio.CancelledError:
                    acked.set_exception(ConnectionError("the Redis client closed before XACK answered"))
                    raise
                except Exception as e:  # the batches it carried fail with it (their entries stay pending)
                    acked.set_exception(e)
                else:
                    acked.set_result(None)
        finally:
            self._acking = None
            if self._acked is not None:  # cancelled (closing): what was waiting never goes out
                self._acked.set_exception(ConnectionError("the Redis client closed before XACK"))
                self._acked = None
                self._acks = []

    async def retry(self, messages: Sequence[Message]) -> None:
        """Nothing to do: the entries stay pending and are claimed again after the visibility timeout."""

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        # XCLAIM to ourselves resets the idle time; JUSTID leaves the delivery count alone.
        await self._redis().xclaim(
            self.key, self.group, self.consumer, 0, [m.handle for m in messages], justid=True
        )

    async def depth(self) -> int | None:
        for group in await self._redis().xinfo_groups(self.key):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a failed acknowledgement seen even when every batch awaiting it was cancelled (no warning)."""
    if not future.cancelled():
        future.exception()


class RedisQueue(QueueBridge):
    """Trigger source ``queue.redis``."""

    def make_broker(self, ctx: BridgeContext, settings: QueueSettings) -> RedisBroker:
        return RedisBroker(ctx, settings)


BRIDGE = RedisQueue
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
