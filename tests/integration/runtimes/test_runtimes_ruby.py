"""The Ruby runtime (our client, runtime-images/ruby/bootstrap.rb) through the real agent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import FUNCTIONS, StartFunction
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

RUNTIME = "ruby3.3"


@pytest.fixture
def start_ruby(start_function: StartFunction, ruby: str) -> StartFunction:
    def start(handler: str, **kwargs: object) -> object:
        return start_function(RUNTIME, handler, **kwargs)

    return start  # type: ignore[return-value]


def test_echo(start_ruby: StartFunction) -> None:
    check_echo(start_ruby("app.echo"))


def test_context_fields(start_ruby: StartFunction) -> None:
    fn = start_ruby("app.ctx", timeout_s=5, memory_mb=256)
    got = body(fn.invoke(b"{}", headers=CONTEXT_HEADERS))
    assert isinstance(got, dict)
    check_context(got, runtime=RUNTIME)


def test_class_method_and_nested_file(start_ruby: StartFunction) -> None:
    fn = start_ruby("app.Shop::Orders.total")
    got = fn.invoke(b'{"id": "o-1", "items": [{"quantity": 2, "price": 1.5}, {"quantity": 1, "price": 4}]}')
    result = body(got)
    assert isinstance(result, dict)
    assert result["total"] == 7.0
    assert result["request"] == got.headers["lambda-runtime-aws-request-id"]
    nested = start_ruby("lib/nested.handler")
    assert body(nested.invoke(b'{"name": "n"}')) == {"nested": True, "name": "n"}


def test_raised_error_is_lambda_error_json(start_ruby: StartFunction) -> None:
    fn = start_ruby("app.fail")
    error = error_of(fn.invoke(b'{"why": "testing"}'))
    assert error["errorType"] == "Function<ArgumentError>"
    assert error["errorMessage"] == "boom: testing"
    trace = error["stackTrace"]
    assert isinstance(trace, list)
    assert "app.rb" in trace[0], trace
    assert "fail" in trace[0], trace
    assert not any("bootstrap.rb" in frame for frame in trace), trace


def test_timeout_then_fresh_worker(start_ruby: StartFunction) -> None:
    fn = start_ruby("app.sleep_for", timeout_s=1)
    after = check_timeout_then_fresh_worker(fn, long=b'{"seconds": 5}', short=b'{"seconds": 0}')
    assert body(after) == {"slept": 0}


def test_crash_mid_invocation(start_ruby: StartFunction) -> None:
    check_crash(start_ruby("app.crash"))


def code_with_broken_file(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    shutil.copytree(FUNCTIONS / "ruby", code)
    (code / "broken.rb").write_text("def handler(event:, context:\n  1\n")
    return code


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        ("nosuchfile.handler", "Init<LoadError>", "cannot load such file"),
        ("app.nosuchmethod", "Init<NoMethodError>", "undefined method `nosuchmethod'"),
        ("app.Shop::Nope.total", "Init<NameError>", "uninitialized constant Shop::Nope"),
        ("nodot", "Runtime.MalformedHandlerName", "Bad handler 'nodot'"),
        ("broken.handler", "Init<SyntaxError>", "broken.rb"),
        ("raises_at_import.handler", "Init<RuntimeError>", "cannot start"),
    ],
    ids=["load-error", "no-method", "no-constant", "malformed", "syntax-error", "raises-at-load"],
)
def test_bad_handler_gives_init_error(
    handler: str, error_type: str, message: str, start_ruby: StartFunction, tmp_path: Path
) -> None:
    fn = start_ruby(handler, code=code_with_broken_file(tmp_path))
    check_init_error(fn, error_type=error_type, message=message)


def test_four_workers_serve_four_calls_and_refuse_a_fifth(start_ruby: StartFunction) -> None:
    fn = start_ruby("app.sleep_for", workers=4, timeout_s=10)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


def test_report_lines(start_ruby: StartFunction) -> None:
    check_report_lines(start_ruby("app.log", memory_mb=256), memory_mb=256)
