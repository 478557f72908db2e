"""The compiled and scripted language runtimes through the real agent: one table, one row per runtime.

Every row runs the same checks (langcheck.py): echo, context fields, a thrown error as Lambda error JSON,
timeout then a fresh worker, a crash, bad handlers as init errors, four workers and a refused fifth, REPORT
lines. Adding a runtime is one row in LANGUAGES (and its handlers under functions/); what only one language
has stays below the table, under its name.

- Go: a bootstrap built with github.com/aws/aws-lambda-go (lambda.Start), unchanged, run by the `go` runtime
  (runtime-images/provided/launch execs $LAMBDA_TASK_ROOT/bootstrap). One binary (functions/go) holds every
  test handler; _HANDLER picks one, the way a provided runtime passes it.
- Java: our client (runtime-images/java), handlers written against com.amazonaws:aws-lambda-java-core,
  compiled from functions/java, run unchanged.
- Ruby: our client (runtime-images/ruby/bootstrap.rb) over functions/ruby.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubelambda.runtimes import LocalFunction, local_runtime_dir

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


def ruby_code_with_broken_file(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    shutil.copytree(FUNCTIONS / "ruby", code)
    (code / "broken.rb").write_text("def handler(event:, context:\n  1\n")
    return code


@dataclass(frozen=True)
class Language:
    runtime: str
    needs: str
    """The session fixture that finds or builds what the row runs; when it is a folder, that is the code."""
    echo: str
    ctx: str
    fail: str
    """Raises ``boom: <why>`` for ``{"why": "testing"}``, as ``fail_type``."""
    fail_type: str
    sleep: str
    """Sleeps ``{"seconds": n}`` and answers ``{"slept": n}``."""
    crash: str
    log: str
    """Prints ``printed from the handler``."""
    trace_first: str | None = None
    """Text of the thrown error's first stack frame; None: the error has no stackTrace."""
    trace_hidden: str | None = None
    """Text no frame may contain (the runtime client's own frames)."""
    log_line: str | None = None
    """A line the log handler writes through the language's Lambda logger."""
    bad_handlers: tuple[tuple[str, str, str, str], ...] = ()
    """(id, handler, errorType, message fragment) of handlers that fail the init."""
    bad_code: Callable[[Path], Path] | None = None
    """The code folder for the bad handlers, made in a temporary folder."""


LANGUAGES = (
    Language(
        runtime="go",
        needs="go_code",
        echo="echo",
        ctx="ctx",
        fail="fail",
        fail_type="errorString",
        sleep="sleep",
        crash="crash",
        log="log",
    ),
    Language(
        runtime="java21",
        needs="java_code",
        echo="example.App::echo",
        ctx="example.App::ctx",
        fail="example.App::fail",
        fail_type="java.lang.IllegalArgumentException",
        sleep="example.App::sleep",
        crash="example.App::crash",
        log="example.App::log",
        trace_first="example.App.fail(App.java:",
        trace_hidden="io.kubelambda.runtime",
        log_line="logged from the handler",
        bad_handlers=(
            (
                "class-not-found",
                "example.Nope",
                "java.lang.ClassNotFoundException",
                "Class not found: example.Nope",
            ),
            (
                "method-not-found",
                "example.App::nosuch",
                "java.lang.NoSuchMethodException",
                "No public method named nosuch with appropriate method signature found on class example.App",
            ),
            (
                "no-interface",
                "example.App",
                "java.lang.NoSuchMethodException",
                "does not implement RequestHandler",
            ),
            ("malformed", "example.App::", "Runtime.MalformedHandlerName", "Bad handler 'example.App::'"),
            ("static-init-throws", "example.Broken", "java.lang.IllegalStateException", "cannot start"),
        ),
    ),
    Language(
        runtime="ruby3.3",
        needs="ruby",
        echo="app.echo",
        ctx="app.ctx",
        fail="app.fail",
        fail_type="Function<ArgumentError>",
        sleep="app.sleep_for",
        crash="app.crash",
        log="app.log",
        trace_first="app.rb",
        trace_hidden="bootstrap.rb",
        bad_handlers=(
            ("load-error", "nosuchfile.handler", "Init<LoadError>", "cannot load such file"),
            ("no-method", "app.nosuchmethod", "Init<NoMethodError>", "undefined method `nosuchmethod'"),
            ("no-constant", "app.Shop::Nope.total", "Init<NameError>", "uninitialized constant Shop::Nope"),
            ("malformed", "nodot", "Runtime.MalformedHandlerName", "Bad handler 'nodot'"),
            ("syntax-error", "broken.handler", "Init<SyntaxError>", "broken.rb"),
            ("raises-at-load", "raises_at_import.handler", "Init<RuntimeError>", "cannot start"),
        ),
        bad_code=ruby_code_with_broken_file,
    ),
)
BY_RUNTIME = {lang.runtime: lang for lang in LANGUAGES}

