"""Pure decisions of the queue bridges: record shaping, batch limits, what to do with a batch's answer, backoff.

No broker, no clock, no I/O: every function here takes what it needs and is table-tested
(tests/unit/test_queue_batch.py). ``_core.py`` applies the decisions; the broker modules translate them into
acks, nacks, deletes and claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from kubelambda.jsonobj import JSON

# Lambda caps a synchronous request at 6 MB; leave room for the envelope of each record.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
RECORD_OVERHEAD_BYTES = 1024
BODY_ENCODING_ATTRIBUTE = "kubelambda.bodyEncoding"


@dataclass
class Message:
    """One message as the broker handed it over, before it is shaped into an SQS-style record.

    ``handle`` is the broker's own object (an aio-pika message, a NATS message, a Redis entry id, an SQS receipt
    handle) and is never looked at here.
    """

    message_id: str
    body: bytes
    receive_count: int = 1
    sent_timestamp_ms: int = 0
    first_receive_timestamp_ms: int = 0
    sender_id: str = ""
    message_attributes: JSON = field(default_factory=dict)
    receipt_handle: str = ""
    md5_of_body: str | None = None
    handle: Any = None


def decode_body(body: bytes) -> tuple[str, bool]:
    """The body as SQS text: UTF-8 as is; anything else base64 (second value True).

    >>> decode_body(b"caf\\xc3\\xa9")
    ('café', False)
    >>> decode_body(b"\\xff\\x00")
    ('/wA=', True)
    """
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def string_attribute(value: str) -> JSON:
    """An SQS message attribute of type String, in the event's lower-camel shape."""
    return {
        "stringValue": value,
        "binaryValue": None,
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }


def binary_attribute(value: bytes) -> JSON:
    return {
        "stringValue": None,
        "binaryValue": base64.b64encode(value).decode("ascii"),
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Binary",
    }


def attribute(value: str | bytes) -> JSON:
    """A header value as a message attribute: String when it is text, Binary when it is not."""
    if isinstance(value, str):
        return string_attribute(value)
    text, is_binary = decode_body(value)
    return binary_attribute(value) if is_binary else string_attribute(text)


def to_record(message: Message, *, event_source: str, event_source_arn: str, region: str) -> JSON:
    """One SQS-shaped record (Lambda's SQS event) for ``message``. The bridges write records with
    :func:`record_json` (the same text, without the dicts); this is its readable definition and its test oracle.

    A body that is not UTF-8 is sent base64-encoded, and the record then carries the message attribute
    ``kubelambda.bodyEncoding = base64`` so a handler can tell. ``md5OfBody`` is the MD5 of the body's bytes as
    they came from the broker (for UTF-8 text, the same as SQS's MD5 of the body string) unless the broker sent
    its own (SQS).
    """
    body, is_binary = decode_body(message.body)
    attributes = dict(message.message_attributes)
    if is_binary:
        attributes[BODY_ENCODING_ATTRIBUTE] = string_attribute("base64")
    return {
        "messageId": message.message_id,
        "receiptHandle": message.receipt_handle or message.message_id,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": str(message.sent_timestamp_ms),
            "SenderId": message.sender_id,
            "ApproximateFirstReceiveTimestamp": str(
                message.first_receive_timestamp_ms or message.sent_timestamp_ms
            ),
        },
        "messageAttributes": dict(sorted(attributes.items())),
        "md5OfBody": message.md5_of_body or hashlib.md5(message.body, usedforsecurity=False).hexdigest(),
        "eventSource": event_source,
        "eventSourceARN": event_source_arn,
        "awsRegion": region,
    }


def record_tail(*, event_source: str, event_source_arn: str, region: str) -> str:
    """The end of every record of one bridge (its source, ARN and region), for :func:`record_json`."""
    return (
        f', "eventSource": {_quote(event_source)}, "eventSourceARN": {_quote(event_source_arn)},'
        f' "awsRegion": {_quote(region)}}}'
    )


