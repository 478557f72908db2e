"""Function logs kept past their pods: NATS JetStream, one stream per namespace (docs/logs.md).

Every function pod's agent publishes each log line as a JSON record on
``kubelambda.logs.<namespace>.<function>.<request id>`` (``none`` outside an invocation), a request's consecutive
records in one message, one record a line. The stream
``KUBELAMBDA_LOGS_<NAMESPACE>`` (file storage, limits retention: records go when older than the namespace's
retention, or the oldest first past its size limit) keeps them; the operator makes it for every namespace with a
Function. Reading filters by subject (function, request id) and by the stream's time (``--since``), so a
query reads only the records of one function, from the start of its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from kubelambda import natsauth

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "kubelambda.logs"
STREAM_PREFIX = "KUBELAMBDA_LOGS_"
NO_REQUEST = "none"  # the subject token of lines outside an invocation (the agent's own, a runtime's init)
BATCH = "batch"  # the subject token of a message with several requests' records (the agent's batches)
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL"}
# The Python runtime's text format: "[INFO]\t2024-01-01T00:00:00.000Z\t<request id>\tmessage"; the Node.js
# runtime's: "2024-01-01T00:00:00.000Z\t<request id>\tINFO\tmessage".
_TEXT_LEVEL = re.compile(r"^\[([A-Z]+)\]\t|^\d{4}-\d\d-\d\dT[^\t]*\t[^\t]*\t([A-Z]+)\t")
# Lambda's JSON system records (LoggingConfig JSON, docs/logs.md) and their level.
_PLATFORM_LEVELS = {"platform.runtimeDone": "DEBUG"}
_TOKEN = re.compile(r"[.\s*>]")


class LogStoreError(Exception):
    """The log store cannot answer (not reachable, no stream for the namespace)."""


def token(value: str) -> str:
    """A subject token as the agent writes it: dots, blanks and wildcards become ``_``."""
    return _TOKEN.sub("_", value) if value else "_"


def stream_name(namespace: str) -> str:
    """``KUBELAMBDA_LOGS_<NAMESPACE>``: a namespace is a DNS label, so ``-`` → ``_`` keeps names apart."""
    return STREAM_PREFIX + namespace.upper().replace("-", "_")


def subject(namespace: str, function: str = "*", request_id: str = "*") -> str:
    fn = function if function == "*" else token(function)
    rid = request_id if request_id == "*" else token(request_id)
    return f"{SUBJECT_PREFIX}.{token(namespace)}.{fn}.{rid}"


@dataclass(frozen=True)
class LogRecord:
    time: datetime
    namespace: str
    function: str
    version: str
    request_id: str
    pod: str
    stream: str
    message: str
    truncated: bool = False

    @classmethod
    def from_json(cls, data: bytes) -> LogRecord:
        raw = json.loads(data)
        return cls(
            time=datetime.fromisoformat(raw["time"]),
            namespace=raw.get("namespace", ""),
            function=raw.get("function", ""),
            version=raw.get("version", ""),
            request_id=raw.get("requestId", ""),
            pod=raw.get("pod", ""),
            stream=raw.get("stream", "stdout"),
            message=raw.get("message", ""),
            truncated=bool(raw.get("truncated", False)),
        )

    @property
    def level(self) -> str | None:
        """The level of a JSON log line (``{"level": "ERROR", ...}``, Lambda's JSON log format; a JSON platform
        record is INFO, ``platform.runtimeDone`` DEBUG) or of the Python and Node.js runtimes' text formats
        (``[ERROR]\\t...``, ``<time>\\t<id>\\tERROR\\t...``); None for other lines."""
        text = self.message
        found: str | None = None
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(text)
                if isinstance(doc, dict) and isinstance(doc.get("level"), str):
                    found = doc["level"].upper()
                elif isinstance(doc, dict) and str(doc.get("type", "")).startswith("platform."):
                    found = _PLATFORM_LEVELS.get(doc["type"], "INFO")
        else:
            m = _TEXT_LEVEL.match(text)
            if m:
                found = m.group(1) or m.group(2)
        if found is None:
            return None
        found = _LEVEL_ALIASES.get(found, found)
        return found if found in LEVELS else None


def check_level(level: str) -> str:
    up = _LEVEL_ALIASES.get(level.upper(), level.upper())
    if up not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: want one of {', '.join(LEVELS)}")
    return up


@dataclass(frozen=True)
class LogQuery:
    """What to read: one Function's records, optionally one request's, in a time window, matching a filter."""

    namespace: str
    function: str
    request_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    contains: str | None = None  # a substring of the message
    level: str | None = None  # at least this level (records with a level only)

    def subjects(self) -> list[str]:
        """What to read: one request's subject and the function's batches (messages of several requests'
        records, which :meth:`keep` filters), or all of the function's."""
        if self.request_id:
            return [subject(self.namespace, self.function, r) for r in (self.request_id, BATCH)]
        return [subject(self.namespace, self.function)]

    def keep(self, record: LogRecord) -> bool:
        if self.request_id and (record.request_id or NO_REQUEST) != self.request_id:
            return False  # another request's record in a batch
        if self.contains is not None and self.contains not in record.message:
            return False
        if self.level is not None:
            level = record.level
            if level is None or LEVELS.index(level) < LEVELS.index(self.level):
                return False
        return True


