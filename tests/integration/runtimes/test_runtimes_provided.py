"""The `provided` runtime (Lambda's custom runtime contract) through the real agent: an executable
`bootstrap` in the code folder talks to the Runtime API itself. functions/provided/bootstrap is bash + curl,
with no runtime client of ours."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from kubelambda.runtimes import repo_root

from .conftest import FUNCTIONS, StartFunction
from .langcheck import (
    body,
    check_crash,
    check_echo,
    check_four_workers,
    check_init_error,
    error_of,
    wait_for_fresh_worker,
)

RUNTIME = "provided"


@pytest.fixture(scope="session")
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.fail(
            "curl is not installed; the shell bootstrap of the provided tests needs it (.ci/run installs it)"
        )
    return found


@pytest.fixture
def start_provided(start_function: StartFunction, curl: str) -> StartFunction:
    def start(handler: str, **kwargs: object) -> object:
        return start_function(RUNTIME, handler, **kwargs)

    return start  # type: ignore[return-value]


def test_echo(start_provided: StartFunction) -> None:
    check_echo(start_provided("echo"))


def test_runtime_api_headers_and_environment(start_provided: StartFunction) -> None:
    fn = start_provided("ctx", timeout_s=5, memory_mb=512)
    before = time.time() * 1000
    result = fn.invoke(
        b"{}",
        headers={
            "Lambda-Runtime-Aws-Request-Id": "22222222-2222-4333-8444-555555555555",
            "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        },
    )
    got = body(result)
    assert isinstance(got, dict), result
    assert got["aws_request_id"] == "22222222-2222-4333-8444-555555555555"
    assert before + 4000 < got["deadline_ms"] <= time.time() * 1000 + 5000
    assert got["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:test-fn"
    assert got["trace_id"] == "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
    assert (got["function_name"], got["memory_limit_in_mb"], got["greeting"]) == ("test-fn", "512", "hello")


def test_error_posted_by_the_bootstrap(start_provided: StartFunction) -> None:
    error = error_of(start_provided("fail").invoke(b"{}"))
    assert error == {"errorType": "Handler.Failed", "errorMessage": "boom from bash"}


def test_timeout_then_fresh_worker(start_provided: StartFunction) -> None:
    fn = start_provided("sleep", timeout_s=1)
    assert fn.invoke(b'{"seconds": 5}').outcome == "timeout"
    wait_for_fresh_worker(fn)
    after = fn.invoke(b'{"seconds": 0}')
    assert (after.status, body(after)) == (200, {"slept": 0})


def test_crash_mid_invocation(start_provided: StartFunction) -> None:
    check_crash(start_provided("crash"))


def test_init_error_posted_by_the_bootstrap(start_provided: StartFunction) -> None:
    check_init_error(
        start_provided("nosuch"), error_type="Runtime.HandlerNotFound", message="no handler named nosuch"
    )


def test_missing_bootstrap(start_provided: StartFunction, tmp_path: Path) -> None:
    error = check_init_error(
        start_provided("anything", code=tmp_path),
        error_type="Runtime.InvalidEntrypoint",
        message="Couldn't find valid bootstrap(s)",
    )
    assert f"{tmp_path}/bootstrap /opt/bootstrap" in str(error["errorMessage"])


def test_script_bootstrap_without_execute_bit_runs_through_its_interpreter(
    start_provided: StartFunction, tmp_path: Path
) -> None:
    # Inline code arrives through a ConfigMap volume (mode 0444): a #! script still runs.
    shutil.copy(FUNCTIONS / "provided" / "bootstrap", tmp_path / "bootstrap")
    (tmp_path / "bootstrap").chmod(0o444)
    assert body(start_provided("echo", code=tmp_path).invoke(b'{"a": 1}')) == {"a": 1}


def test_binary_bootstrap_without_execute_bit(start_provided: StartFunction, tmp_path: Path) -> None:
    (tmp_path / "bootstrap").write_bytes(b"\x7fELF not really")
    (tmp_path / "bootstrap").chmod(0o644)
    check_init_error(
        start_provided("echo", code=tmp_path), error_type="Runtime.InvalidEntrypoint", message="chmod +x"
    )


def test_the_hello_provided_example_runs_from_inline_code(
    start_provided: StartFunction, tmp_path: Path
) -> None:
    manifest = yaml.safe_load((repo_root() / "examples" / "hello-provided" / "function.yaml").read_text())
    for name, text in manifest["spec"]["code"]["inline"].items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o444)
    fn = start_provided(manifest["spec"]["handler"], code=tmp_path)
    got = body(fn.invoke(b'{"name": "world"}'))
    assert got == {"message": "Hello from a custom runtime", "event": {"name": "world"}}


def test_four_workers_serve_four_calls_and_refuse_a_fifth(start_provided: StartFunction) -> None:
    fn = start_provided("sleep", workers=4, timeout_s=10)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


def test_any_language_bootstrap(start_provided: StartFunction, tmp_path: Path) -> None:
    # The contract is only "an executable named bootstrap": here a Python script, not our Python client.
    script = tmp_path / "bootstrap"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, urllib.request\n"
        "api = 'http://' + os.environ['AWS_LAMBDA_RUNTIME_API'] + '/2018-06-01/runtime/invocation/'\n"
        "while True:\n"
        "    with urllib.request.urlopen(api + 'next') as r:\n"
        "        rid, event = r.headers['Lambda-Runtime-Aws-Request-Id'], json.load(r)\n"
        "    out = json.dumps({'handler': os.environ['_HANDLER'], 'event': event}).encode()\n"
        "    urllib.request.urlopen(urllib.request.Request(api + rid + '/response', data=out)).read()\n"
    )
    script.chmod(0o755)
    fn = start_provided("my.handler", code=tmp_path)
    assert body(fn.invoke(json.dumps({"x": 1}).encode())) == {"handler": "my.handler", "event": {"x": 1}}
