"""The queue bridges' shared loop (kubelambda.bridge.queues._core) against an in-memory broker and a scripted
invoker: batching, acknowledgement after success, partial failures, throttles held without a delivery attempt,
reconnection with SourceReachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from kltest import wait_for
from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge._context import InvokeResult
from kubelambda.bridge.queues._batch import Message
from kubelambda.bridge.queues._core import QueueConsumer, QueueSettings

FAST = QueueSettings(
    backoff_min_seconds=0.01, backoff_max_seconds=0.02, poll_seconds=0.05, lag_interval_seconds=0.05
)


class MemoryBroker:
    """A queue in memory: messages become visible again when returned, with their receive count."""

    event_source = "kubelambda:memory"
    event_source_arn = "arn:kubelambda:memory:us-east-1:ns:q"
    lease_renew_seconds: float | None = None

    def __init__(self, bodies: list[str], *, fail_fetches: int = 0, silent_connects: int = 0) -> None:
        self.ready = [Message(message_id=str(i), body=b.encode()) for i, b in enumerate(bodies)]
        self.acked: list[str] = []
        self.retried: list[str] = []
        self.held: list[list[str]] = []
        self.connects = 0
        self.fail_fetches = fail_fetches
        self.silent_connects = silent_connects

    async def connect(self) -> None:
        self.connects += 1
        if self.silent_connects:  # a broker that took the connection and never answers
            self.silent_connects -= 1
            await asyncio.Event().wait()

    async def close(self) -> None:
        return None

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        if self.fail_fetches:
            self.fail_fetches -= 1
            raise ConnectionError("broker down")
        if not self.ready:
            await asyncio.sleep(min(wait_seconds, 0.01))
            return []
        got, self.ready = self.ready[:max_count], self.ready[max_count:]
        return [Message(message_id=m.message_id, body=m.body, receive_count=m.receive_count) for m in got]

    async def ack(self, messages: Sequence[Message]) -> None:
        self.acked += [m.message_id for m in messages]

    async def retry(self, messages: Sequence[Message]) -> None:
        self.retried += [m.message_id for m in messages]
        self.ready += [
            Message(message_id=m.message_id, body=m.body, receive_count=m.receive_count + 1) for m in messages
        ]

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        self.held.append([m.message_id for m in messages])

    async def depth(self) -> int | None:
        return len(self.ready)


class Invoker:
    """Answers each invocation with ``answer(records)``; keeps every payload."""

    def __init__(self, answer: Callable[[list[dict[str, Any]]], InvokeResult]) -> None:
        self.answer = answer
        self.payloads: list[list[dict[str, Any]]] = []

    async def invoke(self, payload: bytes, *, asynchronous: bool = False) -> InvokeResult:
        records = json.loads(payload)["Records"]  # the event as the gateway gets it
        self.payloads.append(records)
        return self.answer(records)


class Status:
    def __init__(self) -> None:
        self.reachable: list[tuple[bool, str]] = []
        self.delivered_count = 0
        self.lag: int | None = None

    def source_reachable(self, reachable: bool, message: str = "") -> None:
        self.reachable.append((reachable, message))

    def delivered(self, count: int = 1) -> None:
        self.delivered_count += count

    def set_lag(self, lag: int | None, *, iterator_age_seconds: float | None = None) -> None:
        self.lag = lag


class Ctx:
    def __init__(self, invoker: Invoker, **queue: Any) -> None:
        self.trigger = Trigger.model_validate(
            {
                "spec": {
                    "function": "f",
                    "queue": {"redis": {"url": "redis://x:6379/0", "key": "k"}, **queue},
                }
            }
        )
        self.invoker = invoker
        self.status = Status()
        self.region = "us-east-1"
        self.namespace = "ns"
        self.name = "t"
        self.bridge_id = "ns/t/1"


def ok(_: list[dict[str, Any]]) -> InvokeResult:
    return InvokeResult(status=200, payload=b"{}", request_id="r")


async def consume_until(
    ctx: Ctx, broker: MemoryBroker, done: Callable[[], bool], what: str, settings: QueueSettings = FAST
) -> None:
    consumer = QueueConsumer(ctx, broker, settings=settings)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: asyncio.sleep(0, result=done() or task.done()), bool, what=what, timeout=10)
        if task.done():
            task.result()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("count", "batch_size", "sizes"),
    [(25, 10, [10, 10, 5]), (3, 10, [3]), (10, 1, [1] * 10)],
    ids=["two-full-one-short", "one-short", "batch-of-one"],
)
async def test_batches_are_cut_at_batch_size(count: int, batch_size: int, sizes: list[int]) -> None:
    invoker = Invoker(ok)
    ctx = Ctx(invoker, batchSize=batch_size)
    broker = MemoryBroker([f"m{i}" for i in range(count)])
    await consume_until(ctx, broker, lambda: len(broker.acked) == count, "every message acknowledged")
    assert sorted(len(p) for p in invoker.payloads) == sorted(sizes)
    assert sorted(broker.acked, key=int) == [str(i) for i in range(count)]
    assert ctx.status.delivered_count == count
    assert broker.retried == []


async def test_one_fetch_reads_for_every_free_slot() -> None:
    """maxConcurrency 4, all free: the first fetch asks for four batches (one broker round trip), and the three
    carried batches go to the other slots as they are; each batch is still at most batchSize."""

    class Counting(MemoryBroker):
        def __init__(self, bodies: list[str]) -> None:
            super().__init__(bodies)
            self.asked: list[tuple[int, int]] = []  # (asked for, got)

        async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
            got = await super().fetch(max_count, wait_seconds=wait_seconds)
            self.asked.append((max_count, len(got)))
            return got

    invoker = Invoker(ok)
    ctx = Ctx(invoker, batchSize=10, maxConcurrency=4)
    broker = Counting([f"m{i}" for i in range(40)])
    await consume_until(ctx, broker, lambda: len(broker.acked) == 40, "every message acknowledged")
    assert broker.asked[0] == (40, 40)
    assert [got for _, got in broker.asked if got] == [40]
    assert sorted(len(p) for p in invoker.payloads) == [10, 10, 10, 10]
    assert sorted(broker.acked, key=int) == [str(i) for i in range(40)]


class Gated(Invoker):
    """Invocations wait for ``gate``; ``started`` records the first message id of each as it starts."""

    def __init__(self) -> None:
        super().__init__(ok)
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def invoke(self, payload: bytes, *, asynchronous: bool = False) -> InvokeResult:
        self.started.append(json.loads(payload)["Records"][0]["messageId"])
        await self.gate.wait()
        return await super().invoke(payload, asynchronous=asynchronous)


@pytest.mark.parametrize(
    ("lease_renew_seconds", "count", "read_ahead"),
    [(0.02, 10, ["6", "7"]), (None, 8, [])],
    ids=["lease-renewed", "lease-lapses-by-itself"],
)
async def test_the_next_batches_are_fetched_while_the_slots_are_busy_and_kept_ours(
    lease_renew_seconds: float | None, count: int, read_ahead: list[str]
) -> None:
    """maxConcurrency 2 (the least). A broker whose lease is renewed (Redis, NATS): while both slots' invocations
    run, the next batches for both slots are fetched in one round trip (their leases renewed meanwhile, like a
    running batch's), and invoked as slots free, in order. A broker whose lease lapses by itself (SQS: the queue's
    visibility timeout): only the next batch is fetched, none is read ahead to wait behind it."""
    invoker = Gated()
    ctx = Ctx(invoker, batchSize=2, maxConcurrency=2)
    broker = MemoryBroker([f"m{i}" for i in range(count)])
    broker.lease_renew_seconds = lease_renew_seconds
    consumer = QueueConsumer(ctx, broker, settings=FAST)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=len(broker.ready)),
            lambda n: n == 2,
            what="the next batches fetched while both slots are busy",
        )
        assert invoker.started == ["0", "2"]
        assert [m.message_id for m in consumer._carry] == read_ahead
        if lease_renew_seconds is not None:
            await wait_for(
                lambda: asyncio.sleep(0, result=broker.held),
                lambda h: ["4", "5", *read_ahead] in h,
                what="the waiting batch and the one read ahead held",
            )
        invoker.gate.set()
        await wait_for(
            lambda: asyncio.sleep(0, result=len(broker.acked)), lambda n: n == count, what="all acked"
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert invoker.started == [str(i) for i in range(0, count, 2)]
    assert broker.retried == []


async def test_the_slot_is_free_for_the_next_invocation_while_the_last_is_acknowledged() -> None:
    """maxConcurrency 2 and acknowledgements that take long: the next batches' invocations do not wait for
    them, and every message is still acknowledged once."""

    class SlowAck(MemoryBroker):
        def __init__(self, bodies: list[str]) -> None:
            super().__init__(bodies)
            self.release = asyncio.Event()

        async def ack(self, messages: Sequence[Message]) -> None:
            await self.release.wait()
            await super().ack(messages)

    invoker = Invoker(ok)
    ctx = Ctx(invoker, batchSize=1, maxConcurrency=2)
    broker = SlowAck(["a", "b", "c", "d"])
    consumer = QueueConsumer(ctx, broker, settings=FAST)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=len(invoker.payloads)), lambda n: n == 4, what="four invocations"
        )
        assert broker.acked == []
        broker.release.set()
        await wait_for(lambda: asyncio.sleep(0, result=len(broker.acked)), lambda n: n == 4, what="all acked")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(broker.acked) == ["0", "1", "2", "3"]
    assert ctx.status.delivered_count == 4


async def test_partial_failures_return_only_the_named_messages() -> None:
    def answer(records: list[dict[str, Any]]) -> InvokeResult:
        failed = [
            {"itemIdentifier": r["messageId"]}
            for r in records
            if r["body"] == "bad" and r["attributes"]["ApproximateReceiveCount"] == "1"
        ]
        return InvokeResult(
            status=200, payload=json.dumps({"batchItemFailures": failed}).encode(), request_id="r"
        )

    invoker = Invoker(answer)
    ctx = Ctx(invoker, batchSize=10)
    broker = MemoryBroker(["good", "bad", "good"])
    await consume_until(ctx, broker, lambda: len(broker.acked) == 3, "all three acknowledged")
    assert broker.retried == ["1"]
    assert broker.acked == ["0", "2", "1"]
    second = invoker.payloads[1]
    assert [(r["messageId"], r["attributes"]["ApproximateReceiveCount"]) for r in second] == [("1", "2")]


async def test_a_function_error_returns_the_whole_batch() -> None:
    calls = 0

    def answer(_: list[dict[str, Any]]) -> InvokeResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            return InvokeResult(
                status=200, payload=b'{"errorMessage": "boom"}', request_id="r", function_error="Unhandled"
            )
        return InvokeResult(status=200, payload=b"null", request_id="r")

    invoker = Invoker(answer)
    ctx = Ctx(invoker, batchSize=10, reportBatchItemFailures=False)
    broker = MemoryBroker(["a", "b"])
    await consume_until(ctx, broker, lambda: len(broker.acked) == 2, "both acknowledged on the second try")
    assert broker.retried == ["0", "1"]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in invoker.payloads[1]] == ["2", "2"]


@pytest.mark.parametrize("status", [429, 502, 0], ids=["throttled", "bad-gateway", "unreachable"])
async def test_throttles_hold_the_batch_without_using_a_delivery(status: int) -> None:
    calls = 0

    def answer(_: list[dict[str, Any]]) -> InvokeResult:
        nonlocal calls
        calls += 1
        if calls <= 3:
            return InvokeResult(status=status, payload=b"", request_id="")
        return InvokeResult(status=200, payload=b"{}", request_id="r")

    invoker = Invoker(answer)
    ctx = Ctx(invoker, batchSize=10)
    broker = MemoryBroker(["a", "b"])
    await consume_until(ctx, broker, lambda: len(broker.acked) == 2, "acknowledged after the throttles")
    assert broker.retried == []
    # One hold per back-off for a broker whose hold lasts as long as asked (a broker with a lease of its own is
    # renewed all through the back-off: test_queue_bridges' throttle test, on real brokers).
    assert broker.held == [["0", "1"]] * 3
    assert len(invoker.payloads) == 4
    # The same records each time: the receive count never moved.
    assert all(p == invoker.payloads[0] for p in invoker.payloads)
    assert invoker.payloads[0][0]["attributes"]["ApproximateReceiveCount"] == "1"


async def test_an_unreachable_broker_is_reported_and_reconnected() -> None:
    invoker = Invoker(ok)
    ctx = Ctx(invoker, batchSize=10)
    broker = MemoryBroker(["a"], fail_fetches=2)
    await consume_until(ctx, broker, lambda: broker.acked == ["0"], "the message after reconnecting")
    assert broker.connects == 3
    assert [r for r, _ in ctx.status.reachable] == [True, False, True, False, True]
    assert "ConnectionError: broker down" in ctx.status.reachable[1][1]


async def test_a_broker_that_never_finishes_connecting_is_reported_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection that hangs after the broker accepted it (no answer to a channel open or a queue check) must
    not hold the bridge silently: it counts as unreachable, is said in the log, and is tried again."""
    caplog.set_level(logging.WARNING, logger="kubelambda.bridge.queues")
    invoker = Invoker(ok)
    ctx = Ctx(invoker, batchSize=10)
    broker = MemoryBroker(["a"], silent_connects=1)
    settings = FAST.model_copy(update={"connect_timeout_seconds": 0.2})
    await consume_until(
        ctx, broker, lambda: broker.acked == ["0"], "the message after a silent connect", settings
    )
    assert broker.connects == 2
    assert [r for r, _ in ctx.status.reachable] == [False, True]
    message = "ConnectionError: the broker did not finish connecting within 0.2 s"
    assert ctx.status.reachable[0][1] == message
    assert message in caplog.text


