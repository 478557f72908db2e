"""AWS's own Java runtime interface client (Maven Central) runs aws-lambda-java-core handlers against the
agent unchanged. Installed into the cache with Maven on first use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kltest.ric import aws_lambda_java_ric_command, ensure_aws_lambda_java_ric

from .conftest import StartFunction
from .langcheck import CONTEXT_HEADERS, body, error_of, wait_for_fresh_worker


@pytest.fixture(scope="session")
def java_ric() -> Path:
    return ensure_aws_lambda_java_ric()


@pytest.fixture
def start_aws_java(start_function: StartFunction, java_code: Path, java_ric: Path) -> StartFunction:
    def start(handler: str, **kwargs: object) -> object:
        cmd = aws_lambda_java_ric_command(handler, code=java_code)
        return start_function("java21", handler, code=java_code, runtime_cmd=cmd, **kwargs)

    return start  # type: ignore[return-value]


def test_request_handler_with_beans(start_aws_java: StartFunction) -> None:
    fn = start_aws_java("example.Hello")
    result = fn.invoke(b'{"name": "Ann", "count": 2, "tags": ["x"], "address": {"city": "Oslo"}}')
    assert body(result) == {"message": "Hello, Ann!", "count": 3, "tagged": True, "city": "Oslo"}


def test_stream_handler_and_echo(start_aws_java: StartFunction) -> None:
    assert start_aws_java("example.Upper").invoke(b'{"a": "b"}').body == b'{"A": "B"}'
    echo = start_aws_java("example.App::echo")
    assert body(echo.invoke(json.dumps({"x": [1, 2.5, None]}).encode())) == {"x": [1, 2.5, None]}


def test_context(start_aws_java: StartFunction) -> None:
    fn = start_aws_java("example.App::ctx", timeout_s=5, memory_mb=256)
    got = body(fn.invoke(b"{}", headers=CONTEXT_HEADERS))
    assert isinstance(got, dict)
    first, second = got["remaining"]
    assert 0 < second < first <= 5000
    assert got["aws_request_id"] == CONTEXT_HEADERS["Lambda-Runtime-Aws-Request-Id"]
    assert got["invoked_function_arn"] == CONTEXT_HEADERS["Lambda-Runtime-Invoked-Function-Arn"]
    assert got["identity"] == {"cognito_identity_id": "id-1", "cognito_identity_pool_id": "pool-1"}
    assert (got["function_name"], got["memory_limit_in_mb"]) == ("test-fn", "256")


def test_error_and_timeout(start_aws_java: StartFunction) -> None:
    error = error_of(start_aws_java("example.App::fail").invoke(b'{"why": "aws"}'))
    assert (error["errorType"], error["errorMessage"]) == ("java.lang.IllegalArgumentException", "boom: aws")
    fn = start_aws_java("example.App::sleep", timeout_s=1)
    assert fn.invoke(b'{"seconds": 5}').outcome == "timeout"
    wait_for_fresh_worker(fn)
    assert body(fn.invoke(b'{"seconds": 0}')) == {"slept": 0}


def test_class_not_found(start_aws_java: StartFunction) -> None:
    # AWS's client answers each invoke with this error rather than reporting an init error.
    error = error_of(start_aws_java("example.Nope").invoke(b"{}"))
    assert (error["errorType"], error["errorMessage"]) == (
        "java.lang.ClassNotFoundException",
        "Class not found: example.Nope",
    )
