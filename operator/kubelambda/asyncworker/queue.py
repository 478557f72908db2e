"""Queued events on NATS JetStream: the stream, the subjects, the headers an event carries.

One stream (``KUBELAMBDA_ASYNC``, file storage, work-queue retention: a message is gone once acknowledged)
holds every event on ``kubelambda.async.<namespace>.<function>``. A retry after a function error is a new
message (same request id, the invoke count so far, the time it becomes due), published before the old one is
acknowledged; ``Nats-Msg-Id`` makes that publish idempotent, so a crash between the two duplicates nothing
inside JetStream's duplicate window. Records without a failure destination go to the namespace's dead-letter
stream ``KUBELAMBDA_DLQ_<namespace>`` (``kubelambda.dlq.<namespace>.<function>``).

Both are replicated: ``replicas = min(setting, cluster size)`` (default 3; 1 on a lone server), so a 3-node NATS
keeps every acknowledged event through the loss of any one node. A stream created with fewer replicas (an older
kubelambda, a smaller cluster then) is updated in place; the worker's durable consumer leaves its replica count
unset, so it follows the stream's.

A delivery whose outcome is recorded leaves a marker in the stream ``KUBELAMBDA_ASYNC_DONE`` (one message per
subject ``kubelambda.done.<key>``, a key-value bucket in all but the name: ``$KV`` subjects are not the worker's to
use, docs/security.md; same replicas, kept ``ASYNC_DONE_TTL_SECONDS``) before it is acknowledged, and the worker looks for it before running
an event: JetStream can deliver an acknowledged event again (seen when the node leading the worker's consumer
dies: the new leader had not got some acks; a consumer's ack reply does not wait for its replicas), and the
marker, written like an event (stored on a quorum before the write returns), turns that into an acknowledgement
instead of a second invocation and record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError

from kubelambda import natsauth

logger = logging.getLogger(__name__)

EVENT_PREFIX = "kubelambda.async"
DLQ_PREFIX = "kubelambda.dlq"
REQUEST_ID = "Kubelambda-Request-Id"
FUNCTION = "Kubelambda-Function"  # namespace/name: names may hold dots, so subjects are not parsed
ENQUEUED_AT = "Kubelambda-Enqueued-At"  # epoch seconds when the gateway accepted the event
INVOKE_COUNT = "Kubelambda-Invoke-Count"  # invocations before this delivery
NOT_BEFORE = "Kubelambda-Not-Before"  # epoch seconds; a retry is not due before
TRACEPARENT = "traceparent"  # W3C Trace Context of the event's trace (docs/tracing.md), when there is one
PUBLISH_TIMEOUT_SECONDS = 5.0
# How long "which stream captures this destination subject" is remembered: a stream created for a subject
# later takes effect within this time.
STREAM_LOOKUP_TTL_SECONDS = 10.0
DEFAULT_REPLICAS = 3
# How long a publish goes on trying while no stream answers ("no responders"): a replicated stream whose leader
# died elects another within NATS's election timeout (4-9 s); without quorum, the publish fails after this.
FAILOVER_SECONDS = 12.0
FAILOVER_RETRY_SECONDS = 0.25
DONE_STREAM = "KUBELAMBDA_ASYNC_DONE"
DONE_PREFIX = "kubelambda.done"
DEFAULT_DONE_TTL_SECONDS = 21600.0  # Lambda's longest maximum event age, 6 h
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_=-]{1,200}")
# JetStream's "replicas > 1 not supported in non-clustered mode".
ERR_REPLICAS_NOT_CLUSTERED = 10074


class BadEvent(ValueError):
    """A message on the stream without the headers the gateway writes."""


@dataclass(frozen=True)
class QueuedEvent:
    namespace: str
    function: str
    request_id: str
    payload: bytes
    enqueued_at: float
    invoke_count: int = 0
    not_before: float | None = None
    traceparent: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            REQUEST_ID: self.request_id,
            FUNCTION: f"{self.namespace}/{self.function}",
            ENQUEUED_AT: repr(self.enqueued_at),
            INVOKE_COUNT: str(self.invoke_count),
            "Nats-Msg-Id": f"{self.request_id}:{self.invoke_count}",
        }
        if self.not_before is not None:
            headers[NOT_BEFORE] = repr(self.not_before)
        if self.traceparent:
            headers[TRACEPARENT] = self.traceparent
        return headers

    @classmethod
    def from_message(cls, headers: dict[str, str] | None, payload: bytes) -> QueuedEvent:
        h = headers or {}
        try:
            namespace, _, function = h[FUNCTION].partition("/")
            not_before = h.get(NOT_BEFORE)
            return cls(
                namespace=namespace,
                function=function,
                request_id=h[REQUEST_ID],
                payload=payload,
                enqueued_at=float(h[ENQUEUED_AT]),
                invoke_count=int(h.get(INVOKE_COUNT, "0")),
                not_before=float(not_before) if not_before is not None else None,
                traceparent=h.get(TRACEPARENT),
            )
        except (KeyError, ValueError) as e:
            raise BadEvent(f"not an event the gateway queued ({type(e).__name__}: {e}); headers {h}") from e

    def done_key(self) -> str:
        """This delivery's key in the done markers' stream: one per request id and invoke count (a retry is another
        message, with a key of its own). A request id a key cannot hold is hashed."""
        rid = self.request_id
        if not _PLAIN_KEY.fullmatch(rid):
            rid = "h" + hashlib.sha256(rid.encode()).hexdigest()
        return f"{rid}.{self.invoke_count}"


def _api_error(error: Any) -> Exception:
    """nats-py's typed error for a JetStream API error (its ``from_error`` raises it rather than return it)."""
    try:
        made: Exception = APIError.from_error(
            error if isinstance(error, dict) else {"description": str(error)}
        )
        return made
    except APIError as e:
        return e
    except Exception as e:  # a field nats-py does not know
        return APIError(description=f"{error}: {e}")


