"""The per-shard loop with an in-memory shard and function (seams: the reader, the invoker, the status).

Brokers and the gateway are real in tests/integration/test_stream_bridges.py; here the loop's own rules are
pinned down where they are hard to provoke on a real system: parallelizationFactor lanes, throttling.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from kltest import wait_for
from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge._context import InvokeResult
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord, lane_of, shard_id
from kubelambda.bridge.streams._core import ShardWorker, StreamBridge, StreamSettings

SOURCE = SourceInfo(
    "kubelambda:test", "arn:kubelambda:test:us-east-1:ns:stream/s", "arn:aws:iam::ns:role/t", "us-east-1"
)


class MemoryShard:
    def __init__(self, records: list[StreamRecord]) -> None:
        self.shard = shard_id(0)
        self.records = records
        self.at = 0
        self.commits: list[str] = []

    async def read(self, max_records: int) -> list[StreamRecord]:
        chunk = self.records[self.at : self.at + max_records]
        self.at += len(chunk)
        if not chunk:
            await asyncio.sleep(0.01)
        return chunk

    async def commit(self, record: StreamRecord) -> None:
        self.commits.append(record.sequence)

    def lag(self) -> int | None:
        return len(self.records) - self.at


class Function:
    """Records each invocation's (partition key, number) pairs; answers 429 to the first ``throttle`` calls."""

    def __init__(self, *, throttle: int = 0) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.throttle = throttle

    async def invoke(self, payload: bytes, *, asynchronous: bool = False) -> InvokeResult:
        if self.throttle:
            self.throttle -= 1
            return InvokeResult(status=429, payload=b"", request_id="")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.005)
        records = json.loads(payload)["Records"]
        self.calls.append(
            [(r["kinesis"]["partitionKey"], int(base64.b64decode(r["kinesis"]["data"]))) for r in records]
        )
        self.in_flight -= 1
        return InvokeResult(status=200, payload=b"{}", request_id="r")


class Status:
    def source_reachable(self, reachable: bool, message: str = "") -> None: ...
    def delivered(self, count: int = 1) -> None: ...
    def set_lag(self, lag: int | None, *, iterator_age_seconds: float | None = None) -> None: ...


class Bridge(StreamBridge):
    def client_for(self, ctx: Any) -> Any:
        return SimpleNamespace(info=SOURCE)


def bridge(function: Function, **stream: Any) -> Bridge:
    trigger = Trigger.model_validate(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {"function": "fn", "stream": {"redis": {"url": "redis://x:1/0", "key": "s"}, **stream}},
        }
    )
    ctx = SimpleNamespace(
        trigger=trigger,
        namespace="ns",
        name="t",
        region="us-east-1",
        invoker=function,
        status=Status(),
        checkpoint=SimpleNamespace(name="t-checkpoint"),
        http=None,
    )
    return Bridge(ctx)  # type: ignore[arg-type]


def records(n: int, keys: int) -> list[StreamRecord]:
    return [
        StreamRecord(shard_id(0), str(i), f"k{i % keys}", str(i).encode(), 1.7e9, position=i)
        for i in range(n)
    ]


async def run_until_done(worker: ShardWorker, shard: MemoryShard, last: str) -> None:
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(2000):
            if shard.commits and shard.commits[-1] == last:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"not done; commits {shard.commits[-5:]}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def assert_each_once_in_order_per_key(function: Function, n: int) -> None:
    """Records 0..n-1 were each invoked once, and each partition key's in shard order."""
    seen = [pair for call in function.calls for pair in call]
    assert sorted(i for _, i in seen) == list(range(n))
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, i in seen:
        per_key[key].append(i)
    assert all(v == sorted(v) for v in per_key.values())


async def test_lanes_run_concurrently_keep_order_per_key_and_checkpoint_only_done_prefixes() -> None:
    function = Function()
    shard = MemoryShard(records(600, keys=10))
    delivered_at_commit: list[tuple[int, set[int]]] = []
    commit = shard.commit

    async def watched_commit(record: StreamRecord) -> None:
        delivered_at_commit.append((int(record.sequence), {i for call in function.calls for _, i in call}))
        await commit(record)

    shard.commit = watched_commit  # type: ignore[method-assign]
    b = bridge(function, batchSize=20, parallelizationFactor=3)
    await run_until_done(ShardWorker(b, shard), shard, "599")
    assert_each_once_in_order_per_key(function, 600)
    assert all(len(call) <= 20 for call in function.calls)
    assert function.max_in_flight > 1
    # A checkpoint never passes a record that is not done: every record up to it was delivered before it.
    assert delivered_at_commit
    for through, delivered in delivered_at_commit:
        assert set(range(through + 1)) <= delivered, through