def record_json(message: Message, tail: str) -> str:
    """``json.dumps(to_record(message, ...))``, the same text, written directly: the record's dicts and their
    generic encoding cost 2-4 times as much CPU (at batch 10 and 100 a tenth of a queue bridge's samples).
    ``tail`` is :func:`record_tail` of the bridge."""
    body, is_binary = decode_body(message.body)
    attributes = message.message_attributes
    if is_binary:
        attributes = {**attributes, BODY_ENCODING_ATTRIBUTE: string_attribute("base64")}
    md5 = message.md5_of_body or hashlib.md5(message.body, usedforsecurity=False).hexdigest()
    return "".join(
        (
            '{"messageId": ',
            _quote(message.message_id),
            ', "receiptHandle": ',
            _quote(message.receipt_handle or message.message_id),
            ', "body": ',
            _quote(body),
            ', "attributes": {"ApproximateReceiveCount": ',
            _quote(str(message.receive_count)),
            ', "SentTimestamp": ',
            _quote(str(message.sent_timestamp_ms)),
            ', "SenderId": ',
            _quote(message.sender_id),
            ', "ApproximateFirstReceiveTimestamp": ',
            _quote(str(message.first_receive_timestamp_ms or message.sent_timestamp_ms)),
            '}, "messageAttributes": ',
            json.dumps(dict(sorted(attributes.items()))) if attributes else "{}",
            ', "md5OfBody": ',
            _quote(md5),
            tail,
        )
    )


def records_event(records: Sequence[str]) -> bytes:
    """The event ``{"Records": [...]}`` of records written by :func:`record_json`."""
    return ('{"Records": [' + ", ".join(records) + "]}").encode()


def unique_ids(messages: Sequence[Message]) -> None:
    """Makes message ids unique within a batch (``batchItemFailures`` name messages by id).

    A broker id is unique already (NATS sequence, Redis entry id, SQS MessageId); a publisher-chosen id
    (RabbitMQ ``message_id``) may repeat, and the later copies get ``#2``, ``#3``...
    """
    seen: dict[str, int] = {}
    for message in messages:
        n = seen.get(message.message_id, 0) + 1
        seen[message.message_id] = n
        if n > 1:
            message.message_id = f"{message.message_id}#{n}"


def record_size(message: Message) -> int:
    """Bytes a message adds to the invocation payload (base64 grows a binary body by 4/3)."""
    attributes = len(json.dumps(message.message_attributes)) if message.message_attributes else 2
    return len(message.body) * 4 // 3 + RECORD_OVERHEAD_BYTES + attributes


@dataclass(frozen=True)
class BatchLimits:
    """When a batch being gathered is complete (Lambda's BatchSize, MaximumBatchingWindowInSeconds, 6 MB)."""

    batch_size: int
    window_seconds: float
    max_bytes: int = MAX_PAYLOAD_BYTES

    def full(self, *, count: int, size: int) -> bool:
        return count >= self.batch_size or size >= self.max_bytes

    def done(self, *, count: int, size: int, started: float, now: float) -> bool:
        """Full, or the window since the first message has passed (with a window of 0: as soon as one
        fetch returned something)."""
        if self.full(count=count, size=size):
            return True
        return count > 0 and now - started >= self.window_seconds

    def fits(self, *, size: int, adding: int, count: int) -> bool:
        """A message of ``adding`` bytes may join: always the first, then while under the byte cap."""
        return count == 0 or size + adding <= self.max_bytes


class Outcome(Enum):
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILURE = "failure"  # the function ran and failed: the whole batch goes back, counted as a delivery
    NOT_DELIVERED = "not_delivered"  # throttled or platform error: hold the batch, back off, invoke again


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    ack: tuple[str, ...]
    retry: tuple[str, ...]
    reason: str = ""


