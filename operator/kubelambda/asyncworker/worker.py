"""The consumer loop: pull events, invoke through the gateway's sync path, follow the decision.

A message is acknowledged only after its outcome is recorded (a retry published, or the record delivered) and
marked done (kubelambda.asyncworker.queue: a delivery found marked is acknowledged without running it again);
a worker that dies mid-event leaves it unacknowledged and JetStream redelivers it after the ack wait
(the same request id: at-least-once, twice only when the worker died between the record and the marker).
While an invocation runs the worker tells JetStream it is in progress; a worker that is stopped gives its
events back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from kubelambda import metrics, tracing
from kubelambda.api.v1alpha1 import Destination, FunctionSpec
from kubelambda.asyncworker.decide import (
    Condition,
    Finish,
    Outcome,
    Policy,
    Requeue,
    Retry,
    after_invoke,
    before_invoke,
)
from kubelambda.asyncworker.queue import (
    DEFAULT_DONE_TTL_SECONDS,
    ENQUEUED_AT,
    EVENT_PREFIX,
    BadEvent,
    EventQueue,
    QueuedEvent,
)
from kubelambda.asyncworker.record import Response, invocation_record
from kubelambda.destinations import Senders
from kubelambda.egress import AddressPolicy
from kubelambda.natspolicy import subject_refusal

logger = logging.getLogger(__name__)

CONSUMER = "kubelambda-async-worker"
FETCH_WAIT_SECONDS = 1.0
OBSERVE_EVERY_SECONDS = 5.0
MARK_DONE_SECONDS = 120.0  # how long a done marker is retried (see Worker._done)
MARK_RETRY_SECONDS = 1.0


class Invoker(Protocol):
    """The gateway's sync path as the worker needs it."""

    async def wait_synced(self) -> None:
        """Returns once the list of Functions is known: before that, every Function looks absent."""

    def async_function(self, namespace: str, name: str) -> FunctionSpec | None:
        """The Function's spec, or None when there is no such Function."""

    def function_arn(self, namespace: str, name: str) -> str: ...

    async def invoke_for_worker(
        self, namespace: str, name: str, payload: bytes, *, request_id: str, traceparent: str | None = None
    ) -> tuple[Outcome, Response | None]:
        """One attempt; ``traceparent``: the attempt's trace parent (docs/tracing.md)."""

    def destination_object(self, namespace: str, target: str) -> str:
        """The Function object a ``function`` destination (``name``, ``name:N``, ``name:alias``) sends to."""

    async def destination_refusal(self, namespace: str, source: str, target: str) -> str | None:
        """None when the Function ``source`` may send records to the Function ``target`` (its execution identity
        may invoke it, or auth is off); else why not (gateway/auth)."""


class SettingsSource(Protocol):
    """What :meth:`WorkerSettings.of` reads: the gateway's settings (kubelambda.gateway.config), named here by
    shape so this package never imports the gateway (tests/unit/test_import_cycles.py)."""

    @property
    def async_worker_concurrency(self) -> int: ...
    @property
    def async_retry_delays_seconds(self) -> tuple[float, ...]: ...
    @property
    def async_backoff_min_seconds(self) -> float: ...
    @property
    def async_backoff_max_seconds(self) -> float: ...
    @property
    def async_ack_wait_seconds(self) -> float: ...
    @property
    def async_done_ttl_seconds(self) -> float: ...
    def destination_policy(self, api_server: str | None) -> AddressPolicy: ...


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int
    retry_delays: tuple[float, ...]
    backoff_min: float
    backoff_max: float
    ack_wait: float = 30.0  # redelivery after a worker died mid-event
    done_ttl: float = DEFAULT_DONE_TTL_SECONDS  # how long a delivery's done marker is kept
    destinations: AddressPolicy = field(default_factory=AddressPolicy)
    """Where ``url`` destinations may not go (loopback, metadata, the API server) unless allowed."""

    @classmethod
    def of(cls, settings: SettingsSource, *, api_server: str) -> WorkerSettings:
        """The worker's settings from the gateway's (the in-process worker and ``kubelambda async-worker``)."""
        return cls(
            concurrency=settings.async_worker_concurrency,
            retry_delays=settings.async_retry_delays_seconds,
            backoff_min=settings.async_backoff_min_seconds,
            backoff_max=settings.async_backoff_max_seconds,
            ack_wait=settings.async_ack_wait_seconds,
            done_ttl=settings.async_done_ttl_seconds,
            destinations=settings.destination_policy(api_server),
        )


class CheckedResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses a host any of whose addresses ``policy`` refuses (the connection
    is made to the addresses checked here, so a name cannot resolve to another address in between)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        self.policy.check(host, [r["host"] for r in found])
        return found

    async def close(self) -> None:
        await self._inner.close()


class Worker:
    def __init__(
        self,
        queue: EventQueue,
        invoker: Invoker,
        http: aiohttp.ClientSession,
        *,
        settings: WorkerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.invoker = invoker
        self.http = http
        self.settings = settings
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        # Deliveries being handled, by done key: the same one delivered again meanwhile waits for it (_process).
        self._running: dict[str, asyncio.Task[Any]] = {}
        # Queue and topic destinations: connections by URL; a NATS one without URL uses the worker's NATS.
        self.senders = Senders(platform_nats=getattr(queue, "nc", None))
        self._destination_http: aiohttp.ClientSession | None = (
            None  # url destinations only (checked addresses)
        )

    async def run(self) -> None:
        """Consumes until cancelled."""
        s = self.settings
        # Consuming before the first list would dead-letter every event as "no such Function".
        await self.invoker.wait_synced()
        await self.queue.open_done_markers(ttl_seconds=s.done_ttl)
        sub = await self.queue.js.pull_subscribe(
            f"{EVENT_PREFIX}.>",
            durable=CONSUMER,
            stream=self.queue.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=s.ack_wait,
                max_deliver=-1,
                max_ack_pending=max(s.concurrency * 4, 1000),
            ),
        )
        logger.info("The async worker consumes %s (%d at once)", self.queue.stream, s.concurrency)
        observer = asyncio.create_task(self._observe_queue(), name="async queue metrics")
        try:
            while True:
                free = s.concurrency - len(self._tasks)
                if free <= 0:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await sub.fetch(batch=free, timeout=FETCH_WAIT_SECONDS)
                except TimeoutError:
                    continue
                except Exception as e:  # NATS reconnecting: the messages stay in the stream
                    logger.warning("Fetching events failed, trying again: %s", e)
                    await asyncio.sleep(FETCH_WAIT_SECONDS)
                    continue
                for msg in messages:
                    task = asyncio.create_task(self._handle(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            observer.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await self.senders.close()
            if self._destination_http is not None:
                await self._destination_http.close()
                self._destination_http = None

    async def _observe_queue(self) -> None:
        """Queue depth and the oldest event's age, for the metrics (every few seconds, from the stream)."""
        while True:
            try:
                info = await self.queue.js.stream_info(self.queue.stream)
                metrics.ASYNC_QUEUE_DEPTH.set(info.state.messages)
                oldest = 0.0
                if info.state.messages:
                    first = await self.queue.js.get_msg(self.queue.stream, info.state.first_seq)
                    enqueued = float((first.headers or {}).get(ENQUEUED_AT, self.clock()))
                    oldest = max(self.clock() - enqueued, 0.0)
                metrics.ASYNC_QUEUE_OLDEST_SECONDS.set(oldest)
            except Exception as e:  # the message may just have been acked; NATS may be reconnecting
                logger.debug("Could not read the queue's depth: %s", e)
            await asyncio.sleep(OBSERVE_EVERY_SECONDS)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = QueuedEvent.from_message(msg.headers, msg.data)
        except BadEvent as e:
            logger.error("Dropped message %s of %s: %s", msg.metadata.sequence.stream, msg.subject, e)
            metrics.ASYNC_DROPPED.labels("bad_message").inc()
            await msg.term()
            return
        try:
            now = self.clock()
            if event.not_before is not None and now < event.not_before:  # a retry, not due yet: no span
                await msg.nak(delay=event.not_before - now)
                return
            # One span per delivery, in the event's trace: the attempt, a retry queued and a destination's
            # record are its children (the retry's delivery then continues the same trace).
            with tracing.span(
                f"async {event.namespace}/{event.function}",
                context=tracing.parent(event.traceparent),
                kind=tracing.SpanKind.CONSUMER,
            ) as span:
                tracing.set_attributes(
                    span,
                    {
                        "faas.invocation_id": event.request_id,
                        "kubelambda.namespace": event.namespace,
                        "kubelambda.function": event.function,
                        "kubelambda.invoke_count": event.invoke_count,
                    },
                )
                await self._process(msg, event)
        except asyncio.CancelledError:
            # Stopping: hand the event back now rather than after the ack wait (it may have run: at-least-once).
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception:
            # Recorded nowhere yet: JetStream keeps the event; try it again a little later.
            logger.exception(
                "Handling event %s of %s/%s failed", event.request_id, event.namespace, event.function
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.backoff_min)

    async def _process(self, msg: Msg, event: QueuedEvent) -> None:
        key = event.done_key()
        first = self._running.get(key)
        if first is not None:
            # JetStream delivered this event again while it runs here (a new consumer leader that had not got
            # its delivery): wait for that run's outcome rather than run it twice at once.
            await asyncio.wait({first})
            if not await self.queue.is_done(event):
                await msg.nak(delay=self.settings.backoff_min)  # that run handed it back: so does this one
                return
        task = asyncio.current_task()
        assert task is not None
        self._running[key] = task
        try:
            await self._process_once(msg, event)
        finally:
            if self._running.get(key) is task:
                del self._running[key]

    async def _process_once(self, msg: Msg, event: QueuedEvent) -> None:
        s = self.settings
        if await self.queue.is_done(event):
            # Its outcome is recorded: JetStream delivered an acknowledged event again.
            metrics.ASYNC_REDELIVERED_DONE.inc()
            logger.info(
                "Event %s of %s/%s (invocation %d) was done already: acknowledged, not run again",
                event.request_id,
                *_labels(event),
                event.invoke_count,
            )
            await msg.ack_sync()
            return
        now = self.clock()
        spec = self.invoker.async_function(event.namespace, event.function)
        if spec is None:
            record = self._record(event, Condition.RETRIES_EXHAUSTED, event.invoke_count, None, now)
            await self.queue.dead_letter(event.namespace, event.function, record, why="no such Function")
            logger.warning(
                "Event %s of %s/%s dead-lettered: no such Function", event.request_id, *_labels(event)
            )
            metrics.ASYNC_DESTINATION_RECORDS.labels(event.namespace, event.function, "dead_letter").inc()
            await self._done(msg, event)
            return
        policy = Policy(
            max_retries=spec.async_.max_retries,
            max_event_age_seconds=spec.async_.max_event_age_seconds,
            retry_delays=s.retry_delays,
            backoff_min=s.backoff_min,
            backoff_max=s.backoff_max,
        )
        decision: Finish | Retry | Requeue | None = before_invoke(
            enqueued_at=event.enqueued_at, now=now, policy=policy, reserved=spec.concurrency.reserved
        )
        response: Response | None = None
        count = event.invoke_count
        if decision is None:
            heartbeat = asyncio.create_task(_in_progress(msg, every=s.ack_wait / 3))
            try:
                outcome, response = await self.invoker.invoke_for_worker(
                    event.namespace,
                    event.function,
                    event.payload,
                    request_id=event.request_id,
                    traceparent=_traceparent(event),
                )
            finally:
                heartbeat.cancel()
            if outcome in (Outcome.SUCCESS, Outcome.FUNCTION_ERROR):
                count += 1
            now = self.clock()
            decision = after_invoke(
                outcome=outcome,
                invoke_count=count,
                requeues=max(msg.metadata.num_delivered - 1, 0),
                enqueued_at=event.enqueued_at,
                now=now,
                policy=policy,
            )
        labels = (event.namespace, event.function)
        if isinstance(decision, Requeue):
            metrics.ASYNC_REQUEUES.labels(*labels).inc()
            await msg.nak(delay=decision.delay)
            return
        if isinstance(decision, Retry):
            retry = QueuedEvent(
                namespace=event.namespace,
                function=event.function,
                request_id=event.request_id,
                payload=event.payload,
                enqueued_at=event.enqueued_at,
                invoke_count=decision.invoke_count,
                not_before=now + decision.delay,
                traceparent=_traceparent(event),
            )
            await self.queue.publish(retry)
            metrics.ASYNC_RETRIES.labels(*labels).inc()
            logger.info(
                "Event %s of %s/%s: invocation %d failed (%s), retry queued",
                event.request_id,
                *labels,
                decision.invoke_count,
                response.function_error if response is not None else None,
            )
            await self._done(msg, event)
            return
        if (
            decision.failed or spec.async_.on_success is not None
        ):  # a success without a destination: no record
            record = self._record(event, decision.condition, count, response, now)
            await self._deliver(event, spec, decision, record)
        await self._done(msg, event)

    async def _done(self, msg: Msg, event: QueuedEvent) -> None:
        """The outcome is recorded: mark the delivery done, then acknowledge it.

        The marker is written again every ``MARK_RETRY_SECONDS`` while it fails (the marker stream without quorum: two
        of three NATS nodes down) for up to ``MARK_DONE_SECONDS``, the event kept in progress meanwhile: a
        marker given up on leaves a redelivery of the event unrecognised (run, and recorded, twice).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MARK_DONE_SECONDS
        heartbeat: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    await self.queue.mark_done(event)
                    break
                except Exception as e:
                    if loop.time() + MARK_RETRY_SECONDS >= deadline:
                        logger.warning(
                            "Could not mark event %s done (a redelivery would run it again): %s: %s",
                            event.request_id,
                            type(e).__name__,
                            e,
                        )
                        break
                    if heartbeat is None:
                        heartbeat = asyncio.create_task(_in_progress(msg, every=self.settings.ack_wait / 3))
                    await asyncio.sleep(MARK_RETRY_SECONDS)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
        await msg.ack_sync()

    def _record(
        self, event: QueuedEvent, condition: Condition, count: int, response: Response | None, now: float
    ) -> dict[str, Any]:
        return invocation_record(
            request_id=event.request_id,
            function_arn=self.invoker.function_arn(event.namespace, event.function),
            condition=condition,
            invoke_count=count,
            request_payload=event.payload,
            response=response,
            now=now,
        )

    async def _deliver(
        self, event: QueuedEvent, spec: FunctionSpec, decision: Finish, record: dict[str, Any]
    ) -> None:
        labels = (event.namespace, event.function)
        destination = spec.async_.on_failure if decision.failed else spec.async_.on_success
        # Every event that does not end in success leaves its request id in the log, and so does every record
        # that does not reach its destination: "where did event X go" has an answer.
        if decision.failed:
            logger.warning(
                "Event %s of %s/%s failed: %s after %d invocation(s), last error %s",
                event.request_id,
                *labels,
                decision.condition.value,
                record["requestContext"]["approximateInvokeCount"],
                (record.get("responseContext") or {}).get("functionError"),
            )
        if destination is None:
            if decision.failed:
                await self.queue.dead_letter(*labels, record, why=decision.condition.value)
                metrics.ASYNC_DESTINATION_RECORDS.labels(*labels, "dead_letter").inc()
            return
        try:
            kind = await self._send(event.namespace, destination, record, source=event.function)
        except Exception as e:
            # The outcome is known: keep the record rather than invoke the function again.
            logger.warning(
                "Destination of event %s of %s/%s failed, dead-lettered the record: %s: %s",
                event.request_id,
                *labels,
                type(e).__name__,
                e,
            )
            await self.queue.dead_letter(*labels, record, why=f"destination failed: {type(e).__name__}: {e}")
            metrics.ASYNC_DESTINATION_RECORDS.labels(*labels, "dead_letter").inc()
            return
        metrics.ASYNC_DESTINATION_RECORDS.labels(*labels, kind).inc()

    async def _send(
        self, namespace: str, destination: Destination, record: dict[str, Any], *, source: str
    ) -> str:
        with tracing.span("destination", kind=tracing.SpanKind.PRODUCER) as span:
            kind = await self._send_record(namespace, destination, record, source=source)
            tracing.set_attributes(span, {"kubelambda.destination": kind})
            return kind

    async def _send_record(
        self, namespace: str, destination: Destination, record: dict[str, Any], *, source: str
    ) -> str:
        body = json.dumps(record).encode()
        if destination.function is not None:
            # RBAC names the function (its versions and aliases are its own); the record goes to the object the
            # qualifier names now.
            base = destination.function.split(":", 1)[0]
            refused = await self.invoker.destination_refusal(namespace, source, base)
            if refused is not None:
                raise PermissionError(refused)
            await self.queue.publish(
                QueuedEvent(
                    namespace=namespace,
                    function=self.invoker.destination_object(namespace, destination.function),
                    # The same for the same record: sent again by a redelivered event, the Event's Nats-Msg-Id
                    # is the same and JetStream stores it once (within its duplicate window).
                    request_id=destination_request_id(record),
                    payload=body,
                    enqueued_at=self.clock(),
                    traceparent=tracing.current_traceparent(),
                )
            )
            return "function"
        if destination.nats is not None:
            # Never the server's APIs ($JS., $SYS., ...) nor kubelambda's own subjects (kubelambda.natspolicy).
            refused = subject_refusal(destination.nats)
            if refused is not None:
                raise PermissionError(refused)
            await self.queue.publish_record(destination.nats, body, key=record_key(record), now=self.clock())
            return "nats"
        target = destination.queue or destination.topic
        if target is not None:
            condition = record["requestContext"]["condition"]
            return await self.senders.send(target, body, key=record_key(record), subject=condition)
        assert destination.url is not None
        await self._post_record(destination.url, body)
        return "url"

    async def _post_record(self, url: str, body: bytes) -> None:
        """POSTs a record to a ``url`` destination: never to a refused address, never after a redirect."""
        policy = self.settings.destinations
        host = urllib.parse.urlsplit(url).hostname or ""
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)  # aiohttp does not resolve an address: check it here
            policy.check(host, [host])
        if self._destination_http is None:
            self._destination_http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=CheckedResolver(policy), limit=0)
            )
        async with self._destination_http.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
            allow_redirects=False,
        ) as resp:
            if 300 <= resp.status < 400:
                raise RuntimeError(
                    f"{url} answered {resp.status} (a redirect: destinations do not follow them)"
                )
            if resp.status >= 300:
                raise RuntimeError(f"{url} answered {resp.status}")


def record_key(record: dict[str, Any]) -> str:
    """A record's key for destinations that deduplicate (``Nats-Msg-Id``, SQS FIFO's deduplication id): the
    same when a redelivered event sends its record again (docs/async.md, "Exactly one record")."""
    context = record["requestContext"]
    return f"{context['requestId']}:{context['condition']}"


def destination_request_id(record: dict[str, Any]) -> str:
    """The request id of the Event a function destination gets for ``record``: a UUID derived from the record's
    key, so that the record sent again by a redelivered event is the same Event."""
    return str(uuid.uuid5(_DESTINATION_IDS, record_key(record)))


_DESTINATION_IDS = uuid.UUID(
    "5f0d7c1e-3b57-4a8e-9d4c-6b1f2a0e8c31"
)  # the namespace of those ids (any fixed UUID)


def _traceparent(event: QueuedEvent) -> str | None:
    """What an attempt or a retry carries: the current span's (the delivery's), else the event's as it came."""
    return tracing.current_traceparent() or event.traceparent


def _labels(event: QueuedEvent) -> tuple[str, str]:
    return (event.namespace, event.function)


async def _in_progress(msg: Msg, *, every: float) -> None:
    """Keeps JetStream from redelivering an event whose invocation is still running."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await msg.in_progress()