Start = Callable[..., LocalFunction]


def starter(runtime: str, request: pytest.FixtureRequest, start_function: StartFunction) -> Start:
    """``start(handler, **kwargs)`` for one row: its code folder unless ``code=`` is given."""
    needed = request.getfixturevalue(BY_RUNTIME[runtime].needs)
    code = needed if isinstance(needed, Path) else None

    def start(handler: str, **kwargs: Any) -> LocalFunction:
        kwargs.setdefault("code", code)
        return start_function(runtime, handler, **kwargs)

    return start


@pytest.fixture(params=[lang.runtime for lang in LANGUAGES])
def lang(request: pytest.FixtureRequest, start_function: StartFunction) -> tuple[Language, Start]:
    return BY_RUNTIME[request.param], starter(request.param, request, start_function)


# ---- the shared checks, one per row ----------------------------------------------------------------------


def test_echo(lang: tuple[Language, Start]) -> None:
    row, start = lang
    check_echo(start(row.echo))


def test_context_fields(lang: tuple[Language, Start]) -> None:
    row, start = lang
    result = start(row.ctx, timeout_s=5, memory_mb=256).invoke(b"{}", headers=CONTEXT_HEADERS)
    got = body(result)
    assert isinstance(got, dict), result
    check_context(got, runtime=row.runtime)


def test_thrown_error_is_lambda_error_json(lang: tuple[Language, Start]) -> None:
    row, start = lang
    error = error_of(start(row.fail).invoke(b'{"why": "testing"}'))
    if row.trace_first is None:
        assert error == {"errorMessage": "boom: testing", "errorType": row.fail_type}
        return
    assert (error["errorType"], error["errorMessage"]) == (row.fail_type, "boom: testing")
    trace = error["stackTrace"]
    assert isinstance(trace, list)
    assert row.trace_first in trace[0], trace
    assert not any(row.trace_hidden and row.trace_hidden in frame for frame in trace), trace


def test_timeout_then_fresh_worker(lang: tuple[Language, Start]) -> None:
    row, start = lang
    after = check_timeout_then_fresh_worker(
        start(row.sleep, timeout_s=1), long=b'{"seconds": 5}', short=b'{"seconds": 0}'
    )
    assert body(after) == {"slept": 0}


def test_crash_mid_invocation(lang: tuple[Language, Start]) -> None:
    row, start = lang
    check_crash(start(row.crash))


def test_four_workers_serve_four_calls_and_refuse_a_fifth(lang: tuple[Language, Start]) -> None:
    row, start = lang
    fn = start(row.sleep, workers=4, timeout_s=20)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


def test_report_lines(lang: tuple[Language, Start]) -> None:
    row, start = lang
    fn = start(row.log, memory_mb=256)
    check_report_lines(fn, memory_mb=256)
    if row.log_line is not None:
        fn.wait_for_log(rf"^{row.log_line}$")


@pytest.mark.parametrize(
    ("runtime", "handler", "error_type", "message"),
    [
        pytest.param(lang.runtime, *bad[1:], id=f"{lang.runtime}-{bad[0]}")
        for lang in LANGUAGES
        for bad in lang.bad_handlers
    ],
)
def test_bad_handler_gives_init_error(
    runtime: str,
    handler: str,
    error_type: str,
    message: str,
    request: pytest.FixtureRequest,
    start_function: StartFunction,
    tmp_path: Path,
) -> None:
    row = BY_RUNTIME[runtime]
    start = starter(runtime, request, start_function)
    code = {"code": row.bad_code(tmp_path)} if row.bad_code else {}
    check_init_error(start(handler, **code), error_type=error_type, message=message)


# ---- Go only ----------------------------------------------------------------------------------------------


@pytest.fixture
def start_go(request: pytest.FixtureRequest, start_function: StartFunction) -> Start:
    return starter("go", request, start_function)


