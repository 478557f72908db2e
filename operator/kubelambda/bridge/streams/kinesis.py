"""Kinesis Data Streams API (any compatible endpoint) read per shard with aiobotocore; checkpoint in the
Trigger's checkpoint ConfigMap (one key per shard id: the last sequence number done).

Records are Kinesis records, delivered as Lambda delivers them (``eventSource: aws:kinesis``). A shard that
ends (after a reshard) is read to its end; its children are read in parallel with it (Lambda waits for the
parent first: we do not, see docs/triggers-stream.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord
from kubelambda.bridge.streams._core import CheckpointStore, StreamBridge, StreamClient, config_key

EMPTY_POLL_SECONDS = 0.25
"""Lambda polls an idle shard about once a second; we poll faster, still far under 5 reads/s per shard."""


def kinesis_record(shard: str, record: dict[str, Any]) -> StreamRecord:
    """One GetRecords record as a stream record (pure)."""
    arrival = record.get("ApproximateArrivalTimestamp")
    return StreamRecord(
        shard=shard,
        sequence=record["SequenceNumber"],
        partition_key=record.get("PartitionKey", ""),
        data=bytes(record.get("Data", b"")),
        arrival=arrival.timestamp() if arrival is not None else 0.0,
        position=record["SequenceNumber"],
    )


class _Reader:
    def __init__(self, client: _KinesisClient, shard: str, after: str | None) -> None:
        self.client = client
        self.shard = shard
        self.after = after
        self.iterator: str | None = None
        self.closed = False
        self.behind_ms: int | None = None

    async def _iterator(self) -> str | None:
        kwargs: dict[str, Any] = {"StreamName": self.client.stream_name, "ShardId": self.shard}
        stream = self.client.stream
        if self.after is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self.after)
        elif stream.starting_position == "AT_TIMESTAMP":
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=stream.starting_position_timestamp)
        else:
            kwargs.update(ShardIteratorType=stream.starting_position)
        answer = await self.client.api.get_shard_iterator(**kwargs)
        iterator: str | None = answer.get("ShardIterator")
        return iterator

    async def read(self, max_records: int) -> list[StreamRecord]:
        if self.closed:
            await asyncio.sleep(5)
            return []
        if self.iterator is None:
            self.iterator = await self._iterator()
        try:
            answer = await self.client.api.get_records(
                ShardIterator=self.iterator, Limit=min(max_records, 10000)
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ExpiredIteratorException":
                self.iterator = None
                return []
            raise
        self.iterator = answer.get("NextShardIterator")
        if self.iterator is None:
            self.closed = True
        self.behind_ms = answer.get("MillisBehindLatest")
        records = [kinesis_record(self.shard, r) for r in answer.get("Records", [])]
        if records:
            self.after = records[-1].sequence
        else:
            await asyncio.sleep(EMPTY_POLL_SECONDS)
        return records

    async def commit(self, record: StreamRecord) -> None:
        self.client.store.set(config_key(self.shard), record.sequence)

    def lag(self) -> int | None:
        return None


class _KinesisClient:
    def __init__(self, ctx: BridgeContext, store: CheckpointStore) -> None:
        stream = ctx.trigger.spec.stream
        assert stream is not None
        assert stream.kinesis is not None
        self.ctx = ctx
        self.spec = stream.kinesis
        self.stream = stream
        self.store = store
        self.stream_name = self.spec.stream_name
        self.api: Any = None
        self._stack = contextlib.AsyncExitStack()
        self.info = SourceInfo(
            event_source="aws:kinesis",
            event_source_arn=f"arn:aws:kinesis:{self.spec.region}:{ctx.namespace}:stream/{self.stream_name}",
            invoke_identity_arn=f"arn:aws:iam::{ctx.namespace}:role/{ctx.name}",
            region=self.spec.region,
        )

    async def start(self) -> None:
        key, secret = "kubelambda", "kubelambda"
        if self.spec.credentials_secret:
            creds = await self.ctx.secrets.get(self.spec.credentials_secret)
            key, secret = creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]
        session = get_session()
        self.api = await self._stack.enter_async_context(
            session.create_client(
                "kinesis",
                endpoint_url=self.spec.endpoint,
                region_name=self.spec.region,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=50),
            )
        )
        await self.api.describe_stream_summary(StreamName=self.stream_name)

    async def shards(self) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream_name}
        while True:
            answer = await self.api.list_shards(**kwargs)
            ids.extend(s["ShardId"] for s in answer.get("Shards", []))
            token = answer.get("NextToken")
            if not token:
                return ids
            kwargs = {"NextToken": token}

    async def reader(self, shard: str) -> _Reader:
        return _Reader(self, shard, self.store.get(config_key(shard)))

    async def close(self) -> None:
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        self.api = None


class KinesisStream(StreamBridge):
    """``spec.stream.kinesis``: a Kinesis-compatible stream, per shard in order."""

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        return _KinesisClient(ctx, self.store)


BRIDGE = KinesisStream
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