def event_subject(namespace: str, function: str) -> str:
    return f"{EVENT_PREFIX}.{namespace}.{function}"


def dlq_stream(namespace: str) -> str:
    return f"KUBELAMBDA_DLQ_{namespace}"


class EventQueue:
    """The JetStream side of asynchronous invocations: publish events, dead-letter records."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        replicas: int = DEFAULT_REPLICAS,
        failover_seconds: float = FAILOVER_SECONDS,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.nc = nc
        self.replicas_setting = replicas
        self.failover_seconds = failover_seconds
        self.js: JetStreamContext = nc.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        self.stream = stream
        self._dlq_ready: set[str] = set()  # only spares an idempotent call; a restart just repeats it
        self._capturing: dict[str, tuple[float, str | None]] = {}  # subject -> (looked up at, stream)
        # Publish acknowledgements of events in flight (see publish): token -> (future, deadline).
        self._acks: dict[str, tuple[asyncio.Future[None], float]] = {}
        # Seconds the event loop ran late (starved on a loaded node): no ack could be read then, so that time does
        # not count against PUBLISH_TIMEOUT_SECONDS (acks over 5 s at load 110 were this process's 6.6 s stalls).
        self._stalled = 0.0
        self._ack_prefix = ""
        self._ack_sub: Subscription | None = None
        self._ack_sweeper: asyncio.Task[None] | None = None
        self._tokens = itertools.count()
        self._ack_lock = asyncio.Lock()
        self._done = False  # the done markers' stream is there (open_done_markers)

    @classmethod
    async def connect(
        cls, url: str, *, stream: str, reconnect: bool = True, replicas: int = DEFAULT_REPLICAS
    ) -> EventQueue:
        """Connects (reconnecting forever after a first success) and makes sure the stream exists.
        ``reconnect=False`` (a command line's one-shot use): the first failure to connect raises, quietly.

        ``url`` may name several servers of one cluster, comma-separated (``nats://a:4222,nats://b:4222``); the
        client also learns the cluster's other servers from the one it reaches and reconnects to any of them.
        """
        servers = [u.strip() for u in url.split(",") if u.strip()]
        # Replies (fetched events, JetStream's answers) come to the platform's own inboxes (kubelambda.natsauth).
        options = natsauth.connect_options(url)
        if reconnect:
            nc = await nats.connect(
                servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, name="kubelambda", **options
            )
        else:
            errors: list[Exception] = []

            async def note(error: Exception) -> None:
                errors.append(error)

            try:
                nc = await nats.connect(
                    servers,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    connect_timeout=3,
                    error_cb=note,
                    name="kubelambda",
                    **options,
                )
            except nats.errors.NoServersError as e:
                raise ConnectionError(str(errors[-1]) if errors else str(e)) from e
        queue = cls(nc, stream=stream, replicas=replicas)
        await queue._ensure_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{EVENT_PREFIX}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )
        return queue

    def cluster_size(self) -> int:
        """Servers in the connected server's cluster, as its INFO lists their client URLs (1 when it is not
        clustered)."""
        info = self.nc._server_info  # the INFO of the server this client is connected to
        if not info.get("cluster"):
            return 1
        return max(1, len(info.get("connect_urls") or []))

    @property
    def replicas(self) -> int:
        """The replica count streams get: ``min(setting, cluster size)``."""
        return min(self.replicas_setting, self.cluster_size())

    async def _ensure_stream(self, config: StreamConfig) -> None:
        config.num_replicas = self.replicas
        try:
            await self._add_or_update(config)
        except APIError as e:
            if e.err_code != ERR_REPLICAS_NOT_CLUSTERED or config.num_replicas == 1:
                raise
            # Clustered INFO from a server whose JetStream is not (a cluster of plain NATS servers).
            config.num_replicas = 1
            await self._add_or_update(config)
        logger.info("JetStream stream %s: %d replica(s)", config.name, config.num_replicas)

    async def _add_or_update(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except BadRequestError as e:
            if e.err_code == ERR_REPLICAS_NOT_CLUSTERED:
                raise
            # It exists with another configuration (an older kubelambda, fewer replicas): bring it to this one
            # in place (JetStream adds replicas to a stream without losing its messages). Never fewer replicas
            # than it has: a node down while this process starts is missing from the count, not gone.
            info = await self.js.stream_info(config.name or self.stream)
            config.num_replicas = max(config.num_replicas or 1, info.config.num_replicas or 1)
            await self.js.update_stream(config)
            logger.info("Updated JetStream stream %s", config.name)

    async def open_done_markers(self, *, ttl_seconds: float = DEFAULT_DONE_TTL_SECONDS) -> None:
        """Creates (or brings to this configuration) the stream of done markers; the worker calls it at start."""
        await self._ensure_stream(
            StreamConfig(
                name=DONE_STREAM,
                subjects=[f"{DONE_PREFIX}.>"],
                storage=StorageType.FILE,
                max_age=ttl_seconds,
                max_msgs_per_subject=1,
                duplicate_window=min(120.0, ttl_seconds),
                # Reads go to the stream's leader: a replica answering a direct get may not have the marker yet.
                allow_direct=False,
            )
        )
        self._done = True

    async def is_done(self, event: QueuedEvent) -> bool:
        """Whether this delivery's outcome was recorded already (see the module's docstring)."""
        if not self._done:
            return False
        try:
            await self.js.get_last_msg(DONE_STREAM, f"{DONE_PREFIX}.{event.done_key()}")
        except NotFoundError:
            return False
        return True

    async def mark_done(self, event: QueuedEvent) -> None:
        """Stores the marker (on a quorum of the stream's replicas) once the outcome is recorded."""
        if self._done:
            await self.js.publish(f"{DONE_PREFIX}.{event.done_key()}", b"", stream=DONE_STREAM)

    async def publish(self, event: QueuedEvent) -> None:
        """Returns once JetStream has stored the event (the publish ack); raises when it refused or did not
        answer within ``PUBLISH_TIMEOUT_SECONDS``, or when no stream answered for ``failover_seconds``.

        "No responders" means no server took the message, so sending it again is safe (and ``Nats-Msg-Id``
        would drop a copy anyway): it is sent again every ``FAILOVER_RETRY_SECONDS`` while a replicated stream
        elects a new leader after losing one, so the loss of one NATS node delays Events instead of refusing
        them.
        """
        await self._while_no_stream(lambda: self._publish_once(event))

    async def _while_no_stream(self, send: Callable[[], Awaitable[Any]]) -> Any:
        """``await send()``, again every ``FAILOVER_RETRY_SECONDS`` for up to ``failover_seconds`` while no stream
        answers: a stream's leader being elected, or a stream just created whose interest has not yet reached
        the server this client is connected to (a clustered NATS spreads it over its routes asynchronously)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_seconds
        while True:
            try:
                return await send()
            except NoStreamResponseError:
                if loop.time() + FAILOVER_RETRY_SECONDS >= deadline:
                    raise
                await asyncio.sleep(FAILOVER_RETRY_SECONDS)

    async def _publish_once(self, event: QueuedEvent) -> None:
        """One publish and its ack.

        The same exchange as ``JetStreamContext.publish`` (a message with a reply subject, the stream's ack to
        it), leaner per event because this is the Event hot path (every 202 waits for it): acks arrive on one
        inbox subscription and resolve their future by a counter token (no random token per publish), one
        sweeper expires late ones (no ``asyncio.wait_for`` per publish), and a successful ack is recognised
        without decoding its JSON. Many publishes are in flight at once on the one connection.
        """
        if self._ack_sub is None:
            await self._subscribe_acks()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._acks[token] = (future, loop.time() - self._stalled + PUBLISH_TIMEOUT_SECONDS)
        headers = event.headers()
        headers["Nats-Expected-Stream"] = self.stream
        try:
            await self.nc.publish(
                event_subject(event.namespace, event.function),
                event.payload,
                reply=self._ack_prefix + token,
                headers=headers,
            )
            await future
        finally:
            self._acks.pop(token, None)

    async def _subscribe_acks(self) -> None:
        async with self._ack_lock:
            if self._ack_sub is None:
                await self._subscribe_acks_once()

    async def _subscribe_acks_once(self) -> None:
        prefix = self.nc.new_inbox() + "."
        self._ack_sub = await self.nc.subscribe(prefix + "*", cb=self._on_ack)
        self._ack_prefix = prefix
        self._ack_sweeper = asyncio.create_task(self._expire_acks(), name="JetStream publish ack timeouts")

    async def _on_ack(self, msg: Msg) -> None:
        found = self._acks.pop(msg.subject[len(self._ack_prefix) :], None)
        if found is None or found[0].done():
            return  # expired already
        future = found[0]
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStreamResponseError())  # no stream took the subject
        elif data[:2] == b'{"' and b'"error"' not in data:
            future.set_result(None)  # {"stream": "...", "seq": N[, "duplicate": true]}
        else:
            try:
                answer = json.loads(data)
            except ValueError:
                answer = {"error": {"description": f"not a publish ack: {data[:200]!r}"}}
            if isinstance(answer, dict) and "error" in answer:
                future.set_exception(_api_error(answer["error"]))
            else:
                future.set_result(None)

    async def _expire_acks(self) -> None:
        """Fails the acks that did not come in time. Every publish waits the same time, so the dict (in
        insertion order) is also in deadline order: only its expired head is looked at."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.25)
            now = loop.time()
            self._stalled += max(now - last - 0.25, 0.0)
            last = now
            now -= self._stalled
            expired = []
            for token, (future, deadline) in self._acks.items():
                if deadline > now:
                    break
                expired.append(token)
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError())
            for token in expired:
                self._acks.pop(token, None)

    async def dead_letter(self, namespace: str, function: str, record: dict[str, Any], *, why: str) -> None:
        stream = dlq_stream(namespace)
        if stream not in self._dlq_ready:
            await self._ensure_stream(
                StreamConfig(name=stream, subjects=[f"{DLQ_PREFIX}.{namespace}.>"], storage=StorageType.FILE)
            )
            self._dlq_ready.add(stream)
        await self._while_no_stream(
            lambda: self.js.publish(
                f"{DLQ_PREFIX}.{namespace}.{function}",
                json.dumps(record).encode(),
                stream=stream,
                headers={"Kubelambda-Dead-Letter-Reason": why},
            )
        )

    async def publish_record(self, subject: str, body: bytes, *, key: str, now: float) -> str | None:
        """Publishes an invocation record to a destination subject; returns the stream that stored it.

        When a JetStream stream captures the subject, the record is published through JetStream and this
        returns only after the stream's acknowledgement (the record is durable, like an Event), with
        ``Nats-Msg-Id`` = ``key`` (the record's key, the same when a redelivered event sends it again): the stream
        stores it once within its duplicate window, even when a worker died between this publish and the event's
        done marker. Otherwise it is
        a plain NATS publish followed by a flush: the server has taken it and handed it to the subscribers
        present at that moment, at most once (core NATS keeps nothing). A JetStream publish to a subject no
        stream captures would wait for an ack that never comes when a plain subscriber listens, so which case
        applies is looked up (and remembered for ``STREAM_LOOKUP_TTL_SECONDS``).
        """
        stream = await self._capturing_stream(subject, now=now)
        if stream is not None:
            await self.js.publish(subject, body, stream=stream, headers={"Nats-Msg-Id": key})
            return stream
        await self.nc.publish(subject, body)
        await self.nc.flush(timeout=int(PUBLISH_TIMEOUT_SECONDS))
        return None

    async def _capturing_stream(self, subject: str, *, now: float) -> str | None:
        known = self._capturing.get(subject)
        if known is not None and now - known[0] < STREAM_LOOKUP_TTL_SECONDS:
            return known[1]
        try:
            stream: str | None = await self.js.find_stream_name_by_subject(subject)
        except NotFoundError:
            stream = None
        self._capturing[subject] = (now, stream)
        return stream

    async def close(self) -> None:
        if self._ack_sweeper is not None:
            self._ack_sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack_sweeper
        await self.nc.drain()
