"""The per-shard loop every stream source shares; a source only says how to list shards, read and checkpoint.

One task per shard reads ahead into a small buffer (the next batch is fetched while the function runs) and
one task per shard processes: it gathers a batch (``batchSize`` records or ``maxBatchingWindowSeconds``),
invokes the function synchronously, applies :func:`kubelambda.bridge.streams._batch.plan`, and checkpoints
only what is done (succeeded, or discarded and reported to the on-failure destination). With
``parallelizationFactor`` N records go to N lanes by partition key; each lane gathers and invokes its own
batches, one at a time and in order, taking its next batch as soon as its previous one ended (a slow key holds
only its lane), and the shard is checkpointed at the end of the contiguous prefix of done records.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubelambda import metrics, tracing
from kubelambda.aiotasks import run_together
from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge._context import BridgeContext, Checkpoint, within
from kubelambda.bridge.streams._batch import (
    RECORD_AGE_EXCEEDED,
    EventEncoder,
    FailureInfo,
    Outcome,
    Piece,
    Policy,
    SourceInfo,
    StreamRecord,
    classify,
    cut,
    dumps,
    expired_prefix,
    failure_record,
    lane_of,
    plan,
)
from kubelambda.destinations import Senders
from kubelambda.natspolicy import subject_refusal

log = logging.getLogger("kubelambda.bridge.streams")
T = TypeVar("T")
_BATCHES = {
    outcome: metrics.BRIDGE_BATCHES.labels(
        outcome.value if outcome in (Outcome.SUCCESS, Outcome.PARTIAL) else "failure"
    )
    for outcome in Outcome
}
"""``kubelambda_bridge_batches_total`` by a batch's outcome (success, partial, or failure), looked up once as the
queue bridges' are (``labels`` takes a lock and builds a key per call)."""
RECONNECT_MAX_SECONDS = 30.0
SHARD_RELIST_SECONDS = 30.0
READ_AHEAD_CHUNKS = 4
MIN_READ_RECORDS = 1000
"""Records asked of the broker per read, at least: a few large reads cost far less than many small ones
(a Kinesis GetRecords call, a Redis XREAD); the read-ahead buffer holds at most ``READ_AHEAD_CHUNKS`` reads."""
MAX_READ_RECORDS = 10000
DESTINATION_ATTEMPTS = 8
STOP_STEP_SECONDS = 10.0
LANE_AHEAD_BATCHES = 2
"""With lanes, records taken from the read-ahead buffer and not yet done are at most this many batches per lane
(plus one read): a lane stuck on a slow key lets the others run ahead this far, not without bound."""