@dataclass(frozen=True)
class Retention:
    """How long (and how much) a namespace's stream keeps: the chart's ``logs.retention`` and its overrides."""

    max_age_seconds: float = DEFAULT_RETENTION_SECONDS
    max_bytes: int = -1  # -1: no size limit
    by_namespace: Mapping[str, float] = field(default_factory=dict)  # namespace → max age, seconds

    def max_age(self, namespace: str) -> float:
        return float(self.by_namespace.get(namespace, self.max_age_seconds))


def stream_config(namespace: str, retention: Retention) -> StreamConfig:
    return StreamConfig(
        name=stream_name(namespace),
        subjects=[f"{SUBJECT_PREFIX}.{token(namespace)}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=retention.max_age(namespace),
        max_bytes=retention.max_bytes,
        description=f"kubelambda function logs of namespace {namespace} (docs/logs.md)",
    )


async def ensure_stream(nc: NATS, namespace: str, retention: Retention) -> None:
    """Makes (or updates the limits of) the namespace's log stream; idempotent."""
    js = nc.jetstream()
    config = stream_config(namespace, retention)
    try:
        info = await js.stream_info(stream_name(namespace))
    except NotFoundError:
        await js.add_stream(config)
        return
    have = info.config
    if (have.max_age, have.max_bytes) != (config.max_age, config.max_bytes):
        await js.update_stream(config)


class LogStreams:
    """The operator's side: one connection to the platform's NATS, each namespace's stream made once per run
    (again after a failure). A log store that is down never fails a Function's reconcile: the agents count
    what they could not ship (``kubelambda_agent_log_records_dropped_total``)."""

    def __init__(self, url: str, retention: Retention) -> None:
        self.url = url
        self.retention = retention
        self._nc: NATS | None = None
        self._done: set[str] = set()
        self._lock = asyncio.Lock()

    async def ensure(self, namespace: str) -> bool:
        if namespace in self._done:
            return True
        async with self._lock:
            if namespace in self._done:
                return True
            try:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await nats.connect(
                        natsauth.servers(self.url),
                        connect_timeout=2,
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                        **natsauth.connect_options(self.url),
                    )
                await ensure_stream(self._nc, namespace, self.retention)
            except (OSError, TimeoutError, nats.errors.Error) as e:
                logger.warning(
                    "Could not make the log stream of namespace %s at %s: %s",
                    namespace,
                    natsauth.redacted(self.url),
                    e,
                )
                return False
            self._done.add(namespace)
            return True

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


@dataclass(frozen=True)
class StreamState:
    exists: bool
    messages: int = 0
    first: datetime | None = None
    max_age_seconds: float = 0.0


async def stream_state(nc: NATS, namespace: str) -> StreamState:
    js = nc.jetstream()
    name = stream_name(namespace)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return StreamState(exists=False)
    first: datetime | None = None
    if info.state.messages:
        with contextlib.suppress(NotFoundError):  # removed by retention meanwhile
            first = (await js.get_msg(name, seq=info.state.first_seq, next=True)).time
    return StreamState(True, info.state.messages, first, float(info.config.max_age or 0))


async def read(
    nc: NATS, query: LogQuery, *, follow: bool = False, batch: int = 500
) -> AsyncIterator[LogRecord]:
    """The query's records in the order they were stored; with ``follow``, then new ones until cancelled.

    An ephemeral pull consumer (memory storage, no acks) filtered on the query's subject, from ``since`` (the
    stream's time); it is deleted at the end. Without ``follow`` it reads the records pending when it was made
    and stops at the first stored after ``until``."""
    js = nc.jetstream()
    name = stream_name(query.namespace)
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=60.0,
        deliver_policy=DeliverPolicy.BY_START_TIME if query.since is not None else DeliverPolicy.ALL,
        opt_start_time=query.since,
    )
    subjects = query.subjects()
    if len(subjects) > 1:
        config.filter_subjects = subjects
    try:
        sub = await js.pull_subscribe(subjects[0], stream=name, config=config)
    except NotFoundError as e:
        raise LogStoreError(f"no log stream {name} for namespace {query.namespace}") from e
    consumer: str | None = None
    try:
        info = await sub.consumer_info()
        consumer = info.name
        left = int(info.num_pending or 0)
        while left > 0 or follow:
            try:
                msgs = await sub.fetch(min(batch, left) if left > 0 else batch, timeout=5 if left > 0 else 1)
            except nats.errors.TimeoutError:
                if left > 0:  # pending records that did not come: the stream dropped them meanwhile
                    info = await sub.consumer_info()
                    left = int(info.num_pending or 0)
                continue
            for msg in msgs:
                left -= 1
                stored = msg.metadata.timestamp
                if query.until is not None and stored is not None and not follow and stored > query.until:
                    return
                for record in records_of(msg.data, msg.subject):
                    if query.keep(record):
                        yield record
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if consumer is not None:  # else the server removes it after inactive_threshold
            with contextlib.suppress(Exception):
                await js.delete_consumer(name, consumer)


