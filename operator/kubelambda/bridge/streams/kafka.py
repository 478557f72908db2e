"""Kafka topics read per partition with aiokafka; the checkpoint is the consumer group's committed offset.

Each partition is a shard (``shardId-<partition>``). The bridge assigns itself every partition of the topic
(one bridge per Trigger, no group rebalances) and commits ``offset + 1`` of the last record done, in the
consumer group ``spec.stream.kafka.consumerGroup`` (default ``kubelambda-<namespace>-<trigger>``), so the
group's lag is visible to Kafka's own tools; every partition's offset goes in one commit, at most every checkpoint
interval (``KUBELAMBDA_BRIDGE_CHECKPOINT_INTERVAL_SECONDS``). A record becomes a Kinesis-shaped record: ``data`` is the value,
``partitionKey`` the key (UTF-8, or base64 when the key is not UTF-8), ``sequenceNumber`` the offset,
``approximateArrivalTimestamp`` the record's timestamp. ``eventSource`` is ``kubelambda:kafka``.
"""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord, shard_id
from kubelambda.bridge.streams._core import StreamBridge, StreamClient

READ_TIMEOUT_MS = 1000


def key_text(key: bytes | None) -> str:
    if key is None:
        return ""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key).decode("ascii")


def message_records(shard: str, messages: list[Any]) -> list[StreamRecord]:
    """aiokafka ``ConsumerRecord``s as records (pure; one loop without a call per record: it runs for every
    record the bridge reads)."""
    records = []
    for m in messages:
        key, value, offset = m.key, m.value, m.offset
        if key is None:
            partition_key = ""
        else:
            try:
                partition_key = key.decode()
            except UnicodeDecodeError:
                partition_key = key_text(key)
        records.append(
            StreamRecord(
                shard,
                str(offset),
                partition_key,
                b"" if value is None else value,
                m.timestamp / 1000.0,
                offset,
            )
        )
    return records


def default_group(namespace: str, trigger: str) -> str:
    return f"kubelambda-{namespace}-{trigger}"


class _Reader:
    def __init__(self, client: _KafkaClient, shard: str, tp: TopicPartition) -> None:
        self.client = client
        self.shard = shard
        self.tp = tp
        self.next_offset: int | None = None

    async def read(self, max_records: int) -> list[StreamRecord]:
        consumer = self.client.consumer
        assert consumer is not None
        got = await consumer.getmany(self.tp, timeout_ms=READ_TIMEOUT_MS, max_records=max_records)
        messages = got.get(self.tp, [])
        if messages:
            self.next_offset = messages[-1].offset + 1
        return message_records(self.shard, messages)

    async def commit(self, record: StreamRecord) -> None:
        await self.client.commit(self.tp, int(record.position) + 1)

    def lag(self) -> int | None:
        consumer = self.client.consumer
        if consumer is None or self.next_offset is None:
            return None
        high = consumer.highwater(self.tp)
        return max(0, high - self.next_offset) if high is not None else None


