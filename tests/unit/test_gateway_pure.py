"""Table tests for the gateway's pure parts: function names and ARNs, the throttler."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from multidict import CIMultiDict

from kubelambda.gateway.app import json_problem
from kubelambda.gateway.functionname import BadFunctionName, FunctionRef, parse_function_name
from kubelambda.gateway.proxy import request_id
from kubelambda.gateway.throttler import POOL, RESERVED, Throttled, Throttler
from kubelambda.outcomes import GATEWAY_OUTCOMES, outcome_of


@pytest.mark.parametrize(
    ("value", "ref"),
    [
        ("hello", FunctionRef("default", "hello")),
        ("hello:$LATEST", FunctionRef("default", "hello")),
        ("hello:live", FunctionRef("default", "hello", "live")),
        ("demo/hello", FunctionRef("demo", "hello")),
        ("demo/hello:$LATEST", FunctionRef("demo", "hello")),
        ("arn:aws:lambda:us-east-1:demo:function:hello", FunctionRef("demo", "hello")),
        ("arn:aws:lambda:us-east-1:demo:function:hello:$LATEST", FunctionRef("demo", "hello")),
        ("arn:aws:lambda:us-east-1:123456789012:function:hello", FunctionRef("default", "hello")),
        ("arn:aws-cn:lambda:cn-north-1:team-a:function:thumbs", FunctionRef("team-a", "thumbs")),
        ("123456789012:function:hello", FunctionRef("default", "hello")),
        ("demo:function:hello", FunctionRef("demo", "hello")),
    ],
    ids=lambda v: str(v),
)
def test_parse_function_name(value: str, ref: FunctionRef) -> None:
    assert parse_function_name(value, default_namespace="default") == ref


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Hello",
        "hello_world",
        "a/b/c",
        "arn:aws:lambda:us-east-1:demo:layer:x",
        "x" * 64,
        "Demo/hello",
        "-x",
    ],
)
def test_bad_function_names_are_named_in_the_error(value: str) -> None:
    with pytest.raises(BadFunctionName) as refused:
        parse_function_name(value, default_namespace="default")
    assert repr(value) in str(refused.value)


def test_arn_round_trip() -> None:
    ref = FunctionRef("demo", "hello")
    assert parse_function_name(ref.arn("eu-west-1"), default_namespace="x") == ref


def test_reserved_concurrency_is_exact() -> None:
    throttler = Throttler(pool_limit=100)
    with throttler.admit("a", reserved=2), throttler.admit("a", reserved=2):
        with pytest.raises(Throttled) as refused, throttler.admit("a", reserved=2):
            pass
        assert refused.value.reason == RESERVED
        # another function is not affected
        with throttler.admit("b", reserved=2):
            assert throttler.in_flight == {"a": 2, "b": 1}
    assert throttler.in_flight == {}
    assert throttler.total == 0


def test_the_pool_limit_applies_across_functions() -> None:
    throttler = Throttler(pool_limit=2)
    with throttler.admit("a", reserved=None), throttler.admit("b", reserved=None):
        with pytest.raises(Throttled) as refused, throttler.admit("c", reserved=None):
            pass
        assert refused.value.reason == POOL
    with throttler.admit("c", reserved=None):
        assert throttler.total == 1


def test_a_failing_invocation_releases_its_slot() -> None:
    throttler = Throttler()
    with pytest.raises(RuntimeError), throttler.admit("a", reserved=1):
        raise RuntimeError("handler blew up")
    with throttler.admit("a", reserved=1):
        assert throttler.in_flight == {"a": 1}


def test_reserved_zero_refuses_everything() -> None:
    with pytest.raises(Throttled), Throttler().admit("a", reserved=0):
        pass


AGENT_SOURCE = Path(__file__).parents[2] / "runtime-images" / "agent" / "workers.go"


def test_the_gateway_knows_every_outcome_the_agent_answers_with() -> None:
    """The agent's outcome names (Go) are the contract; refusals are answered 429/503, never a result."""
    names = re.search(r"var outcomeNames = \[numOutcomes\]string\{(.*?)\}", AGENT_SOURCE.read_text(), re.S)
    assert names is not None
    answered = {n for n in re.findall(r'"([a-z_]+)"', names.group(1)) if not n.startswith("refused_")}
    assert answered == set(GATEWAY_OUTCOMES)
    assert set(GATEWAY_OUTCOMES.values()) == {"success", "function_error", "timeout"}


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ({"x-kubelambda-outcome": "timeout", "X-Amz-Function-Error": "Unhandled"}, "timeout"),
        ({"X-Kubelambda-Outcome": "crash", "X-Amz-Function-Error": "Unhandled"}, "function_error"),
        ({"X-Kubelambda-Outcome": "success"}, "success"),
        ({"X-Amz-Function-Error": "Unhandled"}, "function_error"),
        ({}, "success"),
    ],
)
def test_the_outcome_is_the_agents_not_a_guess_from_the_body(headers: dict[str, str], outcome: str) -> None:
    assert outcome_of(CIMultiDict(headers)) == outcome


def test_request_ids_are_random_version_4_uuids_in_text_form() -> None:
    ids = [request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # lower-case, 8-4-4-4-12
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    # Every bit but the six fixed ones varies.
    fixed = int(uuid.UUID(ids[0])) ^ int(uuid.UUID(ids[1]))
    for value in ids[2:]:
        fixed |= int(uuid.UUID(ids[0])) ^ int(uuid.UUID(value))
    assert bin(fixed).count("1") == 128 - 6


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "a": 2}',
        b"[-0, 1e400, 1E+5, 123456789012345678901234567890]",
        b" \t[]\r\n",
        b'"\\u00e9 \xc3\xa9"',
        b'"\\ud800"',  # an escaped lone surrogate: JSON's grammar takes it (simdjson does not)
        b"[" * 300 + b"]" * 300,  # deeper than pydantic-core's 200 levels, within json.loads'
    ],
)
def test_the_invoke_api_takes_every_json_body(body: bytes) -> None:
    json.loads(body)  # the reference: it takes the body
    assert json_problem(body) is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'"a\x01b"', "not valid JSON"),
        (b"{}x", "not valid JSON"),
        (b"[1,]", "not valid JSON"),
        (b"01", "not valid JSON"),
        (b"\xff", "not valid JSON (not UTF-8)"),
        (b"NaN", "not valid JSON"),
        (b"[1, Infinity]", "not valid JSON"),
        (b"[-Infinity]", "not valid JSON"),
        (b"\xef\xbb\xbf{}", "not valid JSON (a byte order mark before it)"),
        ("[1]".encode("utf-16"), "not valid JSON (not UTF-8)"),
        (b"1 2", "not valid JSON"),
        (b'"\t"', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "arrays and objects are nested too deeply"),
    ],
)
def test_the_invoke_api_refuses_what_is_not_json(body: bytes, problem: str) -> None:
    assert json_problem(body) == problem
