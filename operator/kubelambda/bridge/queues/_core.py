"""The batching and acknowledgement loop every queue bridge shares (Lambda's SQS event source mapping).

A broker module implements :class:`Broker` (fetch, ack, return to the queue, keep a lease, tell the depth);
:class:`QueueConsumer` does the rest:

- gathers up to ``batchSize`` messages within ``maxBatchingWindowSeconds`` (and under the 6 MB payload cap),
- invokes the function synchronously with SQS-shaped ``Records``, up to ``maxConcurrency`` batches at once,
- acknowledges a message only after the function succeeded with it; with ``reportBatchItemFailures`` the
  messages the response names go back to the queue, otherwise a function error sends the whole batch back,
- on a throttle (429) or a platform error keeps the batch (renewing the broker's lease), pauses polling with an
  exponential backoff and invokes again: such an answer never uses up one of the broker's delivery attempts,
- reconnects with backoff when the broker is unreachable, reporting ``SourceReachable``; reports the queue depth
  as the Trigger's ``lag``,
- on stop, lets the batches in flight finish and be acknowledged (within ``drain_seconds``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubelambda import metrics, tracing
from kubelambda.api.v1alpha1.trigger import QueueSource
from kubelambda.bridge._context import BridgeContext, InvokeResult, within
from kubelambda.bridge.queues._batch import (
    BatchLimits,
    Message,
    Outcome,
    backoff_seconds,
    decide,
    record_json,
    record_size,
    record_tail,
    records_event,
    unique_ids,
)

log = logging.getLogger("kubelambda.bridge.queues")

MAX_READ_AHEAD = 1000
"""Messages fetched at most for the batches of the other slots, besides the one being gathered."""
STOP_STEP_SECONDS = 2.0
"""On stop, how long each step after the drain may take (cancelling the depth reader and what is left in
flight, closing the broker client)."""

_BATCHES = {outcome: metrics.BRIDGE_BATCHES.labels(outcome.value) for outcome in Outcome}
"""``kubelambda_bridge_batches_total`` by outcome, looked up once (``labels`` takes a lock and builds a key)."""


def trace_links(batch: Sequence[Message]) -> list[tracing.Link]:
    """Links to the traces the messages name in a ``traceparent`` attribute (SQS message attribute, NATS or
    RabbitMQ header, Redis field)."""
    links = []
    for m in batch:
        found = m.message_attributes.get(tracing.TRACEPARENT)
        value = found.get("stringValue") if isinstance(found, dict) else None
        made = tracing.link(value) if isinstance(value, str) else None
        if made is not None:
            links.append(made)
    return links


def _stop_requested() -> bool:
    """The current task was asked to stop, even if a client library swallowed the CancelledError.

    A cancellation can be lost inside a broker client (redis-py on Python 3.11 drops one that lands at the
    wrong moment of a command); the task stays marked as cancelling, so the loops check this and stop anyway
    instead of polling on until the pod is killed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class QueueSettings(BaseSettings):
    """Settings of the queue bridges that the Trigger does not carry (environment ``KUBELAMBDA_BRIDGE_QUEUE_*``)."""

    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_BRIDGE_QUEUE_", extra="ignore", frozen=True)

    visibility_timeout_seconds: float = Field(default=30.0, gt=0, le=43200)
    """Redis: idle time after which a pending message is claimed again (XAUTOCLAIM); NATS: ``AckWait`` of a
    consumer the bridge creates. While the function runs the bridge renews the lease every third of it
    (default 30 s, SQS's default visibility timeout)."""
    max_receive_count: int = Field(default=5, ge=0, le=1000)
    """Redis: deliveries after which a message moves to the dead-letter stream ``<key>:dlq``; NATS:
    ``MaxDeliver`` of a consumer the bridge creates; 0 = unlimited (default 5)."""
    backoff_min_seconds: float = Field(default=0.5, gt=0, le=60)
    """First pause after a throttle, a platform error or an unreachable broker (default 0.5 s; doubles)."""
    backoff_max_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest pause (default 30 s)."""
    poll_seconds: float = Field(default=1.0, gt=0, le=20)
    """Longest a single fetch waits for a first message (default 1 s)."""
    lag_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    """How often the queue depth is read for the Trigger's ``lag`` (default 5 s)."""
    rabbitmq_requeue: bool = True
    """RabbitMQ: return a failed message with ``requeue=true`` (default; quorum queues count it against
    ``x-delivery-limit``). ``false`` rejects it with ``requeue=false`` instead, so the queue's dead-letter exchange
    takes it at once (a classic queue's redrive, or a DLX + TTL retry loop); a queue without one drops it."""
    connect_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest a connection to the broker may take, up to consuming (default 30 s): a broker that accepts the
    connection and then does not answer (a channel, a queue check) is reported and retried like one that refuses
    it, instead of holding the bridge silently."""
    drain_seconds: float = Field(default=20.0, ge=0, le=3600)
    """On stop, how long batches in flight may still finish and be acknowledged (default 20 s, within the
    pod's 30 s termination grace period); what is still running then is left to the broker's redelivery."""


class Broker(Protocol):
    """One broker's side of a queue bridge."""

    event_source: str
    """``eventSource`` of the records (``aws:sqs``, ``kubelambda:rabbitmq``, ...)."""
    event_source_arn: str
    """``eventSourceARN``; set by ``connect``."""
    lease_renew_seconds: float | None
    """Renew the lease of in-flight messages this often while the function runs (None: never)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        """Up to ``max_count`` messages, waiting at most ``wait_seconds`` for the first one."""
        ...

    async def ack(self, messages: Sequence[Message]) -> None:
        """The function succeeded with these: remove them from the queue."""
        ...

    async def retry(self, messages: Sequence[Message]) -> None:
        """The function failed with these: they become visible again (one delivery attempt used)."""
        ...

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        """Keep these ours for ``seconds`` more, without using up a delivery attempt."""
        ...

    async def depth(self) -> int | None:
        """Messages waiting in the queue, where the broker tells."""
        ...


class QueueConsumer:
    """Runs one :class:`Broker` for a Trigger's ``queue`` block until cancelled."""

    def __init__(
        self,
        ctx: BridgeContext,
        broker: Broker,
        *,
        settings: QueueSettings | None = None,
    ) -> None:
        spec = ctx.trigger.spec.queue
        assert spec is not None, "a queue bridge needs spec.queue"
        self.ctx = ctx
        self.spec: QueueSource = spec
        self.broker = broker
        self.settings = settings or QueueSettings()
        self.limits = BatchLimits(batch_size=spec.batch_size, window_seconds=spec.max_batching_window_seconds)
        self._carry: list[Message] = []
        self._not_delivered = 0  # consecutive throttled / platform-error answers, for the polling backoff
        self._resume_at = 0.0
        # Consecutive failed connections, for the reconnect backoff; reset by the first fetch that works (a
        # broker that accepts connections and then fails every read still backs off).
        self._failures = 0

    # ---- the loop

    async def run(self) -> None:
        while True:
            try:
                if _stop_requested():
                    raise asyncio.CancelledError
                await self._connect()
                self.ctx.status.source_reachable(True, "")
                await self._consume()
                raise ConnectionError("the consumer stopped")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the broker went away or refused us: report, back off, reconnect
                self._failures += 1
                message = _describe(e)
                self.ctx.status.source_reachable(False, message)
                delay = backoff_seconds(
                    self._failures,
                    minimum=self.settings.backoff_min_seconds,
                    maximum=self.settings.backoff_max_seconds,
                )
                log.warning(
                    "Lost the queue of Trigger %s (%s); reconnecting in %.1f s", self.ctx.name, message, delay
                )
            finally:
                self._carry.clear()  # leases of a closed connection are gone; the broker redelivers them
                await self._close()
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        await within(
            self.broker.connect(),
            self.settings.connect_timeout_seconds,
            "the broker did not finish connecting",
        )

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self.broker.close(), STOP_STEP_SECONDS)
        except TimeoutError:
            log.warning(
                "Gave up closing the queue client of Trigger %s after %.0f s",
                self.ctx.name,
                STOP_STEP_SECONDS,
            )
        except Exception as e:
            log.debug("Closing the queue client of Trigger %s: %s", self.ctx.name, _describe(e))

    async def _consume(self) -> None:
        slots = asyncio.Semaphore(self.spec.max_concurrency)
        held = 0  # slots taken: a batch's slot is given back once its invocation answered, before its ack
        inflight: set[asyncio.Task[None]] = set()
        failed: list[BaseException] = []

        def releaser() -> Callable[[], None]:
            released = False

            def release() -> None:
                nonlocal released, held
                if not released:
                    released = True
                    held -= 1
                    slots.release()

            return release

        def finished(task: asyncio.Task[None], release: Callable[[], None]) -> None:
            inflight.discard(task)
            release()
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]

        depth = asyncio.create_task(self._report_depth())
        try:
            while True:
                if _stop_requested():
                    raise asyncio.CancelledError
                if failed:
                    raise failed[0]  # a batch could not be acknowledged: the connection is gone
                await self._wait_backoff()
                # The next batch is gathered while every slot may still be busy, so that a slot freed by an
                # answer starts its next invocation at once instead of after a broker round trip. The batches
                # of the other slots are fetched with it (one broker round trip for several batches, as
                # Lambda's poller reads ahead for its concurrent batches): of the slots free now, or, where the
                # broker's lease is renewed (kept ours while they wait for a slot, see ``_acquire``), of every
                # slot, so that slots freed while the loop waits for a fetch do not stay idle.
                ahead = self.spec.max_concurrency - 1
                if self.broker.lease_renew_seconds is None:
                    ahead -= held  # SQS' lease lapses by itself, RabbitMQ's are prefetched: what starts now
                batch = await self._gather(free=ahead)
                if not batch:
                    continue
                await self._acquire(slots, batch)
                held += 1
                release = releaser()
                if failed:
                    release()
                    self._carry[:0] = batch  # dropped with the connection: the broker redelivers it
                    raise failed[0]
                try:
                    await self._wait_backoff(batch)  # a throttle seen while this batch waited for its slot
                except BaseException:
                    release()
                    self._carry[:0] = batch
                    raise
                task = asyncio.create_task(self._process(batch, release))
                inflight.add(task)
                task.add_done_callback(functools.partial(finished, release=release))
        except asyncio.CancelledError:
            # Stopping (SIGTERM, a rolled Deployment): let the batches in flight finish and be acknowledged,
            # so a restart does not hand them out again, within the drain time.
            if inflight:
                log.info("Draining %d batch(es) in flight of Trigger %s", len(inflight), self.ctx.name)
                await asyncio.wait(set(inflight), timeout=self.settings.drain_seconds)
            raise
        finally:
            depth.cancel()
            for task in list(inflight):
                task.cancel()
            # Bounded: a client call that ignores its cancellation must not hold the stop up.
            _, stuck = await asyncio.wait({depth, *inflight}, timeout=STOP_STEP_SECONDS)
            if stuck:
                log.warning(
                    "Left %d task(s) of Trigger %s that did not stop within %.0f s",
                    len(stuck),
                    self.ctx.name,
                    STOP_STEP_SECONDS,
                )

    async def _acquire(self, slots: asyncio.Semaphore, batch: list[Message]) -> None:
        """A free slot for ``batch``, keeping the batch and the batches read ahead behind it ours meanwhile as a
        running invocation's is (a broker whose lease has a length of its own is renewed every
        ``lease_renew_seconds``)."""
        if not slots.locked():
            await slots.acquire()  # free: taken at once, without a turn of the event loop
            return
        every = self.broker.lease_renew_seconds
        while every is not None:
            try:
                await asyncio.wait_for(slots.acquire(), timeout=every)
                return
            except TimeoutError:
                await self.broker.hold(
                    [*batch, *self._carry], seconds=self.settings.visibility_timeout_seconds
                )
        await slots.acquire()

    async def _wait_backoff(self, batch: Sequence[Message] = ()) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            # ``batch`` (about to be invoked) and what was fetched for the next batches: kept ours meanwhile
            keep = [*batch, *self._carry]
            if keep:
                await self._hold_for(keep, delay)
            else:
                await asyncio.sleep(delay)

    async def _gather(self, *, free: int = 0) -> list[Message]:
        """One batch: up to batchSize, within the batching window, under the payload cap. With ``free`` other
        slots to read for (and no back-off in progress) a fetch asks for their batches too: the rest is carried to
        the next batches, which those slots take as they free (kept ours meanwhile: ``_acquire``)."""
        ahead = self.limits.batch_size * max(0, free) if not self._not_delivered else 0
        ahead = min(ahead, MAX_READ_AHEAD)
        batch: list[Message] = []
        size = 0
        started = 0.0
        pending, self._carry = self._carry, []
        while True:
            now = time.monotonic()
            if batch and self.limits.done(count=len(batch), size=size, started=started, now=now):
                break
            if not pending:
                if batch:
                    wait = max(0.0, started + self.limits.window_seconds - now)
                    if wait <= 0:
                        break
                else:
                    wait = self.settings.poll_seconds
                pending = await self.broker.fetch(
                    self.limits.batch_size - len(batch) + ahead, wait_seconds=wait
                )
                # Once per batch: a batch still filling within its window fetches only what it lacks.
                ahead = 0
                self._failures = 0
                if not pending:
                    if batch:
                        continue
                    return []
                metrics.BRIDGE_RECORDS_RECEIVED.inc(len(pending))
            take = 0  # the messages of ``pending`` that join, moved at once (a pop(0) each shifted the rest)
            for message in pending:
                count = len(batch) + take
                adding = record_size(message)
                if not self.limits.fits(size=size, adding=adding, count=count) or self.limits.full(
                    count=count, size=size
                ):
                    break
                take += 1
                size += adding
            if take:
                if not batch:
                    started = time.monotonic()
                batch += pending[:take]
                del pending[:take]
            if pending:  # fetched more than fits: the rest opens the next batch
                self._carry = pending
                break
        return batch

    async def _process(self, batch: list[Message], release: Callable[[], None] = lambda: None) -> None:
        # One span per batch (docs/tracing.md), linked to each message's trace when it carries a ``traceparent``
        # attribute/header; the invocations it makes are its children.
        links = trace_links(batch) if tracing.enabled() else ()
        with tracing.span(f"batch {self.ctx.name}", kind=tracing.SpanKind.CONSUMER, links=links) as span:
            tracing.set_attributes(
                span,
                {
                    "messaging.system": self.broker.event_source,
                    "messaging.batch.message_count": len(batch),
                    "kubelambda.trigger": self.ctx.name,
                },
            )
            await self._process_batch(batch, release)

    async def _process_batch(self, batch: list[Message], release: Callable[[], None] = lambda: None) -> None:
        """Invokes with ``batch`` until the answer is not a throttle or platform error, calls ``release`` (the
        slot is free for the next invocation), then acknowledges or returns the messages."""
        unique_ids(batch)
        tail = record_tail(
            event_source=self.broker.event_source,
            event_source_arn=self.broker.event_source_arn,
            region=self.ctx.region,
        )
        event = records_event([record_json(m, tail) for m in batch])
        by_id = {m.message_id: m for m in batch}
        metrics.BRIDGE_BATCH_SIZE.observe(len(batch))
        attempt = 0
        while True:
            result = await self._invoke_keeping_lease(batch, event)
            decision = decide(
                ids=list(by_id),
                status=result.status,
                function_error=result.function_error,
                payload=result.payload,
                report_batch_item_failures=self.spec.report_batch_item_failures,
            )
            if decision.outcome is not Outcome.NOT_DELIVERED:
                break
            attempt += 1
            self._not_delivered += 1
            delay = backoff_seconds(
                self._not_delivered,
                minimum=self.settings.backoff_min_seconds,
                maximum=self.settings.backoff_max_seconds,
            )
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
            _BATCHES[Outcome.NOT_DELIVERED].inc()
            if attempt == 1 or attempt % 10 == 0:
                log.info(
                    "Held a batch of %d for Trigger %s: %s; invoking again in %.1f s",
                    len(batch),
                    self.ctx.name,
                    decision.reason,
                    delay,
                )
            await self._hold_for(batch, delay)
        self._not_delivered = 0
        release()  # the acknowledgement is a broker round trip: the next invocation need not wait for it
        acked = [by_id[i] for i in decision.ack]
        failed = [by_id[i] for i in decision.retry]
        if acked:
            await self.broker.ack(acked)
            self.ctx.status.delivered(len(acked))
        if failed:
            metrics.BRIDGE_FAILURES.inc(len(failed))
            await self.broker.retry(failed)
            log.info(
                "Returned %d of %d messages to the queue of Trigger %s (%s)",
                len(failed),
                len(batch),
                self.ctx.name,
                decision.reason or "batch item failures",
            )
        _BATCHES[decision.outcome].inc()

    async def _hold_for(self, batch: list[Message], seconds: float) -> None:
        """Keeps the batch ours for ``seconds`` (the back-off before invoking again). A broker whose lease has a
        length of its own (NATS' ack wait, Redis' idle time) is renewed every ``lease_renew_seconds`` meanwhile:
        one hold would lapse during a back-off longer than the lease, and the redelivery would cost the batch a
        delivery attempt that the throttle, not the function, caused."""
        every = self.broker.lease_renew_seconds
        until = time.monotonic() + seconds
        while True:
            left = max(0.0, until - time.monotonic())
            await self.broker.hold(batch, seconds=left + self.settings.visibility_timeout_seconds)
            if every is None or left <= every:  # this hold lasts past the back-off
                await asyncio.sleep(left)
                return
            await asyncio.sleep(every)

    async def _invoke_keeping_lease(self, batch: list[Message], payload: bytes) -> InvokeResult:
        """Invokes in this task; an invocation still running after ``lease_renew_seconds`` gets a task renewing
        the batch's lease meanwhile (most end long before: no task nor wait is made for them). A renewal that
        fails fails the batch once the invocation returned (its messages go back with the connection)."""
        every = self.broker.lease_renew_seconds
        if every is None:
            return await self.ctx.invoker.invoke(payload)
        renewer: asyncio.Task[None] | None = None

        def start() -> None:
            nonlocal renewer
            renewer = asyncio.create_task(self._renew(batch, every))

        timer = asyncio.get_running_loop().call_later(every, start)
        try:
            result = await self.ctx.invoker.invoke(payload)
        finally:
            timer.cancel()
            if renewer is not None:
                renewer.cancel()
        if renewer is not None:
            await asyncio.wait({renewer})
            if not renewer.cancelled() and renewer.exception() is not None:
                raise renewer.exception()  # type: ignore[misc]
        return result

    async def _renew(self, batch: list[Message], every: float) -> None:
        while True:
            await self.broker.hold(batch, seconds=self.settings.visibility_timeout_seconds)
            await asyncio.sleep(every)

    async def _report_depth(self) -> None:
        while not _stop_requested():
            try:
                depth = await self.broker.depth()
            except Exception as e:
                log.debug("Could not read the depth of the queue of Trigger %s: %s", self.ctx.name, e)
            else:
                self.ctx.status.set_lag(depth)
            await asyncio.sleep(self.settings.lag_interval_seconds)


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class QueueBridge:
    """A Trigger source ``queue.<broker>``: a :class:`QueueConsumer` over the :class:`Broker` that
    :meth:`make_broker` builds. Each broker module subclasses it once and names that class ``BRIDGE``."""

    def __init__(self, ctx: BridgeContext) -> None:
        settings = QueueSettings()
        self.consumer = QueueConsumer(ctx, self.make_broker(ctx, settings), settings=settings)

    def make_broker(self, ctx: BridgeContext, settings: QueueSettings) -> Broker:
        raise NotImplementedError

    def routes(self) -> list[web.RouteDef]:
        return []

    async def run(self) -> None:
        await self.consumer.run()