def _failed_ids(response: Any, ids: Sequence[str]) -> tuple[str, ...] | None:
    """The ids a partial-batch response names, or None when the response is invalid (whole batch failed).

    Lambda's rules: a null/empty response, a missing/null/empty ``batchItemFailures`` list all mean success;
    an item whose ``itemIdentifier`` is missing, null, empty or not an id of the batch makes the whole batch
    a failure.
    """
    if response is None or response == "" or response == {}:
        return ()
    if not isinstance(response, dict):
        return ()  # any other JSON value (a string, a number, a list) is not a partial response: success
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return ()
    if not isinstance(failures, list):
        return None
    known = set(ids)
    failed: list[str] = []
    for item in failures:
        if not isinstance(item, dict):
            return None
        ident = item.get("itemIdentifier")
        if not isinstance(ident, str) or not ident or ident not in known:
            return None
        if ident not in failed:
            failed.append(ident)
    return tuple(failed)


def decide(
    *,
    ids: Sequence[str],
    status: int,
    function_error: str | None,
    payload: bytes,
    report_batch_item_failures: bool,
) -> Decision:
    """What to do with each message of a batch, given the gateway's answer to its invocation.

    - 200 without ``X-Amz-Function-Error``: success; with ``reportBatchItemFailures``, the ids the response
      names go back to the queue and the rest are acknowledged (an invalid response fails the whole batch).
    - 200 with ``X-Amz-Function-Error`` (handler raised, timed out): the whole batch goes back.
    - anything else (429 throttled, 5xx, the gateway unreachable, 404 while a Function is being created):
      not the messages' fault. The batch is held and invoked again after a backoff, so a throttle slows
      polling instead of burning the broker's delivery attempts.
    """
    every = tuple(ids)
    if status in (200, 202, 204) and function_error is None:
        if not report_batch_item_failures:
            return Decision(Outcome.SUCCESS, every, ())
        try:
            response = json.loads(payload) if payload.strip() else None
        except (ValueError, UnicodeDecodeError):
            return Decision(Outcome.FAILURE, (), every, "the partial batch response is not JSON")
        failed = _failed_ids(response, every)
        if failed is None:
            return Decision(Outcome.FAILURE, (), every, "the partial batch response is invalid")
        if not failed:
            return Decision(Outcome.SUCCESS, every, ())
        gone = set(failed)
        return Decision(Outcome.PARTIAL, tuple(i for i in every if i not in gone), failed)
    if status == 200 and function_error is not None:
        return Decision(Outcome.FAILURE, (), every, f"function error ({function_error})")
    reason = (
        "throttled" if status == 429 else f"gateway answered {status}" if status else "gateway unreachable"
    )
    return Decision(Outcome.NOT_DELIVERED, (), every, reason)


def backoff_seconds(attempt: int, *, minimum: float, maximum: float) -> float:
    """Exponential backoff: ``minimum * 2**(attempt-1)`` capped at ``maximum``; attempt 0 means no wait.

    With minimum 0.5 and maximum 30: 0.5, 1, 2, 4, 8, 16, 30, 30...
    """
    if attempt <= 0:
        return 0.0
    return float(min(maximum, minimum * 2 ** min(attempt - 1, 32)))


def dead_letter(receive_count: int, *, max_receive_count: int) -> bool:
    """Redis: a message received more than ``max_receive_count`` times goes to the dead-letter stream
    (SQS's RedrivePolicy.maxReceiveCount; 0 = never)."""
    return max_receive_count > 0 and receive_count > max_receive_count


def string_headers(headers: Mapping[str, Any] | None) -> JSON:
    """Broker headers (AMQP table, NATS headers) as SQS message attributes, sorted by name."""
    out: JSON = {}
    for key, value in sorted((headers or {}).items()):
        if value is None:
            continue
        if isinstance(value, bytes | str):
            out[str(key)] = attribute(value)
        else:
            out[str(key)] = string_attribute(json.dumps(value, default=str))
    return out
