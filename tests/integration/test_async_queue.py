"""The Event queue's publish against a real nats-server: acknowledged stores, refusals, many in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from kltest import wait_for
from kltest.platform import LOOPBACK_ALLOWED
from kltest.records import Records
from kubelambda import metrics
from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.asyncworker import queue as queue_module
from kubelambda.asyncworker.decide import Outcome
from kubelambda.asyncworker.dlq import list_dead_letters
from kubelambda.asyncworker.queue import EventQueue, QueuedEvent
from kubelambda.asyncworker.record import Response
from kubelambda.asyncworker.worker import CONSUMER, Worker, WorkerSettings
from kubelambda.devcluster.servers import NatsCluster, NatsServer
from kubelambda.egress import AddressPolicy, parse_cidrs

pytestmark = pytest.mark.integration
STREAM = "KUBELAMBDA_ASYNC"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with NatsServer(tmp_path / "nats") as server:
        yield server


def event(i: int, *, function: str = "fn", invoke_count: int = 0) -> QueuedEvent:
    return QueuedEvent(
        namespace="ns",
        function=function,
        request_id=f"req-{i}",
        payload=b'{"i": %d}' % i,
        enqueued_at=1000.0 + i,
        invoke_count=invoke_count,
    )


async def test_concurrent_publishes_each_return_once_stored(nats_server: NatsServer) -> None:
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    try:
        await asyncio.gather(*(queue.publish(event(i)) for i in range(2000)))
        info = await queue.js.stream_info(STREAM)
        assert info.state.messages == 2000
        stored = await queue.js.get_msg(STREAM, 1)
        assert QueuedEvent.from_message(stored.headers, stored.data or b"") == event(0)
        # The same request id and invoke count again is one message (Nats-Msg-Id, duplicate window).
        await queue.publish(event(0))
        assert (await queue.js.stream_info(STREAM)).state.messages == 2000
        assert queue._acks == {}  # nothing left waiting
    finally:
        await queue.close()


async def test_a_publish_outlives_a_stall_of_its_own_event_loop(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's loop stalled (its process starved on a loaded node) longer than the ack timeout: no ack
    could be read meanwhile, so that time is not counted and the event is acknowledged, not refused."""
    monkeypatch.setattr(queue_module, "PUBLISH_TIMEOUT_SECONDS", 1.0)
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    try:
        await queue.publish(event(0))  # the ack subscription and its sweeper run
        publishing = asyncio.create_task(queue.publish(event(1)))
        await asyncio.sleep(0)  # sent; its ack awaited
        time.sleep(2.0)  # noqa: ASYNC251 (the whole loop stalls past the timeout: the point)
        await publishing
        assert (await queue.js.stream_info(STREAM)).state.messages == 2
    finally:
        await queue.close()


async def test_a_publish_no_stream_takes_or_the_wrong_stream_takes_is_refused(
    nats_server: NatsServer,
) -> None:
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    other = EventQueue(await nats.connect(nats_server.url), stream="ELSEWHERE")
    try:
        # The subject belongs to KUBELAMBDA_ASYNC, the publisher expects ELSEWHERE: JetStream refuses.
        with pytest.raises(APIError):
            await other.publish(event(1))
        await queue.js.delete_stream(STREAM)
        queue.failover_seconds = 1.0
        with pytest.raises(NoStreamResponseError):
            await queue.publish(event(2))
        # A stream that answers again within failover_seconds (as a replicated stream's new leader after an
        # election) takes the publish, sent again meanwhile.
        queue.failover_seconds = 30.0
        publishing = asyncio.create_task(queue.publish(event(3)))
        await asyncio.sleep(0.5)  # a few refused tries first
        assert not publishing.done()
        await queue.js.add_stream(StreamConfig(name=STREAM, subjects=["kubelambda.async.>"]))
        await publishing
        assert (await queue.js.stream_info(STREAM)).state.messages == 1
    finally:
        await other.close()
        await queue.close()


class StallingInvoker:
    """The gateway's sync path for one function whose first invocation fails after stalling the event loop past
    the ack wait (the worker cannot renew it: JetStream redelivers the event while it still runs; the invocation
    returns once the consumer says so); every later invocation succeeds, as a handler that fails only its first
    attempt does."""

    def __init__(self, spec: FunctionSpec, queue: EventQueue, *, stall: float) -> None:
        self.spec = spec
        self.queue = queue
        self.stall = stall
        self.attempts: list[str] = []

    async def wait_synced(self) -> None:
        return None

    def async_function(self, namespace: str, name: str) -> FunctionSpec | None:
        return self.spec if (namespace, name) == ("ns", "fn") else None

    def function_arn(self, namespace: str, name: str) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{namespace}/{name}"

    async def destination_refusal(self, namespace: str, source: str, target: str) -> str | None:
        return None

    def destination_object(self, namespace: str, target: str) -> str:
        return target

    async def invoke_for_worker(
        self, namespace: str, name: str, payload: bytes, *, request_id: str, traceparent: str | None = None
    ) -> tuple[Outcome, Response | None]:
        self.attempts.append(request_id)
        if len(self.attempts) == 1:
            time.sleep(self.stall)  # noqa: ASYNC251 - a starved machine: the loop (and the ack renewal) stalls

            async def redelivered() -> int:
                return (await self.queue.js.consumer_info(STREAM, CONSUMER)).num_redelivered

            # Still running when the event is delivered again.
            await wait_for(redelivered, lambda n: n >= 1, what="the event delivered again", timeout=30)
            return Outcome.FUNCTION_ERROR, Response(200, "Unhandled", b'{"errorMessage": "first"}')
        return Outcome.SUCCESS, Response(200, None, payload)