class StreamSettings(BaseSettings):
    """Settings only the stream bridges read (environment ``KUBELAMBDA_BRIDGE_*``, like the framework's)."""

    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_BRIDGE_", extra="ignore", frozen=True)

    nats_url: str | None = Field(default=None, pattern=r"^nats://[^\s]+$")
    """The platform's NATS, for ``onFailure.nats`` destinations (default: none; a NATS stream source
    publishes on its own server instead)."""
    checkpoint_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    """Checkpoints are written at most this often (default 0.2 s): the ConfigMap, and Kafka's offset commits (every
    partition's in one request); a crash replays at most the records processed since the last write."""
    stream_connect_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest connecting to the broker may take, and each later step of opening the stream (listing its
    shards, opening one at its checkpoint) (default 30 s): a broker that accepts the connection and then does
    not answer is reported (``SourceReachable`` False) and retried, instead of holding the bridge silently."""


class ShardReader(Protocol):
    """Reads one shard in order, starting after its checkpoint (or at the starting position)."""

    shard: str

    async def read(self, max_records: int) -> list[StreamRecord]:
        """The next records; waits at most about a second and returns ``[]`` when there are none."""
        ...

    async def commit(self, record: StreamRecord) -> None:
        """Checkpoints through ``record`` (it and everything before it are done)."""
        ...

    def lag(self) -> int | None:
        """Records in the shard after the last one read, when the source can tell."""
        ...


class StreamClient(Protocol):
    info: SourceInfo

    async def start(self) -> None:
        """Connects (raises on failure; the caller retries with backoff)."""
        ...

    async def shards(self) -> list[str]: ...

    async def reader(self, shard: str) -> ShardReader: ...

    async def close(self) -> None: ...


class CheckpointStore:
    """The Trigger's checkpoint ConfigMap as a key/value map, written in the background at most every
    ``interval`` seconds (and on stop), so that shards do not each write one ConfigMap per batch."""

    def __init__(self, checkpoint: Checkpoint, *, interval: float) -> None:
        self.checkpoint = checkpoint
        self.interval = interval
        self.data: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._saved: dict[str, str] = {}

    async def load(self) -> dict[str, str]:
        self.data = await self.checkpoint.load()
        self._saved = dict(self.data)
        return dict(self.data)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value
        self._dirty.set()

    async def flush(self) -> None:
        self._dirty.clear()
        snapshot = dict(self.data)
        if snapshot != self._saved:
            await self.checkpoint.save(snapshot)
            self._saved = snapshot

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.flush()
            except Exception as e:  # the API server may be briefly away: keep the data, try again
                log.warning("Could not save the checkpoint %s: %s", self.checkpoint.name, e)
                self._dirty.set()
            await asyncio.sleep(self.interval)


def config_key(text: str) -> str:
    """A ConfigMap key (``[-._a-zA-Z0-9]+``, ≤ 253) standing for ``text``."""
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in text)
    if safe == text and len(safe) <= 200:
        return safe
    return f"{safe[:180]}.{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class FailureDestination:
    """Sends on-failure records to the Trigger's ``onFailure``: a Function (Event invoke through the gateway,
    with an idempotency key so a re-sent record is queued once), a NATS subject, or an HTTP endpoint."""

    def __init__(
        self,
        ctx: BridgeContext,
        *,
        nats_url: str | None,
        nats_publish: Any = None,
    ) -> None:
        self.ctx = ctx
        self.dest = ctx.trigger.spec.stream.on_failure if ctx.trigger.spec.stream else None
        self.nats_url = nats_url
        self._nats_publish = nats_publish
        self._nc: Any = None
        self._senders: Senders | None = None
        if self.dest is not None and self.dest.nats and not (nats_url or nats_publish):
            raise ValueError(
                "onFailure.nats needs the platform's NATS: set KUBELAMBDA_BRIDGE_NATS_URL for the bridge"
            )

    @property
    def configured(self) -> bool:
        return self.dest is not None

    async def send(self, record: Mapping[str, Any], *, key: str) -> bool:
        """Delivers ``record``; retries with backoff a bounded number of times; False when it gave up."""
        if self.dest is None:
            return True
        body = dumps(dict(record))
        refused = subject_refusal(self.dest.nats) if self.dest.nats else None
        if refused is not None:
            # Never the server's APIs ($JS., $SYS., ...) nor kubelambda's own subjects: no retry changes that.
            log.error(
                "Refused the on-failure destination of Trigger %s/%s: %s",
                self.ctx.namespace,
                self.ctx.name,
                refused,
            )
            return False
        delay = 0.2
        for attempt in range(1, DESTINATION_ATTEMPTS + 1):
            try:
                if await self._send_once(body, key=key):
                    return True
            except Exception as e:
                log.warning("Could not send an on-failure record of Trigger %s: %s", self.ctx.name, e)
            if attempt < DESTINATION_ATTEMPTS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.error(
            "Gave up sending an on-failure record of Trigger %s/%s after %d attempts: %s",
            self.ctx.namespace,
            self.ctx.name,
            DESTINATION_ATTEMPTS,
            body[:2000].decode(errors="replace"),
        )
        return False

    async def _send_once(self, body: bytes, *, key: str) -> bool:
        dest = self.dest
        assert dest is not None
        if dest.function:
            base = self.ctx.invoker.url.split("/2015-03-31/", 1)[0]
            path = urllib.parse.quote(f"{self.ctx.namespace}/{dest.function}", safe="/")
            headers = {
                "Content-Type": "application/json",
                "X-Amz-Invocation-Type": "Event",
                "X-Kubelambda-Idempotency-Key": key,
            }
            # As the bridge's own invocations: its ServiceAccount's token (a gateway with auth refuses the rest).
            bearer = self.ctx.invoker.token() if self.ctx.invoker.token is not None else None
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            async with self.ctx.http.post(
                f"{base}/2015-03-31/functions/{path}/invocations",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                said = await resp.read()
                if resp.status != 202:
                    log.warning(
                        "The on-failure Function %s of Trigger %s answered %d: %s",
                        dest.function,
                        self.ctx.name,
                        resp.status,
                        said[:300].decode(errors="replace"),
                    )
                return resp.status == 202
        if dest.url:
            async with self.ctx.http.post(
                dest.url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        target = dest.queue or dest.topic
        if target is not None:
            if target.nats is not None and target.nats.url is None and self.nats_url:
                # No URL: the platform's NATS, as for onFailure.nats.
                target = target.model_copy(
                    update={"nats": target.nats.model_copy(update={"url": self.nats_url})}
                )
            if self._senders is None:
                self._senders = Senders(secrets=self.ctx.secrets.get)
            record = json.loads(body)
            await self._senders.send(target, body, key=key, subject=record["requestContext"]["condition"])
            return True
        if dest.nats:
            if self._nats_publish is not None:
                await self._nats_publish(dest.nats, body)
                return True
            import nats

            if self._nc is None:
                assert self.nats_url is not None
                self._nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1)
            await self._nc.publish(dest.nats, body)
            await self._nc.flush(timeout=5)
            return True
        return True

    async def close(self) -> None:
        if self._senders is not None:
            await self._senders.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


def policy_of(trigger: Trigger) -> Policy:
    stream = trigger.spec.stream
    assert stream is not None
    return Policy(
        maximum_retry_attempts=stream.maximum_retry_attempts,
        maximum_record_age_seconds=stream.maximum_record_age_seconds,
        bisect_batch_on_function_error=stream.bisect_batch_on_function_error,
        report_batch_item_failures=stream.report_batch_item_failures,
    )


class ShardWorker:
    """Reads and processes one shard until cancelled."""

    def __init__(self, bridge: StreamBridge, reader: ShardReader) -> None:
        self.bridge = bridge
        self.ctx = bridge.ctx
        self.reader = reader
        stream = bridge.stream
        self.batch_size = stream.batch_size
        self.window = float(stream.max_batching_window_seconds)
        self.lanes = stream.parallelization_factor
        self.policy = bridge.policy
        self.read_size = min(MAX_READ_RECORDS, max(self.batch_size * self.lanes, MIN_READ_RECORDS))
        self.buffer: asyncio.Queue[list[StreamRecord]] = asyncio.Queue(maxsize=READ_AHEAD_CHUNKS)
        self.pending: deque[StreamRecord] = deque()
        self.to_commit: StreamRecord | None = None
        self.committed: StreamRecord | None = None
        self.commit_wanted = asyncio.Event()
        self.busy = False

    async def run(self) -> None:
        reading = asyncio.create_task(self._read_ahead(), name=f"read {self.reader.shard}")
        committing = asyncio.create_task(self._committer(), name=f"commit {self.reader.shard}")
        try:
            if self.lanes == 1:
                await self._one_lane()
            else:
                await Lanes(self).run()
        finally:
            for task in (reading, committing):
                task.cancel()
            # Bounded: a client library that does not give up a read promptly must not hold the stop up.
            await asyncio.wait({reading, committing}, timeout=STOP_STEP_SECONDS)
            # A clean stop checkpoints what is done (a crash replays it: at-least-once).
            last = self.to_commit
            if last is not None and last is not self.committed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.reader.commit(last), 5)

    async def _one_lane(self) -> None:
        while True:
            chunk = await self._gather(self.batch_size)
            self.busy = True
            await self._lane(chunk, done=self._commit_through)
            self.batch_ended(chunk)
            self.busy = False

    def batch_ended(self, batch: Sequence[StreamRecord]) -> None:
        self.bridge.iterator_ages[self.reader.shard] = max(0.0, time.time() - batch[-1].arrival)
        self.bridge.report_lag()

    async def _commit_through(self, records: Sequence[StreamRecord]) -> None:
        await self._commit(records[-1])

    async def _read_ahead(self) -> None:
        delay = 0.5
        while True:
            try:
                records = await self.reader.read(self.read_size)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.status.source_reachable(False, f"reading {self.reader.shard}: {e}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            delay = 0.5
            self.ctx.status.source_reachable(True)
            if records:
                metrics.BRIDGE_RECORDS_RECEIVED.inc(len(records))
                await self.buffer.put(records)
            elif not self.busy and self.buffer.empty() and not self.pending:
                # Caught up and idle: nothing is waiting, so no record is getting older (Lambda's IteratorAge 0).
                self.bridge.iterator_ages[self.reader.shard] = 0.0
            self.bridge.lags[self.reader.shard] = self.reader.lag()
            self.bridge.report_lag()

    async def _gather(self, n: int) -> list[StreamRecord]:
        """Up to ``n`` records: waits for the first, then for more until the batching window closes."""
        while not self.pending:
            self.pending.extend(await self.buffer.get())
        deadline = time.monotonic() + self.window
        while len(self.pending) < n:
            try:
                self.pending.extend(self.buffer.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.pending.extend(await asyncio.wait_for(self.buffer.get(), remaining))
            except TimeoutError:
                break
        return [self.pending.popleft() for _ in range(min(n, len(self.pending)))]

    async def _commit(self, record: StreamRecord) -> None:
        """Marks ``record`` (and everything before it in the shard) done; the committer checkpoints it.

        Processing does not wait for the broker's commit round trip: the next batch is invoked meanwhile and
        the committer writes the latest done record when the previous write returns (later records supersede
        earlier ones). Nothing is ever checkpointed before its batch is done.
        """
        self.to_commit = record
        self.commit_wanted.set()

    async def _committer(self) -> None:
        while True:
            await self.commit_wanted.wait()
            self.commit_wanted.clear()
            record = self.to_commit
            if record is not None and record is not self.committed:
                await self._commit_now(record)
                self.committed = record

    async def _commit_now(self, record: StreamRecord) -> None:
        delay = 0.2
        while True:
            try:
                await self.reader.commit(record)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("Could not checkpoint %s at %s: %s", record.shard, record.sequence, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _lane(
        self,
        records: Sequence[StreamRecord],
        *,
        done: Callable[[Sequence[StreamRecord]], Awaitable[None]],
    ) -> None:
        """Invokes ``records`` (one lane's, in order) in batches; ``done`` gets each run of records that is done
        (succeeded or discarded), in order."""
        queue: deque[Piece] = deque()
        rest = list(records)
        while rest:
            k = cut(rest, batch_size=self.batch_size)
            queue.append(Piece(tuple(rest[:k])))
            rest = rest[k:]
        last_info = FailureInfo()
        while queue:
            piece = queue.popleft()
            expired = expired_prefix(
                piece.records,
                maximum_record_age_seconds=self.policy.maximum_record_age_seconds,
                now=time.time(),
            )
            if expired:
                await self._discard(piece.records[:expired], reason=RECORD_AGE_EXCEEDED, info=last_info)
                await done(piece.records[:expired])
                if expired == len(piece.records):
                    continue
                piece = Piece(piece.records[expired:], piece.attempts, piece.throttles, piece.first_failure)
            batch = piece.records
            metrics.BRIDGE_BATCH_SIZE.observe(len(batch))
            with tracing.span(f"batch {self.ctx.name}", kind=tracing.SpanKind.CONSUMER) as span:
                tracing.set_attributes(
                    span,
                    {
                        "messaging.batch.message_count": len(batch),
                        "messaging.destination.partition.id": batch[0].shard,
                        "kubelambda.trigger": self.ctx.name,
                    },
                )
                answer = await self.ctx.invoker.invoke(self.bridge.encode(batch))
            reported = self.policy.report_batch_item_failures  # only then is the response read
            result = classify(
                status=answer.status,
                function_error=answer.function_error,
                response=answer.json()
                if reported and answer.status == 200 and answer.function_error is None
                else None,
                batch=batch,
                report_batch_item_failures=reported,
            )
            _BATCHES[result.outcome].inc()
            if result.failed_count:
                metrics.BRIDGE_FAILURES.inc(result.failed_count)
            if result.outcome in (Outcome.FUNCTION_ERROR, Outcome.PARTIAL):
                last_info = FailureInfo(
                    request_id=answer.request_id,
                    status=answer.status,
                    function_error=answer.function_error,
                    invoke_count=piece.attempts + 1,
                )
                log.info(
                    "Batch %s..%s of %s failed (%s, attempt %d)",
                    batch[0].sequence,
                    batch[-1].sequence,
                    batch[0].shard,
                    result.outcome.value,
                    piece.attempts + 1,
                )
            decision = plan(piece, result, self.policy, now=time.time())
            if decision.done:
                self.ctx.status.delivered(decision.done)
                await done(batch[: decision.done])
            if decision.discard:
                discarded = batch[decision.done : decision.done + decision.discard]
                await self._discard(discarded, reason=decision.reason, info=last_info)
                await done(discarded)
            queue.extendleft(reversed(decision.retry))
            if decision.delay:
                await asyncio.sleep(decision.delay)

    async def _discard(self, records: Sequence[StreamRecord], *, reason: str, info: FailureInfo) -> None:
        metrics.BRIDGE_DISCARDED.labels(reason).inc(len(records))
        log.warning(
            "Discarded %d record(s) %s..%s of %s (%s)",
            len(records),
            records[0].sequence,
            records[-1].sequence,
            records[0].shard,
            reason,
        )
        record = failure_record(
            records,
            condition=reason,
            function_arn=self.bridge.function_arn,
            stream_arn=self.bridge.client.info.event_source_arn,
            info=info,
            timestamp=utcnow_millis(),
            batch_info_key=self.bridge.client.info.batch_info_key,
        )
        key = hashlib.sha256(
            f"{self.ctx.namespace}/{self.ctx.name}/{records[0].shard}/{records[0].sequence}/{records[-1].sequence}".encode()
        ).hexdigest()[:32]
        await self.bridge.destination.send(record, key=key)


class Lanes:
    """``parallelizationFactor`` N of one shard: records are dealt to N lanes by partition key as they are read;
    each lane runs its own batches one at a time, in shard order, and takes its next batch as soon as the
    previous one ended. The shard's checkpoint advances to the end of the contiguous prefix of done records (as
    Lambda's: records after an unfinished one are replayed after a crash, at-least-once)."""

    def __init__(self, worker: ShardWorker) -> None:
        self.worker = worker
        self.n = worker.lanes
        self.queues: list[deque[StreamRecord]] = [deque() for _ in range(self.n)]
        self.arrived = [asyncio.Event() for _ in range(self.n)]
        self.undone: deque[StreamRecord] = deque()
        """Records dealt to a lane and not yet known done, in shard order (the head is the oldest)."""
        self.done_ids: set[int] = set()
        self.room = asyncio.Event()
        self.limit = worker.batch_size * self.n * LANE_AHEAD_BATCHES

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._deal(), name=f"deal {self.worker.reader.shard}")]
        tasks += [
            asyncio.create_task(self._run_lane(i), name=f"lane {i} {self.worker.reader.shard}")
            for i in range(self.n)
        ]
        # A lane that fails stops the shard (as the one-lane loop's exception does).
        await run_together(tasks)

    async def _deal(self) -> None:
        worker = self.worker
        while True:
            while len(self.undone) >= self.limit:
                self.room.clear()
                await self.room.wait()
            records = await worker.buffer.get()
            worker.busy = True
            self.undone.extend(records)
            for record in records:
                lane = lane_of(record.partition_key, self.n)
                self.queues[lane].append(record)
                self.arrived[lane].set()

    async def _gather(self, lane: int) -> list[StreamRecord]:
        """Up to a batch of the lane's records: waits for the first, then for more until the window closes."""
        queue, arrived = self.queues[lane], self.arrived[lane]
        while not queue:
            arrived.clear()
            await arrived.wait()
        size = self.worker.batch_size
        deadline = time.monotonic() + self.worker.window
        while len(queue) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except TimeoutError:
                break
        return [queue.popleft() for _ in range(min(size, len(queue)))]

    async def _run_lane(self, lane: int) -> None:
        while True:
            batch = await self._gather(lane)
            await self.worker._lane(batch, done=self._done)
            self.worker.batch_ended(batch)

    async def _done(self, records: Sequence[StreamRecord]) -> None:
        self.done_ids.update(id(record) for record in records)
        last = None
        undone = self.undone
        while undone and id(undone[0]) in self.done_ids:
            last = undone.popleft()
            self.done_ids.discard(id(last))
        if last is not None:
            await self.worker._commit(last)
            self.room.set()
            if not undone:
                self.worker.busy = False


