"""Pure parts of the stream bridges: record shaping, batch cutting and what to do after an invocation.

Nothing here talks to a broker or reads a clock: the per-shard loop in ``_core`` passes ``now`` in and applies
the :class:`Plan` it gets back. The semantics are those of Lambda's Kinesis / Kafka event source mappings:

- a shard's records are processed in order, one batch at a time (``parallelizationFactor`` > 1 splits a shard
  into lanes by partition key, each lane in order);
- a batch that fails is retried, blocking its shard, until ``maximumRetryAttempts`` (-1 = forever) or until its
  records are older than ``maximumRecordAgeSeconds`` (-1 = never); then its records are discarded, reported to
  the on-failure destination, and the shard moves on;
- ``bisectBatchOnFunctionError`` splits a failing batch in two instead of retrying it whole; a split does not
  use up a retry, so a poison record ends up alone and only it is discarded;
- with ``reportBatchItemFailures`` a response ``{"batchItemFailures": [{"itemIdentifier": "<seq>"}]}`` marks
  every record before the lowest failed sequence number as done and retries from there; an identifier that
  is missing, empty or not in the batch fails the whole batch (as Lambda does);
- throttles and platform errors (gateway 5xx, unreachable) are retried with backoff without using up retries.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

from kubelambda.jsonobj import JSON

# Sync invocations carry at most 6 MB (Lambda's limit); keep room for the envelope of each record.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 - 64 * 1024
RECORD_OVERHEAD_BYTES = 512
RETRY_BASE_SECONDS = 0.25
RETRY_MAX_SECONDS = 30.0
THROTTLE_BASE_SECONDS = 0.1
THROTTLE_MAX_SECONDS = 10.0

RETRIES_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"


@dataclass(slots=True)
class StreamRecord:
    """One record of a shard, as every source normalizes it (never changed once made; not frozen only because a
    frozen dataclass's construction costs several times more, once per record).

    ``position`` is the source's own checkpoint token (a Kafka offset, a NATS stream sequence, a Redis entry
    id); it never reaches the function.
    """

    shard: str
    sequence: str
    partition_key: str
    data: bytes
    arrival: float
    """Approximate arrival time (epoch seconds) as the broker stamped it."""
    position: Any = None


@dataclass(frozen=True)
class SourceInfo:
    """What every record of a source says about where it came from."""

    event_source: str
    """``aws:kinesis`` for Kinesis, ``kubelambda:<broker>`` for the others."""
    event_source_arn: str
    invoke_identity_arn: str
    region: str
    batch_info_key: str = "KinesisBatchInfo"
    """The key of the on-failure record's batch information (``DDBStreamBatchInfo`` for change streams)."""


@dataclass(frozen=True)
class Policy:
    """The Trigger's retry settings (``spec.stream``)."""

    maximum_retry_attempts: int = -1
    maximum_record_age_seconds: int = -1
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False


def shard_id(index: int) -> str:
    """Kinesis-style shard id, also used for Kafka partitions and the single shard of Redis and NATS."""
    return f"shardId-{index:012d}"