async def test_an_event_redelivered_while_its_failing_first_delivery_runs_waits_for_it_and_runs_once(
    nats_server: NatsServer,
) -> None:
    """The crash test's worst case without a crash: the ack wait runs out under a stalled loop and JetStream
    delivers the event again while the first delivery (which fails and queues a retry) still runs. The second
    delivery waits for the first, finds it done and is acknowledged without running: one retry, one success
    record; nothing is left in the stream, nothing is dead-lettered, none is a failure record."""
    records = Records()
    await records.start()
    spec = FunctionSpec.model_validate(
        {
            "runtime": "python3.12",
            "handler": "app.handler",
            "code": {"inline": {"app.py": ""}},
            "async": {
                "maxRetries": 1,
                "onSuccess": {"url": records.url("ok")},
                "onFailure": {"url": records.url("failed")},
            },
        }
    )
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    invoker = StallingInvoker(spec, queue, stall=2.5)
    done_before = metrics.ASYNC_REDELIVERED_DONE._value.get()
    settings = WorkerSettings(
        concurrency=4,
        retry_delays=(0.1,),
        backoff_min=0.1,
        backoff_max=0.5,
        ack_wait=1.0,
        destinations=AddressPolicy(allow=parse_cidrs(LOOPBACK_ALLOWED)),  # the record receiver
    )
    try:
        async with aiohttp.ClientSession() as http:
            worker = asyncio.create_task(Worker(queue, invoker, http, settings=settings).run())
            try:
                await queue.publish(
                    QueuedEvent(
                        namespace="ns",
                        function="fn",
                        request_id="req-1",
                        payload=b"{}",
                        enqueued_at=time.time(),
                    )
                )
                # The first delivery's retry succeeds: one success record.
                ok = await records.wait("ok", 1, timeout=60)

                async def state() -> tuple[int, int]:
                    info = await queue.js.consumer_info(STREAM, CONSUMER)
                    return (await queue.js.stream_info(STREAM)).state.messages, info.num_ack_pending

                await wait_for(state, lambda s: s == (0, 0), what="the stream drained")
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
        # Drained: nothing more can come. The first delivery and its retry ran; the redelivery did not.
        assert invoker.attempts == ["req-1"] * 2
        assert [r["requestContext"]["requestId"] for r in ok] == ["req-1"]
        assert ok[0]["requestContext"]["approximateInvokeCount"] == 2
        # Delivered again once or more (each ack wait that ran out during the stall), each found done.
        assert metrics.ASYNC_REDELIVERED_DONE._value.get() >= done_before + 1
        assert records.of("failed") == []
        assert await list_dead_letters(queue, "ns") == []
    finally:
        await queue.close()
        await records.stop()


async def publish_once_answered(js: JetStreamContext, subject: str, data: bytes) -> None:
    """Publishes, again while no stream answers: a stream just created on one node of a cluster reaches the
    others' interest over the routes a moment later ("no responders" meanwhile: nothing was stored)."""

    async def attempt() -> bool:
        try:
            await js.publish(subject, data)
        except NoStreamResponseError:
            return False
        return True

    await wait_for(attempt, bool, what=f"a stream storing {subject}", timeout=30)


async def test_streams_get_min_of_the_setting_and_the_cluster_size_and_are_raised_in_place(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    lone = await EventQueue.connect(nats_server.url, stream=STREAM)
    try:
        assert (await lone.js.stream_info(STREAM)).config.num_replicas == 1  # one server: one replica
    finally:
        await lone.close()
    async with NatsCluster(tmp_path / "cluster") as cluster:
        # A stream an older kubelambda created with one replica, holding events.
        nc = await nats.connect(cluster.nodes[0].url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=["kubelambda.async.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=1,
            )
        )
        for i in range(10):
            await publish_once_answered(js, f"kubelambda.async.ns.fn{i}", b"%d" % i)
        await nc.close()
        queue = await EventQueue.connect(cluster.url, stream=STREAM)
        try:
            assert queue.cluster_size() == 3
            info = await queue.js.stream_info(STREAM)
            assert info.config.num_replicas == 3
            assert info.state.messages == 10  # raised in place, nothing lost
            await queue.dead_letter("ns", "fn", {"i": 1}, why="test")
            assert (await queue.js.stream_info("KUBELAMBDA_DLQ_ns")).config.num_replicas == 3
            # Asked for fewer than the cluster has: the setting wins.
            await queue.js.delete_stream(STREAM)
        finally:
            await queue.close()
        small = await EventQueue.connect(cluster.url, stream=STREAM, replicas=2)
        try:
            assert (await small.js.stream_info(STREAM)).config.num_replicas == 2
        finally:
            await small.close()
        # Asked for one, a replicated stream keeps its replicas (a node down at start is not a smaller cluster).
        one = await EventQueue.connect(cluster.url, stream=STREAM, replicas=1)
        try:
            assert (await one.js.stream_info(STREAM)).config.num_replicas == 2
        finally:
            await one.close()