async def test_stopping_lets_the_batches_in_flight_finish_and_be_acknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kubelambda.bridge.queues")
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(Invoker):
        async def invoke(self, payload: Any, *, asynchronous: bool = False) -> InvokeResult:
            started.set()
            await release.wait()
            return await super().invoke(payload)

    invoker = Slow(ok)
    ctx = Ctx(invoker, batchSize=10)
    broker = MemoryBroker(["a", "b", "c"])
    consumer = QueueConsumer(ctx, broker, settings=FAST)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    # The consumer took the stop and is waiting on the batch, which cannot end before ``release``: only then
    # does the batch finish, and it is acknowledged below only if the consumer waited for it.
    await wait_for(
        lambda: asyncio.sleep(0, result=[r.getMessage() for r in caplog.records]),
        lambda messages: any(m.startswith("Draining 1 batch(es) in flight") for m in messages),
        what="the consumer draining its batch in flight",
    )
    assert not task.done(), "the consumer stopped without waiting for its batch in flight"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert broker.acked == ["0", "1", "2"]


async def test_stopping_gives_up_on_a_batch_after_the_drain_time() -> None:
    never = asyncio.Event()

    class Stuck(Invoker):
        async def invoke(self, payload: Any, *, asynchronous: bool = False) -> InvokeResult:
            await never.wait()
            raise AssertionError("unreachable")

    ctx = Ctx(Stuck(ok), batchSize=10)
    broker = MemoryBroker(["a"])
    settings = FAST.model_copy(update={"drain_seconds": 0.1})
    consumer = QueueConsumer(ctx, broker, settings=settings)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: asyncio.sleep(0, result=not broker.ready), bool, what="the message fetched")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert broker.acked == []


async def test_stopping_stops_even_when_the_client_swallows_the_cancellation() -> None:
    """A broker client that loses the CancelledError (redis-py on Python 3.11, when it lands at the wrong
    moment of a command) must not keep the consumer polling after a stop: it stops and closes the client."""
    polling = asyncio.Event()

    class Swallowing(MemoryBroker):
        swallowed = 0
        closed = 0

        async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
            polling.set()
            try:
                await asyncio.sleep(wait_seconds)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1  # what the client library did: the first stop is lost here
            return []

        async def close(self) -> None:
            self.closed += 1

    broker = Swallowing([])
    consumer = QueueConsumer(Ctx(Invoker(ok), batchSize=10), broker, settings=FAST)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(polling.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert broker.swallowed == 1
    assert broker.closed == 1