def test_go_bootstrap_is_a_static_executable(go_code: Path) -> None:
    binary = go_code / "bootstrap"
    assert binary.stat().st_mode & stat.S_IXUSR
    assert binary.read_bytes()[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in binary.read_bytes()[:4096]  # no interpreter: CGO_ENABLED=0


def test_go_documented_hello_handler(start_go: Start) -> None:
    # HandleRequest(ctx, *MyEvent) (*string, error) from aws-lambda-go's documentation, via lambda.Start.
    fn = start_go("bootstrap")
    assert body(fn.invoke(b'{"name": "Gopher"}')) == "Hello Gopher!"
    error = error_of(fn.invoke(b"null"))
    assert error == {"errorMessage": "received nil event", "errorType": "errorString"}


def test_go_unmarshal_error(start_go: Start) -> None:
    # aws-lambda-go's own error for an event that does not fit the handler's type.
    error = error_of(start_go("sleep").invoke(b'{"seconds": "soon"}'))
    assert error["errorType"] == "UnmarshalTypeError"


def test_go_missing_bootstrap_is_an_init_error(start_go: Start, tmp_path: Path) -> None:
    result = start_go("bootstrap", code=tmp_path).invoke(b"{}")
    assert result.outcome == "init_error"
    error = error_of(result)
    assert error["errorType"] == "Runtime.InvalidEntrypoint"
    assert f"{tmp_path}/bootstrap" in str(error["errorMessage"])


def test_go1x_handler_name_runs_that_binary(start_go: Start, go_code: Path, tmp_path: Path) -> None:
    # Lambda's retired go1.x runtime ran the binary the handler names; `go` accepts that too.
    (tmp_path / "hello").symlink_to(go_code / "bootstrap")
    fn = start_go("hello", code=tmp_path)
    assert body(fn.invoke(json.dumps({"name": "go1.x"}).encode())) == "Hello go1.x!"
    assert os.path.exists(tmp_path / "hello")


# ---- Java only --------------------------------------------------------------------------------------------


@pytest.fixture
def start_java(request: pytest.FixtureRequest, start_function: StartFunction) -> Start:
    return starter("java21", request, start_function)


def test_java_request_handler_with_beans(start_java: Start) -> None:
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


def test_java_records_through_a_generic_base_class(start_java: Start) -> None:
    fn = start_java("example.Records")
    order = {
        "id": "o-1",
        "items": [{"sku": "a", "quantity": 2, "price": 1.5}, {"sku": "b", "quantity": 1, "price": 4}],
    }
    assert body(fn.invoke(json.dumps(order).encode())) == {"id": "o-1", "total": 7.0, "lines": 2}


def test_java_request_stream_handler(start_java: Start) -> None:
    fn = start_java("example.Upper")
    result = fn.invoke(b'{"text": "h\xc3\xa9llo"}')
    assert (result.status, result.body) == (200, '{"TEXT": "HÉLLO"}'.encode())


def test_java_static_method_and_string_input(start_java: Start) -> None:
    fn = start_java("example.App::staticHello")
    assert body(fn.invoke(b'"bob"')) == "hello bob"
    error = error_of(fn.invoke(b'{"not": "a string"}'))
    assert error["errorType"] == "Runtime.UnmarshalError"
    assert "java.lang.String" in str(error["errorMessage"])


def test_java_response_limit(start_java: Start) -> None:
    six_mb = 6 * 1024 * 1024
    fn = start_java("example.App::grow", timeout_s=30, memory_mb=1024)
    at_limit = fn.invoke(json.dumps({"size": six_mb}).encode())
    assert (at_limit.status, at_limit.function_error, len(at_limit.body)) == (200, None, six_mb)
    over = fn.invoke(json.dumps({"size": six_mb + 1}).encode())
    assert over.outcome == "response_too_large"
    assert fn.invoke(b'{"size": 10}').status == 200  # the worker carries on


def test_java_local_runtime_dir_is_the_built_client(java_runtime: Path) -> None:
    assert local_runtime_dir("java21") == java_runtime
    assert (java_runtime / "lib" / "kubelambda-java-runtime.jar").is_file()
    assert any(p.name.startswith("aws-lambda-java-core-") for p in (java_runtime / "lib").iterdir())


# ---- Ruby only --------------------------------------------------------------------------------------------


def test_ruby_class_method_and_nested_file(
    request: pytest.FixtureRequest, start_function: StartFunction
) -> None:
    start = starter("ruby3.3", request, start_function)
    got = start("app.Shop::Orders.total").invoke(
        b'{"id": "o-1", "items": [{"quantity": 2, "price": 1.5}, {"quantity": 1, "price": 4}]}'
    )
    result = body(got)
    assert isinstance(result, dict)
    assert result["total"] == 7.0
    assert result["request"] == got.headers["lambda-runtime-aws-request-id"]
    nested = start("lib/nested.handler")
    assert body(nested.invoke(b'{"name": "n"}')) == {"nested": True, "name": "n"}
