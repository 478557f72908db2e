"""Go functions through the real agent: a bootstrap built with github.com/aws/aws-lambda-go (lambda.Start),
unchanged, run by the `go` runtime (runtime-images/provided/launch execs $LAMBDA_TASK_ROOT/bootstrap).

One binary (functions/go) holds every test handler; _HANDLER picks one, the way a provided runtime passes it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import StartFunction
from .langcheck import (
    CONTEXT_HEADERS,
    body,
    check_context,
    check_crash,
    check_echo,
    check_four_workers,
    check_report_lines,
    check_timeout_then_fresh_worker,
    error_of,
)

RUNTIME = "go"


@pytest.fixture
def start_go(start_function: StartFunction, go_code: Path) -> StartFunction:
    def start(handler: str, **kwargs: object) -> object:
        return start_function(RUNTIME, handler, code=go_code, **kwargs)

    return start  # type: ignore[return-value]


def test_bootstrap_is_a_static_executable(go_code: Path) -> None:
    binary = go_code / "bootstrap"
    assert binary.stat().st_mode & stat.S_IXUSR
    assert binary.read_bytes()[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in binary.read_bytes()[:4096]  # no interpreter: CGO_ENABLED=0


def test_documented_hello_handler(start_go: StartFunction) -> None:
    # HandleRequest(ctx, *MyEvent) (*string, error) from aws-lambda-go's documentation, via lambda.Start.
    fn = start_go("bootstrap")
    assert body(fn.invoke(b'{"name": "Gopher"}')) == "Hello Gopher!"
    error = error_of(fn.invoke(b"null"))
    assert error == {"errorMessage": "received nil event", "errorType": "errorString"}


def test_echo(start_go: StartFunction) -> None:
    check_echo(start_go("echo"))


def test_context_fields(start_go: StartFunction) -> None:
    fn = start_go("ctx", timeout_s=5, memory_mb=256)
    got = body(fn.invoke(b"{}", headers=CONTEXT_HEADERS))
    assert isinstance(got, dict)
    check_context(got, runtime=RUNTIME)


def test_returned_error_is_lambda_error_json(start_go: StartFunction) -> None:
    error = error_of(start_go("fail").invoke(b'{"why": "testing"}'))
    assert error == {"errorMessage": "boom: testing", "errorType": "errorString"}


def test_timeout_then_fresh_worker(start_go: StartFunction) -> None:
    fn = start_go("sleep", timeout_s=1)
    after = check_timeout_then_fresh_worker(fn, long=b'{"seconds": 5}', short=b'{"seconds": 0}')
    assert body(after) == {"slept": 0}


def test_crash_mid_invocation(start_go: StartFunction) -> None:
    check_crash(start_go("crash"))


def test_unmarshal_error(start_go: StartFunction) -> None:
    # aws-lambda-go's own error for an event that does not fit the handler's type.
    error = error_of(start_go("sleep").invoke(b'{"seconds": "soon"}'))
    assert error["errorType"] == "UnmarshalTypeError"


def test_missing_bootstrap_is_an_init_error(start_function: StartFunction, tmp_path: Path) -> None:
    fn = start_function(RUNTIME, "bootstrap", code=tmp_path)
    result = fn.invoke(b"{}")
    assert result.outcome == "init_error"
    error = error_of(result)
    assert error["errorType"] == "Runtime.InvalidEntrypoint"
    assert f"{tmp_path}/bootstrap" in str(error["errorMessage"])


def test_go1x_handler_name_runs_that_binary(
    start_function: StartFunction, go_code: Path, tmp_path: Path
) -> None:
    # Lambda's retired go1.x runtime ran the binary the handler names; `go` accepts that too.
    (tmp_path / "hello").symlink_to(go_code / "bootstrap")
    fn = start_function(RUNTIME, "hello", code=tmp_path)
    assert body(fn.invoke(json.dumps({"name": "go1.x"}).encode())) == "Hello go1.x!"
    assert os.path.exists(tmp_path / "hello")


def test_four_workers_serve_four_calls_and_refuse_a_fifth(start_go: StartFunction) -> None:
    fn = start_go("sleep", workers=4, timeout_s=10)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


def test_report_lines(start_go: StartFunction) -> None:
    check_report_lines(start_go("log", memory_mb=256), memory_mb=256)
