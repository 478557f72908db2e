"""NATS JetStream streams read in order; the checkpoint is a durable consumer's ack floor.

The stream (optionally filtered by ``subject``) is one shard (``shardId-000000000000``), read by a durable pull
consumer ``kubelambda-<namespace>-<trigger>`` with ``AckPolicy.ALL``: acknowledging the last record of a
batch that is done acknowledges everything before it, so the consumer's ack floor is the checkpoint.
At start the bridge recreates the consumer at its ack floor + 1 (after saving the floor in the Trigger's
checkpoint ConfigMap, so a crash in between does not lose it): records delivered to a previous bridge but
not acknowledged are read again at once and in order, instead of being redelivered out of order after an
ack wait. A message becomes a Kinesis-shaped record: ``data`` is the payload, ``partitionKey`` the
``Kubelambda-Partition-Key`` header or else the subject, ``sequenceNumber`` the stream sequence,
``approximateArrivalTimestamp`` the time the stream stored it. ``eventSource`` is ``kubelambda:nats``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord, shard_id
from kubelambda.bridge.streams._core import CheckpointStore, StreamBridge, StreamClient, config_key

PARTITION_KEY_HEADER = "Kubelambda-Partition-Key"
FETCH_TIMEOUT_SECONDS = 1.0
ACK_WAIT_SECONDS = 12 * 3600.0


def message_record(shard: str, msg: Any) -> StreamRecord:
    """One JetStream message as a record (pure apart from reading the message)."""
    meta = msg.metadata
    headers = msg.headers or {}
    return StreamRecord(
        shard=shard,
        sequence=str(meta.sequence.stream),
        partition_key=headers.get(PARTITION_KEY_HEADER) or msg.subject,
        data=msg.data or b"",
        arrival=meta.timestamp.timestamp(),
        position=msg,
    )


def consumer_name(namespace: str, trigger: str) -> str:
    return f"kubelambda-{namespace}-{trigger}"


class _Reader:
    def __init__(self, client: _NatsClient, shard: str, sub: Any) -> None:
        self.client = client
        self.shard = shard
        self.sub = sub
        self._lag: int | None = None

    async def read(self, max_records: int) -> list[StreamRecord]:
        try:
            # Bounded from outside too: a pull that never completes must not stall the shard.
            msgs = await asyncio.wait_for(
                self.sub.fetch(batch=max_records, timeout=FETCH_TIMEOUT_SECONDS), FETCH_TIMEOUT_SECONDS + 10
            )
        except (TimeoutError, NatsTimeout):
            return []
        if msgs:
            self._lag = msgs[-1].metadata.num_pending
        return [message_record(self.shard, m) for m in msgs]

    async def commit(self, record: StreamRecord) -> None:
        await record.position.ack_sync(timeout=10)

    def lag(self) -> int | None:
        return self._lag


class _NatsClient:
    def __init__(self, ctx: BridgeContext, store: CheckpointStore) -> None:
        stream = ctx.trigger.spec.stream
        assert stream is not None
        assert stream.nats is not None
        self.ctx = ctx
        self.spec = stream.nats
        self.stream = stream
        self.store = store
        self.durable = consumer_name(ctx.namespace, ctx.name)
        self.floor_key = config_key(f"nats.{self.spec.stream}.ackFloor")
        self.nc: Any = None
        self.info = SourceInfo(
            event_source="kubelambda:nats",
            event_source_arn=f"arn:kubelambda:nats:{ctx.region}:{ctx.namespace}:stream/{self.spec.stream}",
            invoke_identity_arn=f"arn:aws:iam::{ctx.namespace}:role/{ctx.name}",
            region=ctx.region,
        )

    async def start(self) -> None:
        options: dict[str, Any] = {}
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            if "token" in secret:
                options["token"] = secret["token"]
            if "username" in secret:
                options["user"] = secret["username"]
                options["password"] = secret.get("password", "")
        self.nc = await nats.connect(self.spec.url, max_reconnect_attempts=-1, **options)

    async def publish(self, subject: str, body: bytes) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, body)
        await self.nc.flush(timeout=5)

    async def shards(self) -> list[str]:
        return [shard_id(0)]

    def _config(self, floor: int | None) -> ConsumerConfig:
        common: dict[str, Any] = {
            "durable_name": self.durable,
            "ack_policy": AckPolicy.ALL,
            "ack_wait": ACK_WAIT_SECONDS,
            "max_deliver": -1,
            "max_ack_pending": -1,
            "filter_subject": self.spec.subject,
        }
        if floor is not None:
            return ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1, **common
            )
        position = self.stream.starting_position
        if position == "LATEST":
            return ConsumerConfig(deliver_policy=DeliverPolicy.NEW, **common)
        if position == "AT_TIMESTAMP":
            return ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=self.stream.starting_position_timestamp,
                **common,
            )
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL, **common)

    async def reader(self, shard: str) -> _Reader:
        js = self.nc.jetstream()
        floor: int | None = None
        try:
            info = await js.consumer_info(self.spec.stream, self.durable)
        except NotFoundError:
            saved = self.store.get(self.floor_key)
            floor = int(saved) if saved is not None else None
        else:
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            self.store.set(self.floor_key, str(floor))
            await self.store.flush()
            await js.delete_consumer(self.spec.stream, self.durable)
        await js.add_consumer(self.spec.stream, self._config(floor))
        sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.spec.stream)
        return _Reader(self, shard, sub)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = None


class NatsStream(StreamBridge):
    """``spec.stream.nats``: a JetStream stream (optionally one subject filter), in stream order."""

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        self._nats = _NatsClient(ctx, self.store)
        return self._nats

    def nats_publish(self) -> Any:
        return self._nats.publish


BRIDGE = NatsStream
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
