"""Redis Streams read in order (``XREAD``), one shard per stream key; checkpoint in the Trigger's ConfigMap.

A stream entry becomes a Kinesis-shaped record: ``data`` is the entry's ``data`` field (bytes, base64 in the
event) or, when the entry has no such field, a JSON object of all its fields; ``partitionKey`` is the
``partitionKey`` field or the stream key; ``sequenceNumber`` is the entry id (``<ms>-<n>``) and
``approximateArrivalTimestamp`` its millisecond part. ``eventSource`` is ``kubelambda:redis``.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord, shard_id
from kubelambda.bridge.streams._core import CheckpointStore, StreamBridge, StreamClient, config_key

MAX_SEQ = 18446744073709551615
BLOCK_MS = 1000


def entry_record(shard: str, key: str, entry_id: bytes, fields: dict[bytes, bytes]) -> StreamRecord:
    """One XREAD entry as a record (pure)."""
    ident = entry_id.decode()
    data = fields.get(b"data")
    if data is None:
        data = json.dumps(
            {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
            separators=(",", ":"),
        ).encode()
    pk = fields.get(b"partitionKey")
    partition_key = pk.decode(errors="replace") if pk is not None else key
    return StreamRecord(
        shard=shard,
        sequence=ident,
        partition_key=partition_key,
        data=data,
        arrival=int(ident.split("-", 1)[0]) / 1000.0,
        position=ident,
    )


def start_id(position: str, *, timestamp_ms: int | None) -> str:
    """The id XREAD reads after, for a starting position without checkpoint (LATEST is resolved by the caller)."""
    if position == "AT_TIMESTAMP" and timestamp_ms is not None:
        return f"{timestamp_ms - 1}-{MAX_SEQ}" if timestamp_ms > 0 else "0-0"
    return "0-0"


class _Reader:
    def __init__(self, client: _RedisClient, shard: str, after: str) -> None:
        self.client = client
        self.shard = shard
        self.after = after
        self._lag: int | None = None

    async def read(self, max_records: int) -> list[StreamRecord]:
        conn = self.client.conn
        assert conn is not None
        key = self.client.key
        got: Any = await conn.xread({key: self.after}, count=max_records, block=BLOCK_MS)
        if not got:
            return []
        records = [entry_record(self.shard, key, eid, fields) for eid, fields in got[0][1]]
        if records:
            self.after = records[-1].sequence
        return records

    async def commit(self, record: StreamRecord) -> None:
        self.client.store.set(self.client.checkpoint_key, record.sequence)

    def lag(self) -> int | None:
        return self._lag


class _RedisClient:
    def __init__(self, ctx: BridgeContext, store: CheckpointStore) -> None:
        stream = ctx.trigger.spec.stream
        assert stream is not None
        assert stream.redis is not None
        self.ctx = ctx
        self.spec = stream.redis
        self.stream = stream
        self.store = store
        self.key = self.spec.key
        self.checkpoint_key = config_key(f"redis.{self.key}")
        self.conn: aioredis.Redis | None = None
        self.info = SourceInfo(
            event_source="kubelambda:redis",
            event_source_arn=f"arn:kubelambda:redis:{ctx.region}:{ctx.namespace}:stream/{self.key}",
            invoke_identity_arn=f"arn:aws:iam::{ctx.namespace}:role/{ctx.name}",
            region=ctx.region,
        )

    async def start(self) -> None:
        password = None
        if self.spec.credentials_secret:
            password = (await self.ctx.secrets.get(self.spec.credentials_secret)).get("password")
        self.conn = aioredis.Redis.from_url(
            self.spec.url, password=password, decode_responses=False, socket_timeout=BLOCK_MS / 1000 + 10
        )
        await self.conn.ping()

    async def shards(self) -> list[str]:
        return [shard_id(0)]

    async def reader(self, shard: str) -> _Reader:
        saved = self.store.get(self.checkpoint_key)
        if saved is not None:
            return _Reader(self, shard, saved)
        assert self.conn is not None
        if self.stream.starting_position == "LATEST":
            after = "0-0"
            if await self.conn.exists(self.key):
                info: Any = await self.conn.xinfo_stream(self.key)
                last = info.get("last-generated-id") or info.get(b"last-generated-id") or b"0-0"
                after = last.decode() if isinstance(last, bytes) else str(last)
            # Remember where LATEST was, so a restart does not skip what arrived in between.
            self.store.set(self.checkpoint_key, after)
            return _Reader(self, shard, after)
        ts = self.stream.starting_position_timestamp
        return _Reader(
            self,
            shard,
            start_id(
                self.stream.starting_position,
                timestamp_ms=int(ts.timestamp() * 1000) if ts is not None else None,
            ),
        )

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.aclose()
            self.conn = None


class RedisStream(StreamBridge):
    """``spec.stream.redis``: a Redis stream key read with XREAD in order."""

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        return _RedisClient(ctx, self.store)


BRIDGE = RedisStream
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
