"""Pure decisions of the queue bridges (kubelambda.bridge.queues._batch): tables, no broker."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from kubelambda.bridge.queues._batch import (
    BODY_ENCODING_ATTRIBUTE,
    BatchLimits,
    Decision,
    Message,
    Outcome,
    backoff_seconds,
    dead_letter,
    decide,
    decode_body,
    record_json,
    record_tail,
    records_event,
    string_attribute,
    string_headers,
    to_record,
    unique_ids,
)
from kubelambda.bridge.queues.rabbitmq import receive_count
from kubelambda.bridge.queues.redis import entry_body
from kubelambda.bridge.queues.sqs import message_attributes

IDS = ["a", "b", "c"]


def answer(payload: object) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("status", "function_error", "payload", "rbif", "expected"),
    [
        (200, None, b"null", True, Decision(Outcome.SUCCESS, ("a", "b", "c"), ())),
        (200, None, b"", True, Decision(Outcome.SUCCESS, ("a", "b", "c"), ())),
        (200, None, answer({}), True, Decision(Outcome.SUCCESS, ("a", "b", "c"), ())),
        (200, None, answer({"batchItemFailures": []}), True, Decision(Outcome.SUCCESS, ("a", "b", "c"), ())),
        (
            200,
            None,
            answer({"batchItemFailures": None}),
            True,
            Decision(Outcome.SUCCESS, ("a", "b", "c"), ()),
        ),
        (200, None, answer("done"), True, Decision(Outcome.SUCCESS, ("a", "b", "c"), ())),
        (
            200,
            None,
            answer({"batchItemFailures": [{"itemIdentifier": "b"}]}),
            True,
            Decision(Outcome.PARTIAL, ("a", "c"), ("b",)),
        ),
        (
            200,
            None,
            answer(
                {
                    "batchItemFailures": [
                        {"itemIdentifier": "c"},
                        {"itemIdentifier": "a"},
                        {"itemIdentifier": "c"},
                    ]
                }
            ),
            True,
            Decision(Outcome.PARTIAL, ("b",), ("c", "a")),
        ),
        (
            200,
            None,
            answer({"batchItemFailures": [{"itemIdentifier": "zzz"}]}),
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is invalid"),
        ),
        (
            200,
            None,
            answer({"batchItemFailures": [{"itemIdentifier": ""}]}),
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is invalid"),
        ),
        (
            200,
            None,
            answer({"batchItemFailures": [{"itemIdentifier": None}]}),
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is invalid"),
        ),
        (
            200,
            None,
            answer({"batchItemFailures": [{"id": "a"}]}),
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is invalid"),
        ),
        (
            200,
            None,
            answer({"batchItemFailures": "a"}),
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is invalid"),
        ),
        (
            200,
            None,
            b"{not json",
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "the partial batch response is not JSON"),
        ),
        # Without ReportBatchItemFailures the response is not looked at.
        (
            200,
            None,
            answer({"batchItemFailures": [{"itemIdentifier": "b"}]}),
            False,
            Decision(Outcome.SUCCESS, ("a", "b", "c"), ()),
        ),
        (
            200,
            "Unhandled",
            b"{}",
            True,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "function error (Unhandled)"),
        ),
        (
            200,
            "Unhandled",
            b"{}",
            False,
            Decision(Outcome.FAILURE, (), ("a", "b", "c"), "function error (Unhandled)"),
        ),
        (429, None, b"{}", True, Decision(Outcome.NOT_DELIVERED, (), ("a", "b", "c"), "throttled")),
        (502, None, b"", True, Decision(Outcome.NOT_DELIVERED, (), ("a", "b", "c"), "gateway answered 502")),
        (0, None, b"", True, Decision(Outcome.NOT_DELIVERED, (), ("a", "b", "c"), "gateway unreachable")),
        (404, None, b"", True, Decision(Outcome.NOT_DELIVERED, (), ("a", "b", "c"), "gateway answered 404")),
    ],
    ids=[
        "null-response",
        "empty-response",
        "empty-object",
        "empty-list",
        "null-list",
        "non-object-response",
        "one-failed",
        "two-failed-deduplicated",
        "unknown-id-fails-all",
        "empty-id-fails-all",
        "null-id-fails-all",
        "bad-key-fails-all",
        "not-a-list-fails-all",
        "invalid-json-fails-all",
        "rbif-off-ignores-response",
        "function-error",
        "function-error-rbif-off",
        "throttled",
        "bad-gateway",
        "unreachable",
        "function-not-found",
    ],
)
def test_decide(
    status: int, function_error: str | None, payload: bytes, rbif: bool, expected: Decision
) -> None:
    got = decide(
        ids=IDS,
        status=status,
        function_error=function_error,
        payload=payload,
        report_batch_item_failures=rbif,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("limits", "count", "size", "elapsed", "done"),
    [
        (BatchLimits(batch_size=10, window_seconds=0), 0, 0, 5.0, False),
        (BatchLimits(batch_size=10, window_seconds=0), 1, 100, 0.0, True),
        (BatchLimits(batch_size=10, window_seconds=2), 5, 100, 1.0, False),
        (BatchLimits(batch_size=10, window_seconds=2), 5, 100, 2.0, True),
        (BatchLimits(batch_size=10, window_seconds=2), 10, 100, 0.0, True),
        (BatchLimits(batch_size=100, window_seconds=300, max_bytes=1000), 3, 1000, 0.0, True),
    ],
    ids=["empty", "window-0", "inside-window", "window-passed", "full", "bytes-cap"],
)
def test_batch_done(limits: BatchLimits, count: int, size: int, elapsed: float, done: bool) -> None:
    assert limits.done(count=count, size=size, started=100.0, now=100.0 + elapsed) is done


@pytest.mark.parametrize(
    ("size", "adding", "count", "fits"),
    [(0, 10_000_000, 0, True), (5_000_000, 2_000_000, 3, False), (1000, 1000, 1, True)],
    ids=["first-always", "over-cap", "under-cap"],
)
def test_batch_fits(size: int, adding: int, count: int, fits: bool) -> None:
    limits = BatchLimits(batch_size=10, window_seconds=0)
    assert limits.fits(size=size, adding=adding, count=count) is fits


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (100, 30.0)],
)
def test_backoff(attempt: int, seconds: float) -> None:
    assert backoff_seconds(attempt, minimum=0.5, maximum=30) == seconds


@pytest.mark.parametrize(
    ("receives", "limit", "dead"),
    [(1, 3, False), (3, 3, False), (4, 3, True), (1000, 0, False)],
    ids=["first", "at-limit", "past-limit", "unlimited"],
)
def test_dead_letter(receives: int, limit: int, dead: bool) -> None:
    assert dead_letter(receives, max_receive_count=limit) is dead


@pytest.mark.parametrize(
    ("body", "text", "binary"),
    [
        (b"hello", "hello", False),
        ("caf\u00e9 \u2713".encode(), "caf\u00e9 \u2713", False),
        (b"not json {", "not json {", False),
        (b"", "", False),
        (b"\xff\xfe\x00", base64.b64encode(b"\xff\xfe\x00").decode(), True),
        (b"caf\xe9", base64.b64encode(b"caf\xe9").decode(), True),
    ],
    ids=["ascii", "utf8", "not-json", "empty", "binary", "latin1"],
)
def test_decode_body(body: bytes, text: str, binary: bool) -> None:
    assert decode_body(body) == (text, binary)


def test_record_shape() -> None:
    message = Message(
        message_id="42",
        body=b"\xff payload",
        receive_count=2,
        sent_timestamp_ms=1700000000000,
        first_receive_timestamp_ms=1700000000500,
        sender_id="app",
        message_attributes=string_headers({"trace": "t-1", "n": 3}),
    )
    record = to_record(
        message,
        event_source="kubelambda:rabbitmq",
        event_source_arn="arn:kubelambda:rabbitmq:us-east-1:ns:jobs",
        region="us-east-1",
    )
    assert record == {
        "messageId": "42",
        "receiptHandle": "42",
        "body": base64.b64encode(b"\xff payload").decode(),
        "attributes": {
            "ApproximateReceiveCount": "2",
            "SentTimestamp": "1700000000000",
            "SenderId": "app",
            "ApproximateFirstReceiveTimestamp": "1700000000500",
        },
        "messageAttributes": {
            BODY_ENCODING_ATTRIBUTE: {
                "stringValue": "base64",
                "binaryValue": None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            },
            "n": {
                "stringValue": "3",
                "binaryValue": None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            },
            "trace": {
                "stringValue": "t-1",
                "binaryValue": None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            },
        },
        "md5OfBody": hashlib.md5(b"\xff payload").hexdigest(),
        "eventSource": "kubelambda:rabbitmq",
        "eventSourceARN": "arn:kubelambda:rabbitmq:us-east-1:ns:jobs",
        "awsRegion": "us-east-1",
    }


def test_record_keeps_the_brokers_md5_and_receipt() -> None:
    message = Message(message_id="m", body=b"x", receipt_handle="rh", md5_of_body="abc")
    record = to_record(message, event_source="aws:sqs", event_source_arn="arn", region="eu-west-1")
    assert (record["receiptHandle"], record["md5OfBody"], record["awsRegion"]) == ("rh", "abc", "eu-west-1")
    assert record["attributes"]["ApproximateFirstReceiveTimestamp"] == "0"


def test_unique_ids() -> None:
    batch = [Message(message_id=i, body=b"") for i in ["x", "y", "x", "x"]]
    unique_ids(batch)
    assert [m.message_id for m in batch] == ["x", "y", "x#2", "x#3"]


@pytest.mark.parametrize(
    ("fields", "body", "attributes"),
    [
        ({b"body": b"hi", b"k": b"v"}, b"hi", {"k": "v"}),
        ({b"a": b"1", b"b": b"two"}, b'{"a": "1", "b": "two"}', {}),
        ({b"a": b"\xff"}, json.dumps({"a": base64.b64encode(b"\xff").decode()}).encode(), {}),
    ],
    ids=["body-field", "no-body-field", "no-body-field-binary"],
)
def test_redis_entry_body(fields: dict[bytes, bytes], body: bytes, attributes: dict[str, str]) -> None:
    got_body, got_attributes = entry_body(fields)
    assert got_body == body
    assert {k: v["stringValue"] for k, v in got_attributes.items()} == attributes


def test_sqs_message_attributes() -> None:
    got = message_attributes(
        {
            "s": {"DataType": "String", "StringValue": "v"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        }
    )
    assert got == {
        "b": {
            "stringValue": None,
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
        "s": {
            "stringValue": "v",
            "binaryValue": None,
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
    }


def test_binary_headers_become_binary_attributes() -> None:
    got = string_headers({"raw": b"\xff", "text": b"ok", "none": None})
    assert got["raw"]["dataType"] == "Binary"
    assert got["text"] == {
        "stringValue": "ok",
        "binaryValue": None,
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert "none" not in got


@pytest.mark.parametrize(
    ("delivery_count", "deaths", "redelivered", "receives"),
    [
        (None, None, False, 1),
        (None, None, True, 2),
        (0, None, False, 1),
        (2, None, True, 3),
        (None, [{"queue": "jobs", "reason": "rejected", "count": 2}], False, 3),
        (None, [{"queue": "other", "reason": "rejected", "count": 5}], False, 1),
        (None, [{"queue": "jobs", "reason": "expired", "count": 5}], True, 2),
        (1, [{"queue": "jobs", "reason": "rejected", "count": 1}], True, 3),
    ],
    ids=[
        "first",
        "classic-redelivered",
        "quorum-first",
        "quorum-returned-twice",
        "dead-letter-loop",
        "other-queues-death",
        "expired-not-counted",
        "both",
    ],
)
def test_rabbitmq_receive_count(
    delivery_count: object, deaths: object, redelivered: bool, receives: int
) -> None:
    assert receive_count(delivery_count, deaths, queue="jobs", redelivered=redelivered) == receives


@pytest.mark.parametrize(
    "message",
    [
        Message(message_id="1796538039822-0", body=b'{"n": 0, "pad": "xx"}', sent_timestamp_ms=1796538039822),
        Message(
            message_id='id "quoted" \\ caf\u00e9 \U0001f600',
            body="line\nbreak \u2028 caf\u00e9 \U0001f600 \x00".encode(),
            receive_count=7,
            sent_timestamp_ms=1,
            first_receive_timestamp_ms=2,
            sender_id='sender "x"',
            message_attributes=string_headers({"trace": "t-1", "n": 3, "b": b"\xff\x00", "z": "caf\u00e9"}),
            receipt_handle="rh",
            md5_of_body="abc",
        ),
        Message(message_id="42", body=b"\xff payload", message_attributes={"a": string_attribute("x")}),
        Message(message_id="", body=b""),
    ],
)
def test_record_json_is_the_records_json_text(message: Message) -> None:
    """record_json writes the text json.dumps writes for to_record: the same bytes reach the function."""
    where = {"event_source": "kubelambda:redis", "event_source_arn": 'arn:x:"k"', "region": "us-east-1"}
    expected = json.dumps({"Records": [to_record(message, **where), to_record(message, **where)]}).encode()
    text = record_json(message, record_tail(**where))
    assert records_event([text, text]) == expected
