"""The issue's acceptance list, for our Python and Node.js runtime clients, through the real agent."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from kubelambda.runtimes import InvokeResult

from .conftest import FUNCTIONS, StartFunction
from .langcheck import REPORT, body, check_four_workers, check_timeout_then_fresh_worker, wait_for_metric

RUNTIMES = ["python3.12", "nodejs20"]
SIX_MB = 6 * 1024 * 1024


def trace_of(error: dict[str, object]) -> list[str]:
    # Lambda's Python runtime calls it stackTrace, its Node.js runtime trace.
    trace = error.get("stackTrace", error.get("trace"))
    assert isinstance(trace, list), error
    return trace


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_echo(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.echo")
    result = fn.invoke(b'{"hello": "world", "n": [1, 2.5, null, true]}')
    assert result.status == 200
    assert result.function_error is None
    assert body(result) == {"hello": "world", "n": [1, 2.5, None, True]}
    assert result.headers["x-amz-executed-version"] == "$LATEST"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_context_fields_and_remaining_time(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.ctx", timeout_s=5, memory_mb=256)
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:test-fn:live"
    client_context = {"client": {"installation_id": "inst-1"}, "custom": {"k": "v"}, "env": {"platform": "x"}}
    cognito = {"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"}
    result = fn.invoke(
        b"{}",
        headers={
            "Lambda-Runtime-Aws-Request-Id": "11111111-2222-4333-8444-555555555555",
            "Lambda-Runtime-Invoked-Function-Arn": arn,
            "X-Amz-Client-Context": base64.b64encode(json.dumps(client_context).encode()).decode(),
            "Lambda-Runtime-Cognito-Identity": json.dumps(cognito),
            "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        },
    )
    assert result.status == 200, result
    got = body(result)
    assert isinstance(got, dict)
    first, second = got.pop("remaining")
    assert 0 < second < first <= 5000
    assert first - second >= 40
    assert got.pop("callbackWaitsForEmptyEventLoop", True) is True
    assert got["log_stream_name"].startswith(time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()))
    del got["log_stream_name"]
    assert got == {
        "aws_request_id": "11111111-2222-4333-8444-555555555555",
        "function_name": "test-fn",
        "function_version": "$LATEST",
        "invoked_function_arn": arn,
        "memory_limit_in_mb": "256",
        "log_group_name": "/aws/lambda/test-fn",
        "identity": {"cognito_identity_id": "id-1", "cognito_identity_pool_id": "pool-1"},
        "client_context": {"installation_id": "inst-1", "custom": {"k": "v"}, "env": {"platform": "x"}},
        "trace_id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        "env": {
            "AWS_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
            "TZ": "UTC",
            "GREETING": "hello",
        },
    }
    assert result.headers["lambda-runtime-aws-request-id"] == "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_thrown_error(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.fail")
    result = fn.invoke(b'{"why": "testing"}')
    assert result.status == 200
    assert result.function_error == "Unhandled"
    error = body(result)
    assert isinstance(error, dict)
    assert error["errorType"] == ("ValueError" if runtime.startswith("python") else "Error")
    assert error["errorMessage"] == "boom: testing"
    assert any("fail" in line for line in trace_of(error)), error


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_timeout_then_fresh_worker(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.sleep", timeout_s=1)
    after = check_timeout_then_fresh_worker(fn, long=b'{"seconds": 5}', short=b'{"seconds": 0}')
    assert body(after) == {"slept": 0}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_crash_mid_invocation(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.crash")
    result = fn.invoke(b"{}")
    assert result.function_error == "Unhandled"
    assert body(result)["errorType"] == "Runtime.ExitError"  # type: ignore[index]
    assert "exit status 3" in body(result)["errorMessage"]  # type: ignore[index]
    again = fn.invoke(b"{}")  # a fresh worker takes it, and crashes the same way
    assert body(again)["errorType"] == "Runtime.ExitError"  # type: ignore[index]


BAD_HANDLERS = {
    "python3.12": [
        ("nosuchmodule.handler", "Runtime.ImportModuleError", "Unable to import module 'nosuchmodule'"),
        ("app.nosuchfunction", "Runtime.HandlerNotFound", "Handler 'nosuchfunction' missing on module 'app'"),
        ("nodot", "Runtime.MalformedHandlerName", "Bad handler 'nodot'"),
        ("broken.handler", "Runtime.UserCodeSyntaxError", "Syntax error in module 'broken'"),
        ("raises_at_import.handler", "RuntimeError", "cannot start"),
    ],
    "nodejs20": [
        ("nosuchmodule.handler", "Runtime.ImportModuleError", "Cannot find module 'nosuchmodule'"),
        ("app.nosuchfunction", "Runtime.HandlerNotFound", "app.nosuchfunction is undefined or not exported"),
        ("nodot", "Runtime.MalformedHandlerName", "Bad handler"),
        ("broken.handler", "Runtime.UserCodeSyntaxError", "SyntaxError"),
        ("raises_at_import.handler", "Error", "cannot start"),
    ],
}


def code_with_broken_file(runtime: str, tmp_path: Path) -> Path:
    import shutil

    code = tmp_path / "code"
    shutil.copytree(FUNCTIONS / ("python" if runtime.startswith("python") else "nodejs"), code)
    if runtime.startswith("python"):
        (code / "broken.py").write_text("def handler(event, context)\n    return 1\n")
    else:
        (code / "broken.js").write_text("exports.handler = async (event => {\n")
    return code


@pytest.mark.parametrize(
    ("runtime", "handler", "error_type", "message"),
    [(rt, *case) for rt, cases in BAD_HANDLERS.items() for case in cases],
    ids=[f"{rt}-{case[1]}" for rt, cases in BAD_HANDLERS.items() for case in cases],
)
def test_bad_handler_gives_init_error_on_first_invoke(
    runtime: str, handler: str, error_type: str, message: str, start_function: StartFunction, tmp_path: Path
) -> None:
    fn = start_function(runtime, handler, code=code_with_broken_file(runtime, tmp_path))
    for _ in range(2):  # every invoke gets it, as each retries the init
        result = fn.invoke(b"{}")
        assert result.status == 200
        assert result.function_error == "Unhandled"
        assert result.outcome == "init_error"
        error = body(result)
        assert isinstance(error, dict)
        assert error["errorType"] == error_type
        assert message in error["errorMessage"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_four_workers_serve_four_calls_and_refuse_a_fifth(
    runtime: str, start_function: StartFunction
) -> None:
    fn = start_function(runtime, "app.sleep", workers=4, timeout_s=10)
    check_four_workers(fn, sleep=b'{"seconds": 1.5}', quick=b'{"seconds": 0}')


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_payload_limits(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.echo", timeout_s=30, memory_mb=1024)
    payload = b'"' + b"a" * (SIX_MB - 2) + b'"'
    assert len(payload) == SIX_MB
    result = fn.invoke(payload)
    assert result.status == 200, result.body[:300]
    assert result.function_error is None
    assert result.body == payload
    too_big = fn.invoke(b'"' + b"a" * (SIX_MB - 1) + b'"')
    assert too_big.status == 413
    assert too_big.headers["x-amzn-errortype"] == "RequestTooLargeException"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_response_limit(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.grow", timeout_s=30, memory_mb=1024)
    at_limit = fn.invoke(json.dumps({"size": SIX_MB}).encode())
    assert (at_limit.status, at_limit.function_error, len(at_limit.body)) == (200, None, SIX_MB)
    over = fn.invoke(json.dumps({"size": SIX_MB + 1}).encode())
    assert over.status == 200
    assert over.function_error == "Unhandled"
    assert over.outcome == "response_too_large"
    error = body(over)
    assert isinstance(error, dict)
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert str(SIX_MB) in error["errorMessage"]
    assert fn.invoke(b'{"size": 10}').status == 200  # the worker carries on


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unicode_and_non_json_payloads(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.echo")
    event = {"text": "héllo wörld ✓ 日本語 🎉", "emoji": "🦄"}
    result = fn.invoke(json.dumps(event, ensure_ascii=False).encode())
    assert result.status == 200
    assert body(result) == event
    # Lambda's python3.12+ and Node.js runtimes answer UTF-8, not \u escapes.
    assert "🦄".encode() in result.body
    escaped = fn.invoke(json.dumps(event).encode())  # \u escapes in, same event out
    assert body(escaped) == event
    assert fn.invoke(b'"just a string"').body == b'"just a string"'
    assert fn.invoke(b"42").body == b"42"
    assert fn.invoke(b"").body == b"{}"  # an empty payload reaches the function as {}
    not_json = fn.invoke(b"hello, not json")
    assert not_json.status == 400
    assert not_json.headers["x-amzn-errortype"] == "InvalidRequestContentException"
    bad_utf8 = fn.invoke(b'"\xff\xfe"')
    assert bad_utf8.status == 400


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_report_lines(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.log", memory_mb=256)
    ids = []
    for _ in range(2):
        result = fn.invoke(b"{}")
        assert body(result) == "ok"
        ids.append(result.headers["lambda-runtime-aws-request-id"])
    lines = [fn.wait_for_log(rf"^REPORT RequestId: {rid}\t").string for rid in ids]
    reports = []
    for rid, line in zip(ids, lines, strict=True):
        parsed = REPORT.match(line)
        assert parsed is not None, line
        reports.append(parsed)
        assert parsed["id"] == rid
        assert int(parsed["billed"]) >= float(parsed["duration"])
        assert parsed["size"] == "256"
        assert 5 < int(parsed["used"]) < 256
        fn.wait_for_log(rf"^START RequestId: {rid} Version: \$LATEST$")
        fn.wait_for_log(rf"^END RequestId: {rid}$")
    assert reports[0]["init"] is not None  # cold start
    assert reports[1]["init"] is None
    # The handler's log line carries its request id.
    fn.wait_for_log(rf"{ids[0]}\t.*logged from the handler")


def test_python_specifics(start_function: StartFunction) -> None:
    fn = start_function("python3.12", "app.unserialisable")
    error = body(fn.invoke(b"{}"))
    assert isinstance(error, dict)
    assert error["errorType"] == "Runtime.MarshalError"
    assert "Unable to marshal response" in error["errorMessage"]
    nested = start_function("python3.12", "pkg/mod.handler")
    assert body(nested.invoke(b"{}")) == {"from": "pkg/mod"}


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("esm.handler", {"module": "esm"}),
        ("esmpkg/index.handler", {"module": "esm-package"}),
        ("lib/nested.handler", {"from": "lib/nested"}),
        ("app.nested.deeper", "nested export"),
        ("app.callback", {"order": ["sync", "timer"]}),
    ],
    ids=["esm-mjs", "esm-package-type-module", "subfolder", "nested-export", "callback-waits-for-event-loop"],
)
def test_nodejs_module_kinds(handler: str, expected: object, start_function: StartFunction) -> None:
    fn = start_function("nodejs20", handler)
    got = body(fn.invoke(b"{}"))
    if isinstance(got, dict):
        got.pop("requestId", None)
    assert got == expected


def test_nodejs_callback_error(start_function: StartFunction) -> None:
    fn = start_function("nodejs20", "app.callbackError")
    result = fn.invoke(b"{}")
    assert result.function_error == "Unhandled"
    assert body(result)["errorType"] == "TypeError"  # type: ignore[index]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigterm_drains_in_flight_invocations(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.sleep", timeout_s=10)
    results: list[InvokeResult] = []
    t = threading.Thread(target=lambda: results.append(fn.invoke(b'{"seconds": 1}')))
    t.start()
    wait_for_metric(fn, "kubelambda_agent_inflight_invocations 1")
    fn.signal_term()
    fn.wait_for_log("draining")
    assert fn.get("/readyz").status == 503
    t.join(30)
    assert fn.wait_exit(15) == 0
    assert [(r.status, body(r)) for r in results] == [(200, {"slept": 1})]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_log_tail_in_order(runtime: str, start_function: StartFunction) -> None:
    fn = start_function(runtime, "app.log")
    result = fn.invoke(b"{}", headers={"X-Amz-Log-Type": "Tail"})
    rid = result.headers["lambda-runtime-aws-request-id"]
    lines = base64.b64decode(result.headers["x-amz-log-result"]).decode().splitlines()
    assert lines[0] == f"START RequestId: {rid} Version: $LATEST"
    assert any("logged from the handler" in line and rid in line for line in lines[1:-2]), lines
    assert lines[-2] == f"END RequestId: {rid}"
    assert REPORT.match(lines[-1]), lines[-1]


def decoded_digest(event: bytes) -> str:
    """What decoder_seen answers for an event json.loads decodes."""
    return hashlib.sha256(json.dumps(json.loads(event), sort_keys=True).encode()).hexdigest()


def large_event(records: int, *, big: bool = False) -> bytes:
    """DynamoDB stream records (bench/agent_bench.py's shape), with integers beyond 64 bits if ``big``."""
    event = {
        "Records": [
            {
                "eventID": f"{i:032x}",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1796510000.125 + i,
                    "NewImage": {"id": {"N": str(i)}, "body": {"S": "payload \u00e9\U0001f600"}},
                    "SequenceNumber": f"{i:021d}",
                    "SizeBytes": 2**70 + i if big else 100 + i,
                },
            }
            for i in range(records)
        ]
    }
    return json.dumps(event).encode()


