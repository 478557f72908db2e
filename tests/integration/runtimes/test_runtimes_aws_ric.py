"""AWS's own runtime interface clients run handlers against the agent unchanged.

awslambdaric (PyPI) and aws-lambda-ric (npm, which compiles a native addon) are installed into the
cache by the session fixtures on first use.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kltest.ric import ensure_aws_lambda_ric, ensure_awslambdaric
from kubelambda.runtimes import InvokeResult, LocalFunction, local_command

from .conftest import FUNCTIONS, StartFunction, free_loopback
from .langcheck import wait_for_fresh_worker

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def awslambdaric() -> Path:
    return ensure_awslambdaric()


@pytest.fixture(scope="session")
def aws_lambda_ric() -> Path:
    return ensure_aws_lambda_ric()


@pytest.fixture(params=["awslambdaric", "aws-lambda-ric"])
def start_aws(request: pytest.FixtureRequest, start_function: StartFunction) -> StartFunction:
    """Starts a handler under one of AWS's clients instead of ours."""

    def start(handler: str, **kwargs: object) -> object:
        if request.param == "awslambdaric":
            pythonpath = request.getfixturevalue("awslambdaric")
            return start_function(
                "python3.12",
                handler,
                runtime_cmd=[sys.executable, "-m", "awslambdaric", handler],
                environment={"PYTHONPATH": f"{pythonpath}:{FUNCTIONS / 'python'}"},
                **kwargs,
            )
        entry = request.getfixturevalue("aws_lambda_ric")
        node = request.getfixturevalue("node")
        return start_function("nodejs20", handler, runtime_cmd=[node, str(entry), handler], **kwargs)

    return start  # type: ignore[return-value]


def body(result: InvokeResult) -> object:
    return json.loads(result.body)


def test_echo(start_aws: StartFunction) -> None:
    fn = start_aws("app.echo")
    for event in ({"hello": "wörld ✓"}, [1, 2, 3], "text"):
        result = fn.invoke(json.dumps(event).encode())
        assert (result.status, result.function_error) == (200, None), result
        assert body(result) == event


def test_context(start_aws: StartFunction) -> None:
    fn = start_aws("app.ctx", timeout_s=5)
    result = fn.invoke(
        b"{}",
        headers={
            "Lambda-Runtime-Aws-Request-Id": "abcdef00-2222-4333-8444-555555555555",
            "Lambda-Runtime-Cognito-Identity": json.dumps(
                {"cognitoIdentityId": "i", "cognitoIdentityPoolId": "p"}
            ),
        },
    )
    got = body(result)
    assert isinstance(got, dict), result
    first, second = got["remaining"]
    assert 0 < second < first <= 5000
    assert got["aws_request_id"] == "abcdef00-2222-4333-8444-555555555555"
    assert got["function_name"] == "test-fn"
    assert got["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:test-fn"
    assert got["memory_limit_in_mb"] == "256"
    assert got["identity"] == {"cognito_identity_id": "i", "cognito_identity_pool_id": "p"}


def test_error(start_aws: StartFunction) -> None:
    fn = start_aws("app.fail")
    result = fn.invoke(b'{"why": "aws"}')
    assert result.function_error == "Unhandled"
    error = body(result)
    assert isinstance(error, dict)
    assert error["errorMessage"] == "boom: aws"
    assert error["errorType"] in ("ValueError", "Error")


def test_timeout_then_next_call(start_aws: StartFunction) -> None:
    fn = start_aws("app.sleep", timeout_s=1)
    assert fn.invoke(b'{"seconds": 5}').outcome == "timeout"
    wait_for_fresh_worker(fn)
    after = fn.invoke(b'{"seconds": 0}')
    assert (after.status, body(after)) == (200, {"slept": 0})


def test_init_error(start_aws: StartFunction) -> None:
    fn = start_aws("app.nosuchfunction")
    result = fn.invoke(b"{}")
    assert result.outcome == "init_error"
    error = body(result)
    assert isinstance(error, dict)
    assert error["errorType"] == "Runtime.HandlerNotFound"


LAMBDA_ENTRYPOINT = """#!/bin/sh
# The convention of AWS's base images: the emulator when run alone, the runtime interface client under Lambda.
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ]; then
  echo "no AWS_LAMBDA_RUNTIME_API: this would start the runtime interface emulator" >&2
  exit 64
fi
exec "$IMAGE_PYTHON" -m awslambdaric "$@"
"""


def test_a_lambda_layout_image_runs_its_entrypoint_and_its_extensions(
    agent: Path, awslambdaric: Path, tmp_path: Path
) -> None:
    """What ``imageLayout: lambda`` runs in the container, as local processes: the agent with the image's
    ``/lambda-entrypoint.sh HANDLER`` as the runtime command (it execs awslambdaric because the agent sets
    ``AWS_LAMBDA_RUNTIME_API``), and an external extension from the image's ``/opt/extensions``."""
    root = tmp_path / "image"
    (root / "opt" / "extensions").mkdir(parents=True)
    entry = root / "lambda-entrypoint.sh"
    entry.write_text(LAMBDA_ENTRYPOINT)
    entry.chmod(0o755)
    recorder = root / "opt" / "extensions" / "recorder"
    recorder.write_bytes(
        (REPO / "runtime-images" / "agent" / "testdata" / "recorder_extension.py").read_bytes()
    )
    recorder.chmod(0o755)
    seen = tmp_path / "extension.out"
    ip = free_loopback([8080, 9001])
    cmd = local_command(
        "python3.12",
        FUNCTIONS / "python",
        "app.echo",
        agent=agent,
        listen=f"{ip}:8080",
        timeout_s=5,
        function_name="image-fn",
        base_env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        environment={
            "PYTHONPATH": f"{awslambdaric}:{FUNCTIONS / 'python'}",
            "IMAGE_PYTHON": sys.executable,
            "EXT_OUT": str(seen),
        },
        runtime_cmd=[str(entry), "app.echo"],
    )
    cmd.argv[cmd.argv.index("--opt-dir=")] = f"--opt-dir={root / 'opt'}"  # the image's /opt
    fn = LocalFunction(cmd)
    fn.start()
    try:
        fn.wait_ready(timeout=30)
        ids = ["img-1", "img-2"]
        for i, rid in enumerate(ids):
            result = fn.invoke(json.dumps({"n": i}).encode(), headers={"Lambda-Runtime-Aws-Request-Id": rid})
            assert (result.status, result.function_error) == (200, None), result
            assert body(result) == {"n": i}
    finally:
        fn.stop()
    lines = seen.read_text().split("\n")
    assert lines[0] == "REGISTERED image-fn"
    assert [line.split()[1] for line in lines if line.startswith("INVOKE ")] == ids
    assert "SHUTDOWN spindown" in lines
