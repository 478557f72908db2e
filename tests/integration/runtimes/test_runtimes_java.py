"""The Java runtime (our client, runtime-images/java) through the real agent: handlers written against
com.amazonaws:aws-lambda-java-core, compiled from functions/java, run unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubelambda.runtimes import local_runtime_dir

from .conftest import StartFunction
from .langcheck import (
    CONTEXT_HEADERS,
    body,
    check_context,
    check_crash,
    check_echo,
    check_four_workers,
    check_init_error,
    check_report_lines,
    check_timeout_then_fresh_worker,
    error_of,
)

RUNTIME = "java21"


@pytest.fixture
def start_java(start_function: StartFunction, java_code: Path) -> StartFunction:
    def start(handler: str, **kwargs: object) -> object:
        return start_function(RUNTIME, handler, code=java_code, **kwargs)

    return start  # type: ignore[return-value]


def test_echo_through_an_object_parameter(start_java: StartFunction) -> None:
    check_echo(start_java("example.App::echo"))


def test_context_fields(start_java: StartFunction) -> None:
    fn = start_java("example.App::ctx", timeout_s=5, memory_mb=256)
    result = fn.invoke(b"{}", headers=CONTEXT_HEADERS)
    got = body(result)
    assert isinstance(got, dict), result
    check_context(got, runtime=RUNTIME)


def test_request_handler_with_beans(start_java: StartFunction) -> None:
    fn = start_java("example.Hello")
    event = {
        "name": "Ann",
        "count": 2,
        "tags": ["x"],
        "address": {"city": "Oslo", "zip": "0150"},
        "extra": [1],
    }
    result = fn.invoke(json.dumps(event).encode())
    assert (result.status, result.function_error) == (200, None), result
    # Getters become properties (isTagged → tagged) in field order; unknown input properties are ignored.
    assert result.body == b'{"message":"Hello, Ann!","count":3,"tagged":true,"city":"Oslo"}'
    # Lambda's event shapes capitalise keys (Records, Name): they bind case-insensitively.
    capitalised = fn.invoke(b'{"Name": "Bo", "Count": 0}')
    assert body(capitalised) == {"city": None, "count": 1, "message": "Hello, Bo!", "tagged": False}
    fn.wait_for_log(r"hello handler called for Ann")


def test_records_through_a_generic_base_class(start_java: StartFunction) -> None:
    fn = start_java("example.Records")
    order = {
        "id": "o-1",
        "items": [{"sku": "a", "quantity": 2, "price": 1.5}, {"sku": "b", "quantity": 1, "price": 4}],
    }
    assert body(fn.invoke(json.dumps(order).encode())) == {"id": "o-1", "total": 7.0, "lines": 2}


def test_request_stream_handler(start_java: StartFunction) -> None:
    fn = start_java("example.Upper")
    result = fn.invoke(b'{"text": "h\xc3\xa9llo"}')
    assert (result.status, result.body) == (200, '{"TEXT": "HÉLLO"}'.encode())


def test_static_method_and_string_input(start_java: StartFunction) -> None:
    fn = start_java("example.App::staticHello")
    assert body(fn.invoke(b'"bob"')) == "hello bob"
    error = error_of(fn.invoke(b'{"not": "a string"}'))
    assert error["errorType"] == "Runtime.UnmarshalError"
    assert "java.lang.String" in str(error["errorMessage"])


def test_thrown_exception_is_lambda_error_json(start_java: StartFunction) -> None:
    fn = start_java("example.App::fail")
    error = error_of(fn.invoke(b'{"why": "testing"}'))
    assert error["errorType"] == "java.lang.IllegalArgumentException"
    assert error["errorMessage"] == "boom: testing"
    trace = error["stackTrace"]
    assert isinstance(trace, list)
    assert trace[0].startswith("example.App.fail(App.java:"), trace
    assert not any("io.kubelambda.runtime" in frame for frame in trace), trace


def test_timeout_then_fresh_worker(start_java: StartFunction) -> None:
    fn = start_java("example.App::sleep", timeout_s=1)
    after = check_timeout_then_fresh_worker(fn, long=b'{"seconds": 5}', short=b'{"seconds": 0}')
    assert body(after) == {"slept": 0}


def test_crash_mid_invocation(start_java: StartFunction) -> None:
    check_crash(start_java("example.App::crash"))


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        ("example.Nope", "java.lang.ClassNotFoundException", "Class not found: example.Nope"),
        (
            "example.App::nosuch",
            "java.lang.NoSuchMethodException",
            "No public method named nosuch with appropriate method signature found on class example.App",
        ),
        ("example.App", "java.lang.NoSuchMethodException", "does not implement RequestHandler"),
        ("example.App::", "Runtime.MalformedHandlerName", "Bad handler 'example.App::'"),
        ("example.Broken", "java.lang.IllegalStateException", "cannot start"),
    ],
    ids=["class-not-found", "method-not-found", "no-interface", "malformed", "static-init-throws"],
)
def test_bad_handler_gives_init_error(
    handler: str, error_type: str, message: str, start_java: StartFunction
) -> None:
    check_init_error(start_java(handler), error_type=error_type, message=message)


def test_four_workers_serve_four_calls_and_refuse_a_fifth(start_java: StartFunction) -> None:
    fn = start_java("example.App::sleep", workers=4, timeout_s=20)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


def test_report_lines_and_logger(start_java: StartFunction) -> None:
    fn = start_java("example.App::log", memory_mb=256)
    check_report_lines(fn, memory_mb=256)
    fn.wait_for_log(r"^logged from the handler$")


def test_response_limit(start_java: StartFunction) -> None:
    six_mb = 6 * 1024 * 1024
    fn = start_java("example.App::grow", timeout_s=30, memory_mb=1024)
    at_limit = fn.invoke(json.dumps({"size": six_mb}).encode())
    assert (at_limit.status, at_limit.function_error, len(at_limit.body)) == (200, None, six_mb)
    over = fn.invoke(json.dumps({"size": six_mb + 1}).encode())
    assert over.outcome == "response_too_large"
    assert fn.invoke(b'{"size": 10}').status == 200  # the worker carries on


def test_local_runtime_dir_is_the_built_client(java_runtime: Path) -> None:
    assert local_runtime_dir("java21") == java_runtime
    assert (java_runtime / "lib" / "kubelambda-java-runtime.jar").is_file()
    assert any(p.name.startswith("aws-lambda-java-core-") for p in (java_runtime / "lib").iterdir())