def records_of(data: bytes, subject: str = "") -> list[LogRecord]:
    """The records of one stored message: the agent sends a batch's consecutive records of one function as one
    message, one JSON record a line (a record's own newlines are escaped)."""
    out = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(LogRecord.from_json(line))
        except (ValueError, KeyError, TypeError):
            logger.warning("Skipped a record that is not a log record on %s", subject)
    return out


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """``--since`` / ``--until``: a duration ago (``90s``, ``10m``, ``2h``, ``7d``) or an ISO 8601 time (UTC when
    it has no offset)."""
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - timedelta(seconds=float(m.group(1)) * unit)
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}: want a duration ago (30s, 10m, 2h, 7d) or an ISO 8601 time"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def format_record(record: LogRecord, *, prefix: bool) -> str:
    line = record.message + (" [truncated]" if record.truncated else "")
    return f"[{record.pod}] {line}" if prefix else line


def describe_window(since: datetime | None, until: datetime | None) -> str:
    def show(t: datetime) -> str:
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    if since and until:
        return f"between {show(since)} and {show(until)}"
    if since:
        return f"since {show(since)}"
    if until:
        return f"until {show(until)}"
    return "in the store"


def why_empty(query: LogQuery, state: StreamState) -> str:
    """Why a query found nothing, for the user: no stream, nothing kept that far back, or nothing matched."""
    what = f"Function {query.namespace}/{query.function}"
    if query.request_id:
        what = f"request {query.request_id} of {what}"
    window = describe_window(query.since, query.until)
    if not state.exists:
        return (
            f"No log records for {what}: namespace {query.namespace} has no log stream yet "
            "(no Function there was reconciled with log shipping on)."
        )
    days = state.max_age_seconds / 86400 if state.max_age_seconds else 0
    kept = f"retention {days:g} days" if days else "no age limit"
    if state.messages == 0 or state.first is None:
        return f"No log records for {what}: the namespace's log stream is empty ({kept})."
    oldest = state.first.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if query.since is None or query.since < state.first:
        reason = f"no invocation logged {window}; the oldest record kept is from {oldest} ({kept})"
    else:
        reason = f"no invocation logged {window}"
    if query.contains or query.level:
        reason += " that matches the filter"
    return f"No log records for {what}: {reason}."


def to_jsonable(record: LogRecord) -> dict[str, Any]:
    return {
        "time": record.time.isoformat(),
        "namespace": record.namespace,
        "function": record.function,
        "version": record.version,
        "requestId": record.request_id,
        "pod": record.pod,
        "stream": record.stream,
        "message": record.message,
    }
