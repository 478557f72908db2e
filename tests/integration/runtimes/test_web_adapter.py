"""A public Lambda extension built from its published source runs unchanged on the agent: AWS Labs' Lambda Web
Adapter (crate ``lambda_web_adapter``, hack/lambda-web-adapter.sh). As its Lambda layer does, it sits in
``/opt/extensions``, registers with the Extensions API, waits for the function's web app to answer, then runs the
Runtime API loop itself, turning API Gateway events into HTTP requests to the app and the app's answers into
API Gateway responses. The function's own "runtime" is only a plain web app (functions/webapp)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kltest.ric import ensure_lambda_web_adapter
from kubelambda.runtimes import LocalFunction, local_command

from .conftest import FUNCTIONS, free_loopback

WEBAPP = FUNCTIONS / "webapp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def adapter() -> Path:
    return ensure_lambda_web_adapter()


@pytest.fixture
def web_function(agent: Path, adapter: Path, tmp_path: Path) -> Iterator[LocalFunction]:
    opt = tmp_path / "opt"
    (opt / "extensions").mkdir(parents=True)
    shutil.copy(adapter, opt / "extensions" / "lambda-adapter")
    ip = free_loopback([8080, 9001])
    cmd = local_command(
        "provided",
        WEBAPP,
        "bootstrap",
        agent=agent,
        listen=f"{ip}:8080",
        timeout_s=10,
        function_name="web-fn",
        base_env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        environment={"AWS_LWA_PORT": str(free_port()), "AWS_LWA_PASS_THROUGH_PATH": "/events"},
        runtime_cmd=[str(WEBAPP / "bootstrap")],
    )
    cmd.argv[cmd.argv.index("--opt-dir=")] = f"--opt-dir={opt}"
    fn = LocalFunction(cmd)
    fn.start()
    try:
        fn.wait_ready(timeout=60)
        yield fn
    finally:
        fn.stop()


def http_api_event(method: str, path: str, body: str) -> dict[str, object]:
    """An API Gateway HTTP API (payload 2.0) event, as the gateway's HTTP routes send (LAMBDA-COMPAT.md)."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "q=1",
        "headers": {"content-type": "application/json", "x-test": "yes", "host": "example.test"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "api",
            "domainName": "example.test",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "t",
            },
            "requestId": "r1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "05/Dec/2026:10:00:00 +0000",
            "timeEpoch": 1796464800000,
        },
        "body": base64.b64encode(body.encode()).decode(),
        "isBase64Encoded": True,
    }


def test_the_web_adapter_serves_api_gateway_events_from_a_plain_web_app(web_function: LocalFunction) -> None:
    result = web_function.invoke(json.dumps(http_api_event("POST", "/orders", '{"n": 1}')))
    assert (result.status, result.function_error) == (200, None), (result, web_function.logs()[-3000:])
    answer = json.loads(result.body)
    assert answer["statusCode"] == 201
    assert answer["headers"]["x-app"] == "webapp"
    app_body = (
        answer["body"] if not answer.get("isBase64Encoded") else base64.b64decode(answer["body"]).decode()
    )
    assert json.loads(app_body) == {
        "method": "POST",
        "path": "/orders?q=1",
        "body": '{"n": 1}',
        "x-test": "yes",
    }


def test_a_non_http_event_reaches_the_pass_through_path(web_function: LocalFunction) -> None:
    event = {"Records": [{"eventSource": "aws:sqs", "body": "hello"}]}
    result = web_function.invoke(json.dumps(event))
    assert (result.status, result.function_error) == (200, None), (result, web_function.logs()[-3000:])
    seen = json.loads(result.body)
    assert (seen["method"], seen["path"]) == ("POST", "/events")
    assert json.loads(seen["body"]) == event


def test_the_adapter_is_an_extension_of_the_environment(web_function: LocalFunction) -> None:
    """Init covered the extension (REPORT's Init Duration) and every invocation ends in a REPORT."""
    for _ in range(3):
        assert web_function.invoke(json.dumps(http_api_event("GET", "/", ""))).status == 200
    web_function.wait_for_log(r"REPORT RequestId: .*Init Duration")
    # The agent writes an invocation's REPORT once the runtime asks for the next event, after the answer went out.
    deadline = time.monotonic() + 10
    while web_function.logs().count("REPORT RequestId:") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web_function.logs().count("REPORT RequestId:") >= 3
