"""The async worker's decisions and invocation records: tables, the clock a parameter."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from kubelambda.asyncworker.decide import (
    Condition,
    Decision,
    Finish,
    Outcome,
    Policy,
    Requeue,
    Retry,
    after_invoke,
    before_invoke,
    outcome_of_answer,
)
from kubelambda.asyncworker.queue import BadEvent, QueuedEvent
from kubelambda.asyncworker.record import Response, invocation_record


def policy(max_retries: int = 2, age: float = 21600) -> Policy:
    return Policy(
        max_retries=max_retries,
        max_event_age_seconds=age,
        retry_delays=(60.0, 120.0),
        backoff_min=1.0,
        backoff_max=300.0,
    )


SUCCESS, ERROR, THROTTLED, SYSTEM = (
    Outcome.SUCCESS,
    Outcome.FUNCTION_ERROR,
    Outcome.THROTTLED,
    Outcome.SYSTEM_ERROR,
)
EXHAUSTED, TOO_OLD = Finish(Condition.RETRIES_EXHAUSTED), Finish(Condition.EVENT_AGE_EXCEEDED)


@pytest.mark.parametrize(
    ("outcome", "invoke_count", "requeues", "now", "p", "expected"),
    [
        (SUCCESS, 1, 0, 1, policy(), Finish(Condition.SUCCESS)),
        (SUCCESS, 3, 5, 1000, policy(), Finish(Condition.SUCCESS)),
        (ERROR, 1, 0, 1, policy(), Retry(60.0, 1)),
        (ERROR, 2, 0, 61, policy(), Retry(120.0, 2)),
        (ERROR, 3, 0, 181, policy(), EXHAUSTED),
        (ERROR, 1, 0, 1, policy(max_retries=0), EXHAUSTED),
        (ERROR, 1, 0, 1, policy(max_retries=1), Retry(60.0, 1)),
        (ERROR, 2, 0, 61, policy(max_retries=1), EXHAUSTED),
        (ERROR, 1, 0, 30, policy(age=60), TOO_OLD),  # the retry would fall due after the event expires
        (THROTTLED, 0, 0, 1, policy(), Requeue(1.0)),
        (THROTTLED, 0, 3, 1, policy(), Requeue(8.0)),
        (SYSTEM, 1, 20, 1, policy(), Requeue(300.0)),
        (THROTTLED, 0, 6, 55, policy(age=60), Requeue(5.0)),  # never past the expiry
        (THROTTLED, 0, 0, 61, policy(age=60), TOO_OLD),
    ],
    ids=[
        "success",
        "success after retries",
        "first error retries after 60 s",
        "second error retries after 120 s",
        "third error exhausts two retries",
        "maxRetries 0",
        "maxRetries 1 first error",
        "maxRetries 1 second error",
        "retry past max age",
        "throttle backs off 1 s",
        "fourth requeue waits 8 s",
        "backoff capped at 5 min",
        "backoff capped at expiry",
        "throttled past max age",
    ],
)
def test_after_invoke(
    outcome: Outcome, invoke_count: int, requeues: int, now: float, p: Policy, expected: Decision
) -> None:
    assert (
        after_invoke(
            outcome=outcome, invoke_count=invoke_count, requeues=requeues, enqueued_at=0, now=now, policy=p
        )
        == expected
    )


@pytest.mark.parametrize(
    ("now", "reserved", "expected"),
    [(10, None, None), (10, 5, None), (61, None, TOO_OLD), (10, 0, EXHAUSTED), (60, None, None)],
    ids=["young", "reserved 5", "too old", "reserved 0 fails at once", "exactly max age"],
)
def test_before_invoke(now: float, reserved: int | None, expected: Finish | None) -> None:
    assert before_invoke(enqueued_at=0, now=now, policy=policy(age=60), reserved=reserved) == expected


def test_record_of_a_failure_has_lambdas_shape() -> None:
    record = invocation_record(
        request_id="r-1",
        function_arn="arn:aws:lambda:us-east-1:demo:function:hello",
        condition=Condition.RETRIES_EXHAUSTED,
        invoke_count=3,
        request_payload=b'{"a": 1}',
        response=Response(200, "Unhandled", b'{"errorMessage": "boom"}'),
        now=0.5,
    )
    assert record == {
        "version": "1.0",
        "timestamp": "1970-01-01T00:00:00.500Z",
        "requestContext": {
            "requestId": "r-1",
            "functionArn": "arn:aws:lambda:us-east-1:demo:function:hello:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": {"a": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "boom"},
    }


def test_record_without_an_invocation_has_no_response() -> None:
    record = invocation_record(
        request_id="r",
        function_arn="arn",
        condition=Condition.EVENT_AGE_EXCEEDED,
        invoke_count=0,
        request_payload=b"{}",
        response=None,
        now=0,
    )
    assert "responseContext" not in record
    assert "responsePayload" not in record


def test_queued_event_headers_round_trip() -> None:
    event = QueuedEvent(
        namespace="demo",
        function="a.b",
        request_id="r",
        payload=b"{}",
        enqueued_at=1.25,
        invoke_count=2,
        not_before=61.5,
    )
    headers = event.headers()
    assert headers["Nats-Msg-Id"] == "r:2"
    assert QueuedEvent.from_message(headers, b"{}") == event


def test_a_message_without_headers_is_a_bad_event() -> None:
    with pytest.raises(BadEvent, match="Kubelambda-Request-Id"):
        QueuedEvent.from_message({"Kubelambda-Function": "demo/x"}, b"{}")


@pytest.mark.parametrize(
    ("status", "headers", "outcome"),
    [
        # The agent's header decides, whatever the body or X-Amz-Function-Error say.
        (
            200,
            {"x-kubelambda-outcome": "timeout", "X-Amz-Function-Error": "Unhandled"},
            Outcome.FUNCTION_ERROR,
        ),
        (200, {"X-Kubelambda-Outcome": "crash"}, Outcome.FUNCTION_ERROR),
        (
            200,
            {"X-Kubelambda-Outcome": "init_error", "X-Amz-Function-Error": "Unhandled"},
            Outcome.FUNCTION_ERROR,
        ),
        (200, {"X-Kubelambda-Outcome": "success"}, Outcome.SUCCESS),
        # A handled error the function returned itself: an error of the function too.
        (
            200,
            {"X-Kubelambda-Outcome": "function_error", "X-Amz-Function-Error": "Handled"},
            Outcome.FUNCTION_ERROR,
        ),
        # Without the header (an older gateway): X-Amz-Function-Error.
        (200, {"X-Amz-Function-Error": "Unhandled"}, Outcome.FUNCTION_ERROR),
        (200, {}, Outcome.SUCCESS),
        (429, {}, Outcome.THROTTLED),
        (500, {"X-Kubelambda-Outcome": "success"}, Outcome.SYSTEM_ERROR),
        (502, {}, Outcome.SYSTEM_ERROR),
    ],
)
def test_the_worker_decides_from_the_agents_outcome_header(
    status: int, headers: dict[str, str], outcome: Outcome
) -> None:
    assert outcome_of_answer(status, CIMultiDict(headers)) is outcome