async def test_a_slow_key_holds_only_its_lane() -> None:
    """Lambda's ParallelizationFactor: a lane takes its next batch when its previous one ended, not when every
    lane's did. The slow key's first batch is released only once another lane has been invoked with records
    read after a whole round (factor x batch size) — which a loop waiting for all lanes never does."""
    lanes, size = 3, 10
    slow_lane = lane_of("k0", lanes)
    release = asyncio.Event()
    events: list[tuple[str, str, list[int]]] = []

    class SlowKey(Function):
        async def invoke(self, payload: bytes, *, asynchronous: bool = False) -> InvokeResult:
            got = json.loads(payload)["Records"]
            keys = {r["kinesis"]["partitionKey"] for r in got}
            numbers = [int(base64.b64decode(r["kinesis"]["data"])) for r in got]
            slow = any(lane_of(k, lanes) == slow_lane for k in keys)
            events.append(("start", "slow" if slow else "other", numbers))
            if slow and not release.is_set():
                await release.wait()
            elif not slow and max(numbers) >= lanes * size:
                release.set()
            answer = await super().invoke(payload, asynchronous=asynchronous)
            events.append(("end", "slow" if slow else "other", numbers))
            return answer

    function = SlowKey()
    shard = MemoryShard(records(300, keys=10))
    b = bridge(function, batchSize=size, parallelizationFactor=lanes)
    await run_until_done(ShardWorker(b, shard), shard, "299")
    first_slow_end = events.index(next(e for e in events if e[:2] == ("end", "slow")))
    first_slow_start = events.index(next(e for e in events if e[:2] == ("start", "slow")))
    others_meanwhile = [e for e in events[first_slow_start:first_slow_end] if e[:2] == ("end", "other")]
    assert len(others_meanwhile) >= 2, events[: first_slow_end + 1]
    assert max(max(e[2]) for e in others_meanwhile) >= lanes * size
    assert_each_once_in_order_per_key(function, 300)


async def test_one_lane_is_one_batch_at_a_time_in_shard_order() -> None:
    function = Function()
    shard = MemoryShard(records(250, keys=7))
    await run_until_done(ShardWorker(bridge(function, batchSize=100), shard), shard, "249")
    assert function.max_in_flight == 1
    assert [i for call in function.calls for _, i in call] == list(range(250))
    assert [len(call) for call in function.calls][:2] == [100, 100]


async def test_throttles_are_retried_without_using_up_retries() -> None:
    function = Function(throttle=3)
    shard = MemoryShard(records(10, keys=1))
    b = bridge(function, batchSize=10, maximumRetryAttempts=0)
    await run_until_done(ShardWorker(b, shard), shard, "9")
    assert [i for call in function.calls for _, i in call] == list(range(10))


class SilentClient:
    """A source whose broker accepts connections and then, for the first few steps asked of it, never answers."""

    info = SOURCE

    def __init__(self, shard: MemoryShard, *, silent: set[str]) -> None:
        self.shard = shard
        self.silent = silent
        self.asked: list[str] = []

    async def _step(self, name: str) -> None:
        self.asked.append(name)
        if name in self.silent:
            self.silent.discard(name)
            await asyncio.Event().wait()

    async def start(self) -> None:
        await self._step("start")

    async def shards(self) -> list[str]:
        await self._step("shards")
        return [self.shard.shard]

    async def reader(self, shard: str) -> MemoryShard:
        await self._step("reader")
        return self.shard

    async def close(self) -> None:
        return None


class Reachability(Status):
    def __init__(self) -> None:
        self.said: list[tuple[bool, str]] = []

    def source_reachable(self, reachable: bool, message: str = "") -> None:
        self.said.append((reachable, message))


class MemoryCheckpoint:
    name = "t-checkpoint"

    async def load(self) -> dict[str, str]:
        return {}

    async def save(self, data: dict[str, str]) -> None:
        return None


async def test_a_broker_that_never_answers_connecting_or_opening_is_reported_and_retried() -> None:
    """Connecting, listing the shards and opening one are each bounded: a broker that took the connection and
    then says nothing is reported (SourceReachable False, saying which step) and asked again, instead of
    holding the bridge silently."""
    function = Function()
    shard = MemoryShard(records(5, keys=1))
    client = SilentClient(shard, silent={"start", "shards", "reader"})
    b = bridge(function, batchSize=5)
    b.client = client  # type: ignore[assignment]
    b.settings = StreamSettings(stream_connect_timeout_seconds=0.2)
    b.store.checkpoint = MemoryCheckpoint()  # type: ignore[assignment]
    status = Reachability()
    b.ctx.status = status  # type: ignore[misc]
    task = asyncio.create_task(b.run())
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=shard.commits or task.done()),
            bool,
            what="the records after three silent steps",
            timeout=15,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert shard.commits == ["4"]
    assert client.asked == ["start", "start", "shards", "shards", "reader", "shards", "reader"]
    assert status.said[:4] == [
        (False, "the broker did not finish connecting within 0.2 s"),
        (True, ""),
        (False, "listing shards: the broker did not answer within 0.2 s"),
        (False, f"opening {shard.shard}: the broker did not answer within 0.2 s"),
    ]
    assert status.said[-1] == (True, "")