class _KafkaClient:
    def __init__(self, ctx: BridgeContext, *, commit_interval: float) -> None:
        stream = ctx.trigger.spec.stream
        assert stream is not None
        assert stream.kafka is not None
        self.ctx = ctx
        self.spec = stream.kafka
        self.stream = stream
        self.topic = self.spec.topic
        self.group = self.spec.consumer_group or default_group(ctx.namespace, ctx.name)
        self.consumer: AIOKafkaConsumer | None = None
        self.commit_interval = commit_interval
        self._wanted: dict[TopicPartition, int] = {}
        self._next: asyncio.Task[None] | None = None
        """The next OffsetCommit: it takes every offset wanted by the time it is sent."""
        self._sending: asyncio.Task[None] | None = None
        self._sent_at = -math.inf
        self.info = SourceInfo(
            event_source="kubelambda:kafka",
            event_source_arn=f"arn:kubelambda:kafka:{ctx.region}:{ctx.namespace}:topic/{self.topic}",
            invoke_identity_arn=f"arn:aws:iam::{ctx.namespace}:role/{ctx.name}",
            region=ctx.region,
        )

    async def start(self) -> None:
        auth: dict[str, Any] = {}
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            auth = {
                "security_protocol": secret.get("securityProtocol", "SASL_PLAINTEXT"),
                "sasl_mechanism": secret.get("mechanism", "PLAIN"),
                "sasl_plain_username": secret.get("username"),
                "sasl_plain_password": secret.get("password"),
            }
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.spec.bootstrap_servers),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"kubelambda-bridge-{self.ctx.namespace}-{self.ctx.name}",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **auth,
        )
        await self.consumer.start()

    async def commit(self, tp: TopicPartition, offset: int) -> None:
        """Commits ``offset`` of ``tp`` with what the other partitions want committed meanwhile: one OffsetCommit for
        them all, at most every ``commit_interval`` seconds (a request per partition and batch was a sixth of the
        bridge's CPU at batch 10). Returns once a commit with it succeeded; raises what that commit raised."""
        self._wanted[tp] = offset
        if self._next is None:
            self._next = asyncio.create_task(self._commit_round(), name="kafka commit")
            self._next.add_done_callback(_retrieve)
        await asyncio.shield(self._next)  # a shard stopped while waiting does not cancel the others' commit

    async def _commit_round(self) -> None:
        if self._sending is not None:
            await asyncio.wait({self._sending})  # its outcome is for its own callers
        loop = asyncio.get_running_loop()
        if (delay := self._sent_at + self.commit_interval - loop.time()) > 0:
            await asyncio.sleep(delay)
        self._sending, self._next = self._next, None
        offsets, self._wanted = self._wanted, {}
        self._sent_at = loop.time()
        consumer = self.consumer
        assert consumer is not None
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})

    async def shards(self) -> list[str]:
        consumer = self.consumer
        assert consumer is not None
        # aiokafka's public partitions_for_topic() only knows topics the client already follows; a manual
        # assignment follows none yet, so read the cluster's metadata (the client's own call) directly.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(self.topic) or set()
        if not partitions:
            return []
        if not consumer.assignment():
            consumer.assign(sorted(TopicPartition(self.topic, p) for p in partitions))
        # A new assignment would reset every partition's fetch position under the shards' read-ahead (records
        # read twice, out of order), so partitions added later are read after the bridge restarts.
        return [shard_id(tp.partition) for tp in sorted(consumer.assignment())]

    async def reader(self, shard: str) -> _Reader:
        consumer = self.consumer
        assert consumer is not None
        tp = TopicPartition(self.topic, int(shard.rsplit("-", 1)[1]))
        committed = await consumer.committed(tp)
        if committed is not None:
            consumer.seek(tp, committed)
            return _Reader(self, shard, tp)
        position = self.stream.starting_position
        if position == "TRIM_HORIZON":
            await consumer.seek_to_beginning(tp)
        elif position == "LATEST":
            await consumer.seek_to_end(tp)
        else:
            ts = self.stream.starting_position_timestamp
            assert ts is not None
            found = await consumer.offsets_for_times({tp: int(ts.timestamp() * 1000)})
            if found.get(tp) is not None:
                consumer.seek(tp, found[tp].offset)
            else:
                await consumer.seek_to_end(tp)
        if position != "TRIM_HORIZON":
            # Commit where LATEST / AT_TIMESTAMP resolved to, so a restart does not move it.
            start = await consumer.position(tp)
            await consumer.commit({tp: OffsetAndMetadata(start, "")})
        return _Reader(self, shard, tp)

    async def close(self) -> None:
        # The offsets of a clean stop are in a commit not sent yet (the caller bounds the wait).
        rounds = {task for task in (self._sending, self._next) if task is not None}
        if rounds:
            await asyncio.wait(rounds)
        self._next = self._sending = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


class KafkaStream(StreamBridge):
    """``spec.stream.kafka``: a Kafka topic, per partition in order."""

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        return _KafkaClient(ctx, commit_interval=self.settings.checkpoint_interval_seconds)


def _retrieve(task: asyncio.Task[None]) -> None:
    """A commit whose callers all stopped waiting: its error is theirs, not a "never retrieved" warning."""
    if not task.cancelled():
        task.exception()


BRIDGE = KafkaStream
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