def kinesis_record(record: StreamRecord, source: SourceInfo) -> JSON:
    """One element of ``Records``: Kinesis's shape for every stream source (data always base64)."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key,
            "sequenceNumber": record.sequence,
            "data": base64.b64encode(record.data).decode("ascii"),
            "approximateArrivalTimestamp": round(record.arrival, 3),
        },
        "eventSource": source.event_source,
        "eventVersion": "1.0",
        "eventID": f"{record.shard}:{record.sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": source.invoke_identity_arn,
        "awsRegion": source.region,
        "eventSourceARN": source.event_source_arn,
    }


def event(records: Sequence[StreamRecord], source: SourceInfo) -> JSON:
    return {"Records": [kinesis_record(r, source) for r in records]}


class EventEncoder:
    """The event of a batch as the function receives it: byte for byte ``dumps(event(batch, source))``, written
    straight as text from templates of the source's constant fields instead of building two dicts per record
    and encoding them (a third of the Kafka bridge's CPU per record went there)."""

    def __init__(self, source: SourceInfo) -> None:
        quote = encode_basestring_ascii  # json's own string encoder (ensure_ascii, as dumps)
        self.middle = f',"eventSource":{quote(source.event_source)},"eventVersion":"1.0","eventID":'
        self.end = (
            f',"eventName":"aws:kinesis:record","invokeIdentityArn":{quote(source.invoke_identity_arn)}'
            f',"awsRegion":{quote(source.region)},"eventSourceARN":{quote(source.event_source_arn)}}}'
        )

    def encode(self, records: Sequence[StreamRecord]) -> bytes:
        quote, b64, middle, end = encode_basestring_ascii, binascii.b2a_base64, self.middle, self.end
        text = ",".join(
            [
                f'{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":{quote(r.partition_key)}'
                f',"sequenceNumber":{quote(r.sequence)},"data":"{b64(r.data, newline=False).decode()}"'
                f',"approximateArrivalTimestamp":{round(r.arrival, 3)!r}}}'
                f"{middle}{quote(f'{r.shard}:{r.sequence}')}{end}"
                for r in records
            ]
        )
        return f'{{"Records":[{text}]}}'.encode()


def record_size(record: StreamRecord) -> int:
    """Bytes a record adds to the event: base64 data plus the envelope."""
    return (
        (len(record.data) + 2) // 3 * 4
        + len(record.partition_key)
        + len(record.sequence)
        + RECORD_OVERHEAD_BYTES
    )


def cut(records: Sequence[StreamRecord], *, batch_size: int, max_bytes: int = MAX_PAYLOAD_BYTES) -> int:
    """How many records from the front make the next batch: at most ``batch_size`` and ``max_bytes``, never 0
    when there is a record (a single oversized record is sent alone; the gateway answers 413 and it is
    retried and discarded like any failing record)."""
    total = 0
    for i, record in enumerate(records[:batch_size]):
        total += record_size(record)
        if total > max_bytes and i > 0:
            return i
    return min(len(records), batch_size)


def lane_of(partition_key: str, lanes: int) -> int:
    """The lane (0..lanes-1) of a partition key: stable across processes (not Python's salted ``hash``)."""
    if lanes <= 1:
        return 0
    digest = hashlib.blake2b(partition_key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % lanes


def expired_prefix(records: Sequence[StreamRecord], *, maximum_record_age_seconds: int, now: float) -> int:
    """How many records at the front are older than the maximum age (-1 = never) and must be discarded
    before the next attempt. Arrival times are in shard order, so expired records form a prefix; a record
    stamped out of order (clock skew between producers) stops the prefix, which only delays its discard."""
    if maximum_record_age_seconds < 0:
        return 0
    n = 0
    for record in records:
        if now - record.arrival <= maximum_record_age_seconds:
            break
        n += 1
    return n


class Outcome(enum.Enum):
    SUCCESS = "success"
    PARTIAL = "partial"
    FUNCTION_ERROR = "function_error"
    RETRYABLE = "retryable"
    """Throttled or a platform error: not the function's fault, does not use up retries."""


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    first_failed: int = 0
    """For ``PARTIAL``: index in the batch of the lowest failed sequence number."""
    failed_count: int = 0
    """Records the function reported failed (``PARTIAL``) or the batch size (``FUNCTION_ERROR``)."""


def classify(
    *,
    status: int,
    function_error: str | None,
    response: Any,
    batch: Sequence[StreamRecord],
    report_batch_item_failures: bool,
) -> Result:
    """What an invocation's answer means for the batch.

    ``status`` 0 / 5xx / 429 → retryable; 413 (the batch is too large to send) counts as a function error so
    it bisects or is discarded after the retries instead of blocking the shard forever.
    """
    if status == 429 or status == 0 or (status >= 500 and function_error is None):
        return Result(Outcome.RETRYABLE)
    if function_error is not None or status not in (200, 202, 204):
        return Result(Outcome.FUNCTION_ERROR, failed_count=len(batch))
    if not report_batch_item_failures or not isinstance(response, dict):
        return Result(Outcome.SUCCESS)
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return Result(Outcome.SUCCESS)
    if not isinstance(failures, list):
        return Result(Outcome.FUNCTION_ERROR, failed_count=len(batch))
    index = {r.sequence: i for i, r in enumerate(batch)}
    positions: list[int] = []
    for item in failures:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in index:
            return Result(Outcome.FUNCTION_ERROR, failed_count=len(batch))
        positions.append(index[ident])
    return Result(Outcome.PARTIAL, first_failed=min(positions), failed_count=len(set(positions)))


@dataclass(frozen=True)
class Piece:
    """A run of consecutive records of one lane, with the failed attempts it has had so far."""

    records: tuple[StreamRecord, ...]
    attempts: int = 0
    """Invocations of these records that failed (function errors and partial failures)."""
    throttles: int = 0
    """Consecutive retryable failures (for their backoff only)."""
    first_failure: float | None = None


@dataclass(frozen=True)
class Plan:
    """What to do after one invocation of a piece."""

    done: int
    """Records at the front of the piece that succeeded: checkpoint through them."""
    discard: int = 0
    """Records after those that are given up on (to the on-failure destination), then checkpointed."""
    reason: str = ""
    retry: tuple[Piece, ...] = ()
    """Pieces to process next, in order, before anything else of the lane."""
    delay: float = 0.0
    """Seconds to wait before the next invocation of the lane."""


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """``base``·2^(attempt-1), capped: 0.25, 0.5, 1, 2, ... s for function errors."""
    if attempt <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(attempt - 1, 30)))


