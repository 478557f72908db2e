"""The issue's acceptance checks, shared by the Java, Go, Ruby and provided runtime tests.

Each takes a started LocalFunction (or a starter) and what differs per language: handler names,
error types, payloads.
"""

from __future__ import annotations

import json
import re
import threading
import time

from kubelambda.runtimes import InvokeResult, LocalFunction

REPORT = re.compile(
    r"^REPORT RequestId: (?P<id>[0-9a-f-]+)\tDuration: (?P<duration>\d+\.\d\d) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<size>\d+) MB\tMax Memory Used: (?P<used>\d+) MB\t"
    r"(?:Init Duration: (?P<init>\d+\.\d\d) ms\t)?(?:Status: (?P<status>\w+)\t)?"
)
CONTEXT_HEADERS = {
    "Lambda-Runtime-Aws-Request-Id": "11111111-2222-4333-8444-555555555555",
    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:eu-west-1:123456789012:function:test-fn:live",
    "Lambda-Runtime-Cognito-Identity": json.dumps(
        {"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"}
    ),
    "Lambda-Runtime-Client-Context": json.dumps(
        {"client": {"installation_id": "inst-1"}, "custom": {"k": "v"}, "env": {"platform": "x"}}
    ),
    "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
}


def body(result: InvokeResult) -> object:
    return json.loads(result.body)


def error_of(result: InvokeResult) -> dict[str, object]:
    assert result.status == 200, result
    assert result.function_error == "Unhandled", result
    got = body(result)
    assert isinstance(got, dict), result
    return got


def check_echo(fn: LocalFunction) -> None:
    for event in (
        {"hello": "world", "n": [1, 2.5, None, True], "text": "héllo ✓ 日本語 🦄"},
        [1, "two", {"three": 3}],
        "just a string",
        42,
    ):
        result = fn.invoke(json.dumps(event, ensure_ascii=False).encode())
        assert (result.status, result.function_error) == (200, None), result
        assert body(result) == event
    assert result.headers["x-amz-executed-version"] == "$LATEST"


def check_context(got: dict[str, object], *, runtime: str) -> None:
    """The fields every runtime's ctx handler returns, after the call with CONTEXT_HEADERS (timeout 5 s)."""
    remaining = got.pop("remaining")
    assert isinstance(remaining, list), got
    first, second = remaining
    assert 0 < second < first <= 5000, remaining
    assert first - second >= 40, remaining
    log_stream = got.pop("log_stream_name")
    assert isinstance(log_stream, str)
    assert log_stream.startswith(time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()))
    assert got == {
        "aws_request_id": "11111111-2222-4333-8444-555555555555",
        "function_name": "test-fn",
        "function_version": "$LATEST",
        "invoked_function_arn": CONTEXT_HEADERS["Lambda-Runtime-Invoked-Function-Arn"],
        "memory_limit_in_mb": "256",
        "log_group_name": "/aws/lambda/test-fn",
        "identity": {"cognito_identity_id": "id-1", "cognito_identity_pool_id": "pool-1"},
        "client_context": {"installation_id": "inst-1", "custom": {"k": "v"}, "env": {"platform": "x"}},
        "trace_id": CONTEXT_HEADERS["X-Amzn-Trace-Id"],
        "env": {
            "AWS_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
            "TZ": "UTC",
            "GREETING": "hello",
        },
    }


