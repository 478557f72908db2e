"""Table tests of the stream bridges' pure decisions: record shape, batch cutting, lanes, outcomes, plans."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kubelambda.bridge.streams._batch import (
    RECORD_AGE_EXCEEDED,
    RETRIES_EXHAUSTED,
    EventEncoder,
    FailureInfo,
    Outcome,
    Piece,
    Plan,
    Policy,
    Result,
    SourceInfo,
    StreamRecord,
    classify,
    cut,
    dumps,
    event,
    expired_prefix,
    failure_record,
    kinesis_record,
    lane_of,
    plan,
    record_size,
    shard_id,
)

SOURCE = SourceInfo(
    event_source="kubelambda:kafka",
    event_source_arn="arn:kubelambda:kafka:us-east-1:ns:topic/orders",
    invoke_identity_arn="arn:aws:iam::ns:role/orders",
    region="us-east-1",
)


def rec(i: int, *, key: str = "k", data: bytes | None = None, arrival: float = 1000.0) -> StreamRecord:
    return StreamRecord(
        shard=shard_id(0),
        sequence=str(100 + i),
        partition_key=key,
        data=str(i).encode() if data is None else data,
        arrival=arrival,
    )


RECS = tuple(rec(i) for i in range(10))


def test_a_record_has_kinesis_shape_with_base64_data_even_when_not_utf8() -> None:
    r = rec(3, key="user-1", data=b"\xff\xfe\x00not json", arrival=1700000000.1234)
    assert kinesis_record(r, SOURCE) == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "user-1",
            "sequenceNumber": "103",
            "data": base64.b64encode(b"\xff\xfe\x00not json").decode(),
            "approximateArrivalTimestamp": 1700000000.123,
        },
        "eventSource": "kubelambda:kafka",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000000:103",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::ns:role/orders",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:kubelambda:kafka:us-east-1:ns:topic/orders",
    }
    assert [x["kinesis"]["sequenceNumber"] for x in event(RECS[:3], SOURCE)["Records"]] == [
        "100",
        "101",
        "102",
    ]


def test_the_encoded_event_is_byte_for_byte_the_json_of_its_shape() -> None:
    """The bridge writes the event as text from templates; it must be exactly what dumping the dicts gives, for
    keys and sequence numbers JSON has to escape, any bytes of data and any arrival time."""
    odd = SourceInfo(
        event_source='kubelambda:"odd"',
        event_source_arn="arn:kubelambda:kafka:eu-west-1:ns:topic/naïve\\x",
        invoke_identity_arn="arn:aws:iam::ns:role/\u2028",
        region="eu-west-1",
    )
    records = [
        rec(0),
        rec(1, key='quote " backslash \\ tab \t newline \n nul \x00', data=b"\xff\xfe\x00\x01"),
        rec(2, key="ключ 🔑 \u2028 \udcff", data=b"", arrival=1700000000.1234567),
        rec(3, key="", data=bytes(range(256)) * 3, arrival=1700000000),  # int arrival: dumps writes no ".0"
        StreamRecord("shardId-000000000007", "1700000000000-12", "k", b"x", 0.0005),  # a Redis entry id
        StreamRecord('s/"x"', "49590338271490256608559692538361571095921575989136588898", "k", b"yz", 1e-7),
    ]
    for source in (SOURCE, odd):
        for batch in ([], records[:1], records):
            assert EventEncoder(source).encode(batch) == dumps(event(batch, source))


@pytest.mark.parametrize(
    ("sizes", "batch_size", "max_bytes", "expected"),
    [
        ([10] * 5, 100, 10_000, 5),
        ([10] * 5, 3, 10_000, 3),
        ([], 3, 10_000, 0),
        ([3000, 3000, 3000], 10, 9000, 1),  # each record is ~4,000 bytes of base64 + envelope
        ([30_000], 10, 9000, 1),  # an oversized record still goes, alone
        ([10, 30_000], 10, 9000, 1),
    ],
    ids=["all", "batch-size", "empty", "bytes", "oversized-alone", "oversized-next"],
)
def test_cut(sizes: list[int], batch_size: int, max_bytes: int, expected: int) -> None:
    records = [rec(i, data=b"x" * n) for i, n in enumerate(sizes)]
    assert cut(records, batch_size=batch_size, max_bytes=max_bytes) == expected


def test_record_size_counts_base64() -> None:
    assert record_size(rec(0, data=b"abc")) == 4 + 1 + 3 + 512


def test_a_key_has_one_stable_lane_and_keys_spread_over_all_lanes() -> None:
    keys = [f"k{i}" for i in range(200)]
    lanes = [lane_of(key, 4) for key in keys]
    assert set(lanes) == {0, 1, 2, 3}
    assert lanes == [lane_of(key, 4) for key in keys]  # the same in every call (and process: not salted)
    assert lane_of("k1", 4) == 0  # blake2b's digest, not Python's per-process hash
    assert lane_of("anything", 1) == 0


@pytest.mark.parametrize(
    ("arrivals", "max_age", "now", "expected"),
    [
        ([1, 2, 3], -1, 1000, 0),
        ([1, 2, 3], 60, 62, 1),
        ([1, 2, 3], 60, 100, 3),
        ([1, 50, 3], 60, 100, 1),  # out-of-order stamp ends the prefix
        ([100, 101], 60, 100, 0),
    ],
    ids=["forever", "first", "all", "skewed", "fresh"],
)
def test_expired_prefix(arrivals: list[float], max_age: int, now: float, expected: int) -> None:
    records = [rec(i, arrival=a) for i, a in enumerate(arrivals)]
    assert expired_prefix(records, maximum_record_age_seconds=max_age, now=now) == expected


def _classify(status: int, error: str | None, response: Any, *, report: bool = True) -> Result:
    return classify(
        status=status, function_error=error, response=response, batch=RECS, report_batch_item_failures=report
    )


@pytest.mark.parametrize(
    ("status", "error", "response", "report", "expected"),
    [
        (200, None, None, True, Result(Outcome.SUCCESS)),
        (200, None, {"batchItemFailures": []}, True, Result(Outcome.SUCCESS)),
        (200, None, {"batchItemFailures": None}, True, Result(Outcome.SUCCESS)),
        (200, None, {"other": 1}, True, Result(Outcome.SUCCESS)),
        (
            200,
            None,
            {"batchItemFailures": [{"itemIdentifier": "105"}, {"itemIdentifier": "103"}]},
            True,
            Result(Outcome.PARTIAL, first_failed=3, failed_count=2),
        ),
        # Reported failures are ignored unless reportBatchItemFailures is on (as in Lambda).
        (200, None, {"batchItemFailures": [{"itemIdentifier": "105"}]}, False, Result(Outcome.SUCCESS)),
        # An identifier that is not in the batch, empty or missing fails the whole batch.
        (
            200,
            None,
            {"batchItemFailures": [{"itemIdentifier": "999"}]},
            True,
            Result(Outcome.FUNCTION_ERROR, failed_count=10),
        ),
        (
            200,
            None,
            {"batchItemFailures": [{"itemIdentifier": ""}]},
            True,
            Result(Outcome.FUNCTION_ERROR, failed_count=10),
        ),
        (200, None, {"batchItemFailures": [{}]}, True, Result(Outcome.FUNCTION_ERROR, failed_count=10)),
        (200, None, {"batchItemFailures": "105"}, True, Result(Outcome.FUNCTION_ERROR, failed_count=10)),
        (200, "Unhandled", {"errorMessage": "x"}, True, Result(Outcome.FUNCTION_ERROR, failed_count=10)),
        (413, None, None, True, Result(Outcome.FUNCTION_ERROR, failed_count=10)),
        (502, "Unhandled", None, True, Result(Outcome.FUNCTION_ERROR, failed_count=10)),
        (429, None, None, True, Result(Outcome.RETRYABLE)),
        (500, None, None, True, Result(Outcome.RETRYABLE)),
        (503, None, None, True, Result(Outcome.RETRYABLE)),
        (0, None, None, True, Result(Outcome.RETRYABLE)),
    ],
    ids=[
        "ok",
        "ok-empty-failures",
        "ok-null-failures",
        "ok-other-json",
        "partial-lowest",
        "partial-ignored",
        "unknown-id",
        "empty-id",
        "missing-id",
        "not-a-list",
        "function-error",
        "too-large",
        "runtime-502",
        "throttled",
        "gateway-500",
        "unavailable",
        "unreachable",
    ],
)
def test_classify(status: int, error: str | None, response: Any, report: bool, expected: Result) -> None:
    assert _classify(status, error, response, report=report) == expected


FOREVER = Policy()
TWO_RETRIES = Policy(maximum_retry_attempts=2)
BISECT = Policy(maximum_retry_attempts=2, bisect_batch_on_function_error=True)
FAILED = Result(Outcome.FUNCTION_ERROR, failed_count=10)
THROTTLED = Result(Outcome.RETRYABLE)


@pytest.mark.parametrize(
    ("piece", "result", "policy", "expected"),
    [
        (Piece(RECS), Result(Outcome.SUCCESS), FOREVER, Plan(done=10)),
        # Retried whole, blocking the shard, forever by default.
        (
            Piece(RECS, attempts=40),
            FAILED,
            FOREVER,
            Plan(done=0, retry=(Piece(RECS, 41, 0, 5.0),), delay=30.0),
        ),
        (Piece(RECS), FAILED, TWO_RETRIES, Plan(done=0, retry=(Piece(RECS, 1, 0, 5.0),), delay=0.25)),
        (
            Piece(RECS, 1, 0, 1.0),
            FAILED,
            TWO_RETRIES,
            Plan(done=0, retry=(Piece(RECS, 2, 0, 1.0),), delay=0.5),
        ),
        # The third failure with two retries allowed: discarded.
        (Piece(RECS, 2), FAILED, TWO_RETRIES, Plan(done=0, discard=10, reason=RETRIES_EXHAUSTED)),
        (
            Piece(RECS),
            FAILED,
            Policy(maximum_retry_attempts=0),
            Plan(done=0, discard=10, reason=RETRIES_EXHAUSTED),
        ),
        # Bisect: two halves keeping the attempts so far; a split is not a retry.
        (
            Piece(RECS, 1),
            FAILED,
            BISECT,
            Plan(done=0, retry=(Piece(RECS[:5], 1, 0, 5.0), Piece(RECS[5:], 1, 0, 5.0))),
        ),
        (Piece(RECS[:1]), FAILED, BISECT, Plan(done=0, retry=(Piece(RECS[:1], 1, 0, 5.0),), delay=0.25)),
        (Piece(RECS[:1], 2), FAILED, BISECT, Plan(done=0, discard=1, reason=RETRIES_EXHAUSTED)),
        # Partial failure: done up to the lowest failed record, retried from it.
        (
            Piece(RECS),
            Result(Outcome.PARTIAL, first_failed=4, failed_count=2),
            TWO_RETRIES,
            Plan(done=4, retry=(Piece(RECS[4:], 1, 0, 5.0),), delay=0.25),
        ),
        (
            Piece(RECS, 2),
            Result(Outcome.PARTIAL, first_failed=4, failed_count=2),
            TWO_RETRIES,
            Plan(done=4, discard=6, reason=RETRIES_EXHAUSTED),
        ),
        # Throttles and platform errors: retried with their own backoff, no retry used up.
        (Piece(RECS, 2), THROTTLED, TWO_RETRIES, Plan(done=0, retry=(Piece(RECS, 2, 1, None),), delay=0.1)),
        (
            Piece(RECS, 0, 7),
            THROTTLED,
            TWO_RETRIES,
            Plan(done=0, retry=(Piece(RECS, 0, 8, None),), delay=10.0),
        ),
    ],
    ids=[
        "success",
        "forever-capped-backoff",
        "first-failure",
        "second-failure",
        "exhausted",
        "no-retries",
        "bisect",
        "bisect-single-retries",
        "bisect-single-exhausted",
        "partial",
        "partial-exhausted",
        "throttled",
        "throttled-capped",
    ],
)
def test_plan(piece: Piece, result: Result, policy: Policy, expected: Plan) -> None:
    assert plan(piece, result, policy, now=5.0) == expected


def test_a_poison_record_is_isolated_by_bisection_and_only_it_is_discarded() -> None:
    """Drive plan() like the shard loop does: 100 records, record 37 always fails the batch it is in."""
    records = tuple(rec(i) for i in range(100))
    queue = [Piece(records)]
    done: list[int] = []
    discarded: list[int] = []
    invocations = 0
    while queue:
        piece = queue.pop(0)
        invocations += 1
        failing = any(r.sequence == "137" for r in piece.records)
        result = FAILED if failing else Result(Outcome.SUCCESS)
        step = plan(piece, result, BISECT, now=0.0)
        done += [int(r.sequence) - 100 for r in piece.records[: step.done]]
        discarded += [int(r.sequence) - 100 for r in piece.records[step.done : step.done + step.discard]]
        queue[:0] = step.retry
    assert discarded == [37]
    assert done == [i for i in range(100) if i != 37]
    assert invocations < 30


def test_failure_record_has_lambdas_stream_shape() -> None:
    records = [rec(5, arrival=1700000000.5), rec(6, arrival=1700000001.25)]
    got = failure_record(
        records,
        condition=RECORD_AGE_EXCEEDED,
        function_arn="arn:aws:lambda:us-east-1:ns:function:fn",
        stream_arn=SOURCE.event_source_arn,
        info=FailureInfo(request_id="r1", status=200, function_error="Unhandled", invoke_count=3),
        timestamp="2026-01-01T00:00:00.000Z",
    )
    assert got == {
        "requestContext": {
            "requestId": "r1",
            "functionArn": "arn:aws:lambda:us-east-1:ns:function:fn",
            "condition": "RecordAgeExceeded",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "KinesisBatchInfo": {
            "shardId": "shardId-000000000000",
            "startSequenceNumber": "105",
            "endSequenceNumber": "106",
            "approximateArrivalOfFirstRecord": "2023-11-14T22:13:20.500Z",
            "approximateArrivalOfLastRecord": "2023-11-14T22:13:21.250Z",
            "batchSize": 2,
            "streamArn": "arn:kubelambda:kafka:us-east-1:ns:topic/orders",
        },
    }