def plan(piece: Piece, result: Result, policy: Policy, *, now: float) -> Plan:
    """The decision after invoking ``piece`` (pure; ``now`` only stamps the first failure)."""
    records = piece.records
    n = len(records)
    if result.outcome is Outcome.SUCCESS:
        return Plan(done=n)
    first_failure = piece.first_failure if piece.first_failure is not None else now
    if result.outcome is Outcome.RETRYABLE:
        throttles = piece.throttles + 1
        again = Piece(records, piece.attempts, throttles, piece.first_failure)
        return Plan(
            done=0,
            retry=(again,),
            delay=backoff(throttles, base=THROTTLE_BASE_SECONDS, cap=THROTTLE_MAX_SECONDS),
        )
    if result.outcome is Outcome.PARTIAL:
        done = result.first_failed
        rest = records[done:]
    else:
        done = 0
        rest = records
        if policy.bisect_batch_on_function_error and n > 1:
            # A split is not a retry: each half keeps the attempts the whole had.
            half = n // 2
            return Plan(
                done=0,
                retry=(
                    Piece(records[:half], piece.attempts, 0, first_failure),
                    Piece(records[half:], piece.attempts, 0, first_failure),
                ),
            )
    attempts = piece.attempts + 1
    if 0 <= policy.maximum_retry_attempts < attempts:
        return Plan(done=done, discard=len(rest), reason=RETRIES_EXHAUSTED)
    return Plan(
        done=done,
        retry=(Piece(rest, attempts, 0, first_failure),),
        delay=backoff(attempts, base=RETRY_BASE_SECONDS, cap=RETRY_MAX_SECONDS),
    )


@dataclass
class FailureInfo:
    """What the on-failure record says about the last attempt."""

    request_id: str = ""
    status: int = 0
    function_error: str | None = None
    invoke_count: int = 0
    extra: JSON = field(default_factory=dict)


def failure_record(
    records: Sequence[StreamRecord],
    *,
    condition: str,
    function_arn: str,
    stream_arn: str,
    info: FailureInfo,
    timestamp: str,
    batch_info_key: str = "KinesisBatchInfo",
) -> JSON:
    """Lambda's on-failure record for stream sources: invocation metadata and ``KinesisBatchInfo`` (or
    ``DDBStreamBatchInfo``) naming the discarded records (the records themselves stay in the stream, as with Lambda)."""
    first, last = records[0], records[-1]
    return {
        "requestContext": {
            "requestId": info.request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": info.invoke_count,
        },
        "responseContext": {
            "statusCode": info.status,
            "executedVersion": "$LATEST",
            "functionError": info.function_error or "",
        },
        "version": "1.0",
        "timestamp": timestamp,
        batch_info_key: {
            "shardId": first.shard,
            "startSequenceNumber": first.sequence,
            "endSequenceNumber": last.sequence,
            "approximateArrivalOfFirstRecord": iso_millis(first.arrival),
            "approximateArrivalOfLastRecord": iso_millis(last.arrival),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }


def iso_millis(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def dumps(obj: JSON) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
