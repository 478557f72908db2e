"""Lambda's LoggingConfig with real runtimes (docs/logs.md, "Log format and levels"): in JSON mode every line
of the function's log is a JSON object with Lambda's fields, platform records included, and lines under the
levels are dropped; our Python client, AWS's awslambdaric and AWS's Node.js client alike.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from typing import Any

import pytest

from kltest.ric import ensure_aws_lambda_ric, ensure_awslambdaric
from kubelambda.runtimes import LocalFunction

from .conftest import FUNCTIONS, StartFunction

REQUEST_ID = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
NODE = ("ours-nodejs", "aws-lambda-ric")
JSON_LOGS = {
    "KUBELAMBDA_LOG_FORMAT": "JSON",
    "KUBELAMBDA_APPLICATION_LOG_LEVEL": "WARN",
    "KUBELAMBDA_SYSTEM_LOG_LEVEL": "DEBUG",
}


def start(
    client: str, start_function: StartFunction, request: pytest.FixtureRequest, **env: str
) -> LocalFunction:
    environment = {**JSON_LOGS, **env}
    if client == "ours":
        return start_function("python3.12", "app.levels", environment=environment)
    if client == "ours-nodejs":
        return start_function("nodejs20", "app.levels", environment=environment)
    if client == "awslambdaric":
        path = ensure_awslambdaric()
        return start_function(
            "python3.12",
            "app.levels",
            runtime_cmd=[sys.executable, "-m", "awslambdaric", "app.levels"],
            environment={**environment, "PYTHONPATH": f"{path}:{FUNCTIONS / 'python'}"},
        )
    node = request.getfixturevalue("node")
    entry = ensure_aws_lambda_ric()
    return start_function(
        "nodejs20", "app.levels", runtime_cmd=[node, str(entry), "app.levels"], environment=environment
    )


def invoke_and_read(fn: LocalFunction) -> list[dict[str, Any]]:
    result = fn.invoke(b"{}", headers={"Lambda-Runtime-Aws-Request-Id": REQUEST_ID})
    assert (result.status, result.function_error, result.body) == (200, None, b'"ok"'), fn.logs()
    fn.wait_for_log(r'"type":"platform\.report"', timeout=10)
    records = []
    for line in fn.logs().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"a line of a JSON-format function's log is not JSON: {line!r}\n{fn.logs()}")
        assert isinstance(doc, dict), line
        records.append(doc)
    return records


@pytest.mark.parametrize("client", ["ours", "ours-nodejs", "awslambdaric", "aws-lambda-ric"])
def test_json_format_and_levels(
    client: str, start_function: StartFunction, request: pytest.FixtureRequest
) -> None:
    fn = start(client, start_function, request)
    records = invoke_and_read(fn)

    platform = [r for r in records if r.get("type", "").startswith("platform.")]
    mine = [r for r in platform if r["record"].get("requestId") == REQUEST_ID]
    assert [r["type"] for r in mine] == ["platform.start", "platform.runtimeDone", "platform.report"], records
    assert mine[0]["record"]["version"] == "$LATEST"
    report = mine[2]["record"]
    assert report["status"] == "success"
    assert set(report["metrics"]) >= {"durationMs", "billedDurationMs", "memorySizeMB", "maxMemoryUsedMB"}
    assert report["metrics"]["memorySizeMB"] == 256
    for r in platform:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r

    app = [
        r for r in records if "type" not in r and not str(r.get("message")).startswith("kubelambda-agent:")
    ]
    messages = {str(r["message"]).strip(): r for r in app}
    # applicationLogLevel WARN: debug, info and the plain print (INFO) are dropped, by the runtime or the agent.
    expected = {"warn line", "error line"} | ({"printed json error"} if client not in NODE else set())
    assert set(messages) == expected, records
    warn = "WARN" if client in NODE else "WARNING"  # Python's name, as awslambdaric writes it
    assert (messages["warn line"]["level"], messages["warn line"]["requestId"]) == (warn, REQUEST_ID)
    assert (messages["error line"]["level"], messages["error line"]["requestId"]) == ("ERROR", REQUEST_ID)
    if client not in NODE:
        assert messages["warn line"]["logger"] == "levels"
        assert messages["warn line"]["tenant"] == "t1"  # an extra= field, as awslambdaric writes it
        assert messages["warn line"]["timestamp"].endswith("Z")
    assert not any("printed line" in json.dumps(r) or "debug line" in json.dumps(r) for r in records)


def test_system_level_warn_leaves_out_start_and_report(
    start_function: StartFunction, request: pytest.FixtureRequest
) -> None:
    fn = start(
        "ours",
        start_function,
        request,
        KUBELAMBDA_SYSTEM_LOG_LEVEL="WARN",
        KUBELAMBDA_APPLICATION_LOG_LEVEL="INFO",
    )
    result = fn.invoke(b"{}", headers={"Lambda-Runtime-Aws-Request-Id": REQUEST_ID, "X-Amz-Log-Type": "Tail"})
    assert result.status == 200
    # The tail (X-Amz-Log-Result) is the log as written: down to INFO, no platform record at WARN. A plain print
    # stays plain text, as on Lambda.
    lines = base64.b64decode(result.headers["x-amz-log-result"]).decode().splitlines()
    assert "printed line" in lines, lines
    records = [json.loads(line) for line in lines if line != "printed line"]
    assert [r["message"] for r in records] == [
        "info line",
        "warn line",
        "error line",
        "printed json error",
    ], lines
    assert all(r["requestId"] == REQUEST_ID for r in records[:3]), records