def utcnow_millis() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class StreamBridge:
    """Base of the four stream sources: subclasses build their :class:`StreamClient` in ``client_for``."""

    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx
        stream = ctx.trigger.spec.stream
        if stream is None:
            raise ValueError(f"Trigger {ctx.namespace}/{ctx.name} has no stream block")
        self.stream = stream
        self.policy = policy_of(ctx.trigger)
        self.settings = StreamSettings()
        self.store = CheckpointStore(ctx.checkpoint, interval=self.settings.checkpoint_interval_seconds)
        self.function_arn = (
            f"arn:aws:lambda:{ctx.region}:{ctx.namespace}:function:{ctx.trigger.spec.function}"
        )
        self.client = self.client_for(ctx)
        self.encoder = EventEncoder(self.client.info)
        self.destination = FailureDestination(
            ctx, nats_url=self.settings.nats_url, nats_publish=self.nats_publish()
        )
        self.iterator_ages: dict[str, float] = {}
        self.lags: dict[str, int | None] = {}

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        raise NotImplementedError

    def encode(self, batch: Sequence[StreamRecord]) -> bytes:
        """The event of one batch, as the function receives it (Kinesis's shape unless a source says otherwise)."""
        return self.encoder.encode(batch)

    def nats_publish(self) -> Any:
        """A publisher on the source's own NATS connection (NATS sources), used when no platform URL is set."""
        return None

    def routes(self) -> list[web.RouteDef]:
        return []

    def report_lag(self) -> None:
        lags = [v for v in self.lags.values() if v is not None]
        ages = list(self.iterator_ages.values())
        self.ctx.status.set_lag(sum(lags) if lags else None, iterator_age_seconds=max(ages) if ages else None)

    connect_bounded = True
    """Connecting and opening shards are bounded by ``stream_connect_timeout_seconds``; a source whose client
    bounds its own connects and whose start cannot be abandoned half-way says False."""

    def _bounded(self, step: Awaitable[T], what: str) -> Awaitable[T]:
        if not self.connect_bounded:
            return step
        return within(step, self.settings.stream_connect_timeout_seconds, what)

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._bounded(self.client.start(), "the broker did not finish connecting")
                self.ctx.status.source_reachable(True)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                message = str(e) or type(e).__name__
                self.ctx.status.source_reachable(False, message)
                log.warning(
                    "Could not connect to the stream of Trigger %s/%s (%s); again in %.1f s",
                    self.ctx.namespace,
                    self.ctx.name,
                    message,
                    delay,
                )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.close(), STOP_STEP_SECONDS)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def run(self) -> None:
        if not self.ctx.trigger.spec.enabled:
            log.info("Trigger %s/%s is disabled; not reading", self.ctx.namespace, self.ctx.name)
            await asyncio.Event().wait()
        await self.store.load()
        saver = asyncio.create_task(self.store.run(), name="checkpoint")
        workers: dict[str, asyncio.Task[None]] = {}
        try:
            # Inside: a bridge stopped while connecting still stops its checkpoint writer and closes its client.
            await self._connect()
            while True:
                try:
                    shards = await self._bounded(self.client.shards(), "the broker did not answer")
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.ctx.status.source_reachable(False, f"listing shards: {e}")
                    shards = []
                missing = False
                for shard in shards:
                    if shard in workers:
                        continue
                    try:
                        reader = await self._bounded(self.client.reader(shard), "the broker did not answer")
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # e.g. Kafka's group coordinator not elected yet
                        self.ctx.status.source_reachable(False, f"opening {shard}: {e}")
                        missing = True
                        continue
                    workers[shard] = asyncio.create_task(ShardWorker(self, reader).run(), name=shard)
                    log.info("Reading %s of Trigger %s/%s", shard, self.ctx.namespace, self.ctx.name)
                if not workers:
                    # The stream does not exist yet, or no shard could be opened: look again soon.
                    await asyncio.sleep(1.0)
                    continue
                done, _ = await asyncio.wait(
                    workers.values(), timeout=1.0 if missing or not shards else SHARD_RELIST_SECONDS
                )
                for task in done:
                    task.result()
        finally:
            for task in workers.values():
                task.cancel()
            if workers:
                await asyncio.wait(workers.values(), timeout=2 * STOP_STEP_SECONDS)
            saver.cancel()
            await asyncio.wait({saver}, timeout=STOP_STEP_SECONDS)
            # Each step bounded: stopping must finish even when the API server or the broker does not answer.
            for step in (self.store.flush(), self.destination.close(), self.client.close()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(step, STOP_STEP_SECONDS)


__all__ = ["CheckpointStore", "ShardReader", "StreamBridge", "StreamClient", "config_key"]