def check_timeout_then_fresh_worker(fn: LocalFunction, *, long: bytes, short: bytes) -> InvokeResult:
    """``fn`` has a 1 s timeout; ``long`` overruns it, ``short`` does not. Returns the short call's result."""
    result = fn.invoke(long)
    assert result.outcome == "timeout", result
    assert "Task timed out after 1.00 seconds" in str(error_of(result)["errorMessage"])
    # The killed worker is started again at once. A call made meanwhile waits for its init within its own
    # 1 s, which a JVM on a loaded machine does not always fit; so the call goes once the worker is up (its
    # init is the second one observed). It is still the new worker's first call: its REPORT has Init Duration.
    wait_for_metric(fn, "kubelambda_agent_init_duration_seconds_count 2", timeout=60)
    after = fn.invoke(short)
    assert (after.status, after.function_error) == (200, None), after
    report = fn.wait_for_log(rf"^REPORT RequestId: {after.headers['lambda-runtime-aws-request-id']}\t")
    assert "Init Duration" in report.string
    metrics = fn.get("/metrics").body.decode()
    assert "kubelambda_agent_timeouts_total 1" in metrics
    assert "kubelambda_agent_worker_restarts_total 1" in metrics
    return after


def check_crash(fn: LocalFunction) -> None:
    for _ in range(2):  # a fresh worker takes the second call, and crashes the same way
        error = error_of(fn.invoke(b"{}"))
        assert error["errorType"] == "Runtime.ExitError", error
        assert "exit status 3" in str(error["errorMessage"])


def check_init_error(fn: LocalFunction, *, error_type: str, message: str) -> dict[str, object]:
    error: dict[str, object] = {}
    for _ in range(2):  # every invoke gets it, as each retries the init
        result = fn.invoke(b"{}")
        assert result.outcome == "init_error", result
        error = error_of(result)
        assert error["errorType"] == error_type, error
        assert message in str(error["errorMessage"]), error
    return error


def check_four_workers(fn: LocalFunction, *, sleep: bytes, quick: bytes) -> None:
    """``fn`` has four workers; four ``sleep`` calls run at once, a fifth is refused with 429."""
    results: list[InvokeResult] = []
    lock = threading.Lock()

    def call() -> None:
        r = fn.invoke(sleep)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for_metric(fn, "kubelambda_agent_inflight_invocations 4")
    fifth = fn.invoke(quick)
    for t in threads:
        t.join(60)
    assert fifth.status == 429
    assert fifth.headers["x-amzn-errortype"] == "TooManyRequestsException"
    assert fifth.outcome == "refused_busy"
    assert [(r.status, r.function_error) for r in results] == [(200, None)] * 4, results
    assert fn.invoke(quick).status == 200


def wait_for_metric(fn: LocalFunction, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = fn.get("/metrics").body.decode()
        if line in seen.splitlines():
            return
        time.sleep(0.01)  # polling interval of a condition wait, not synchronisation by itself
    raise AssertionError(f"metric {line!r} not seen within {timeout}s:\n{seen}")


def wait_for_fresh_worker(fn: LocalFunction) -> None:
    """After a timeout of a one-worker function: the worker started again has finished its init (the second init
    observed). A call made before that waits for the init within its own timeout (as on Lambda), which a short
    timeout on a loaded machine does not always hold (a JVM's start)."""
    wait_for_metric(fn, "kubelambda_agent_init_duration_seconds_count 2", timeout=60)


def check_report_lines(fn: LocalFunction, *, memory_mb: int) -> list[str]:
    """Two calls: START/END/REPORT for each, Init Duration on the first only. Returns the request ids."""
    ids = []
    for _ in range(2):
        result = fn.invoke(b"{}")
        assert (result.status, result.function_error) == (200, None), result
        ids.append(result.headers["lambda-runtime-aws-request-id"])
    reports = []
    for rid in ids:
        line = fn.wait_for_log(rf"^REPORT RequestId: {rid}\t").string
        parsed = REPORT.match(line)
        assert parsed is not None, line
        reports.append(parsed)
        assert parsed["size"] == str(memory_mb)
        assert int(parsed["billed"]) >= float(parsed["duration"])
        fn.wait_for_log(rf"^START RequestId: {rid} Version: \$LATEST$")
        fn.wait_for_log(rf"^END RequestId: {rid}$")
    assert reports[0]["init"] is not None
    assert reports[1]["init"] is None
    fn.wait_for_log(r"printed from the handler")
    return ids