def runtime_vendor() -> Path:
    """The runtime's private folder for the Python the local functions run on (this one)."""
    from kubelambda.runtimes import python_runtime_dir

    return python_runtime_dir() / "_vendor" / "python{}.{}".format(*sys.version_info[:2])


def test_python_event_decoder_is_invisible_to_the_handler(start_function: StartFunction) -> None:
    """Large events are decoded by the runtime's own orjson (mapped into the process), which the handler can
    neither see nor import; small ones by json, without loading it; both arrive as json.loads gives them."""
    fn = start_function("python3.12", "app.decoder_seen", timeout_s=30)
    small = b'{"a": [1, 2.5, "\\u00e9"]}'
    seen = body(fn.invoke(small))
    assert isinstance(seen, dict), seen
    assert seen["digest"] == decoded_digest(small)
    assert seen["mapped"] == []  # orjson is loaded at the first large event only
    for event in (large_event(2000), large_event(2000, big=True)):
        assert len(event) > 200_000
        result = fn.invoke(event)
        assert result.function_error is None, result.body[:500]
        seen = body(result)
        assert isinstance(seen, dict), seen
        assert seen["digest"] == decoded_digest(event)  # intact: 2**70 + i stays an int
        assert seen["modules"] == []
        assert seen["path"] == []
        assert seen["import"] == "ImportError: No module named 'orjson'"
        assert [str(Path(m).parent.parent) for m in seen["mapped"]] == [str(runtime_vendor())]


def test_python_handler_bundling_orjson_gets_its_own(start_function: StartFunction, tmp_path: Path) -> None:
    """A handler that brings its own orjson imports that one (its file, its version), beside the runtime's."""
    import shutil

    code = tmp_path / "code"
    shutil.copytree(FUNCTIONS / "python", code)
    vendor = runtime_vendor()
    shutil.copytree(vendor / "orjson", code / "orjson")
    (code / "bundled.py").write_text(
        "import orjson  # at init, before the runtime loads its own\n\nfrom app import decoder_seen\n"
    )
    fn = start_function("python3.12", "bundled.decoder_seen", code=code, timeout_s=30)
    event = large_event(2000)
    seen = body(fn.invoke(event))
    assert isinstance(seen, dict), seen
    assert seen["digest"] == decoded_digest(event)
    assert seen["import"] == str(code / "orjson" / "__init__.py")
    assert seen["modules"] == ["orjson", "orjson.orjson"]
    mapped = {str(Path(m).parent.parent) for m in seen["mapped"]}
    assert mapped == {str(code), str(vendor)}, seen["mapped"]  # the handler's and the runtime's, apart
