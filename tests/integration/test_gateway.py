"""The gateway against the real local cluster: the operator, function pods running the agent, boto3 as the client.

The operator and the gateway each run as their own ServiceAccount (hack/*-rbac.yaml).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.platform import (
    AGENT_KEY,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
    running_platform,
    start_gateway,
    stop_gateway,
)
from kubelambda.agentauth import bearer, function_token
from kubelambda.gateway.registry import Registry
from kubelambda.gateway.scaler import Autoscaler
from kubelambda.gateway.throttler import Throttler
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]

HANDLER = """
import time


def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    print("handled", context.aws_request_id)
    return {"echo": event, "requestId": context.aws_request_id, "function": context.function_name}
"""


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(cluster, kube, http_routes=True) as platform:
        yield platform


def function(name: str, **spec: Any) -> JSON:
    return python_function(name, HANDLER, **spec)


async def replicas(kube: KubeClient, ns: str, name: str) -> int:
    scale = await kube.get(
        resource_path("apps/v1", "deployments", namespace=ns, name=name, subresource="scale")
    )
    return int(scale["spec"].get("replicas", 0))


def invoke_sync(client: Any, name: str, payload: JSON, **kwargs: Any) -> JSON:
    response: JSON = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kwargs)
    response["body"] = json.loads(response["Payload"].read() or b"null")
    return response


async def invoke(client: Any, name: str, payload: JSON, **kwargs: Any) -> JSON:
    """boto3 is blocking and the gateway runs in this test's event loop: call it from a thread."""
    return await asyncio.to_thread(invoke_sync, client, name, payload, **kwargs)


async def call(method: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(method, **kwargs)


async def test_boto3_invokes_from_zero_with_one_scale_up_for_twenty_concurrent_requests(env: Env) -> None:
    await env.deploy(function("cold"))
    assert await replicas(env.kube, env.namespace, "cold") == 0
    client = lambda_client(env.url)
    before = env.gateway.path.activator.scale_ups
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(20) as pool:  # the default executor has only a few threads on two cores
        results = await asyncio.gather(
            *(
                loop.run_in_executor(pool, invoke_sync, client, f"{env.namespace}/cold", {"i": i})
                for i in range(20)
            )
        )
    assert [r["StatusCode"] for r in results] == [200] * 20
    assert sorted(r["body"]["echo"]["i"] for r in results) == list(range(20))
    assert all("FunctionError" not in r for r in results)
    assert env.gateway.path.activator.scale_ups - before == 1
    headers = [r["ResponseMetadata"]["HTTPHeaders"] for r in results]
    assert any(h.get("x-kubelambda-cold-start") == "true" for h in headers)
    assert all(h.get("x-amz-executed-version") == "$LATEST" for h in headers)
    # The ARN form names the namespace in its account field; the log tail comes back on request.
    arn = f"arn:aws:lambda:us-east-1:{env.namespace}:function:cold"
    warm = await invoke(client, arn, {"again": True}, LogType="Tail")
    assert warm["ResponseMetadata"]["HTTPHeaders"]["x-kubelambda-cold-start"] == "false"
    log = base64.b64decode(warm["LogResult"]).decode()
    assert f"START RequestId: {warm['body']['requestId']}" in log
    assert "REPORT RequestId:" in log


async def test_a_burst_from_zero_waits_for_the_instances_it_started_instead_of_being_throttled(
    env: Env,
) -> None:
    # Eight concurrent first calls of one invocation per instance, each busy for 4 s: the first instance takes one
    # and the rest find it busy for longer than slot_wait_seconds (1 s here). They wait for the instances the
    # autoscaler asked for (as Lambda waits for new execution environments): none is answered 429.
    calls = 8
    doc = function(
        "burst", timeoutSeconds=30, concurrency={"perInstance": 1}, scaling={"maxInstances": calls}
    )
    await env.deploy(doc)
    client = lambda_client(env.url)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(calls) as pool:
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, invoke_sync, client, f"{env.namespace}/burst", {"sleep": 4, "i": i}
                )
                for i in range(calls)
            ),
            return_exceptions=True,
        )
    answers = [r if isinstance(r, BaseException) else r["StatusCode"] for r in results]
    assert answers == [200] * calls, answers
    assert sorted(r["body"]["echo"]["i"] for r in results if isinstance(r, dict)) == list(range(calls))
    assert await replicas(env.kube, env.namespace, "burst") > 1


async def test_the_aws_cli_invokes_through_the_gateway(env: Env, tmp_path: Path) -> None:
    await env.deploy(function("cli"))
    out = tmp_path / "out.json"
    aws_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).parent / "aws"), "lambda", "invoke",
            "--endpoint-url", env.url,
            "--function-name", f"arn:aws:lambda:us-east-1:{env.namespace}:function:cli",
            "--payload", '{"from": "aws-cli"}',
            "--log-type", "Tail",
            str(out),
        ],
        capture_output=True, text=True, env=aws_env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "$LATEST"
    assert "REPORT RequestId" in base64.b64decode(answer["LogResult"]).decode()
    assert json.loads(out.read_text())["echo"] == {"from": "aws-cli"}


async def test_errors_follow_the_invoke_api(env: Env) -> None:
    await env.deploy(function("errs", timeoutSeconds=1))
    client = lambda_client(env.url)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await call(client.invoke, FunctionName=f"{env.namespace}/nope", Payload=b"{}")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await call(client.invoke, FunctionName=f"{env.namespace}/errs", Payload=b"{not json")
    with pytest.raises(client.exceptions.RequestTooLargeException):
        await call(
            client.invoke,
            FunctionName=f"{env.namespace}/errs",
            Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"',
        )
    dry = await call(
        client.invoke, FunctionName=f"{env.namespace}/errs", InvocationType="DryRun", Payload=b"{}"
    )
    assert dry["StatusCode"] == 204
    failed = await invoke(client, f"{env.namespace}/errs", {"fail": True})
    assert failed["StatusCode"] == 200
    assert failed["FunctionError"] == "Unhandled"
    assert failed["body"]["errorType"] == "ValueError"
    assert failed["body"]["errorMessage"] == "asked to fail"
    timed_out = await invoke(client, f"{env.namespace}/errs", {"sleep": 5})
    assert timed_out["FunctionError"] == "Unhandled"
    assert "Task timed out after 1.00 seconds" in timed_out["body"]["errorMessage"]
    # The instance was replaced behind the timeout; the next call works.
    after = await invoke(client, f"{env.namespace}/errs", {"ok": 1})
    assert after["body"].get("echo") == {"ok": 1}, after["body"]


SLOW_INIT_HANDLER = """
import time

time.sleep(3)  # the runtime's init: longer than the function's timeout


def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"echo": event, "remaining": context.get_remaining_time_in_millis()}
"""


async def test_a_runtime_init_does_not_count_toward_the_timeout(env: Env) -> None:
    """As in Lambda (its Init phase), a runtime's init is not part of the function's timeout, also through the
    gateway: the worker that replaces one killed at its timeout initialises for 3 s, and the next call, with a
    1 s timeout, waits for it and then runs (CI once failed test_errors_follow_the_invoke_api so: the gateway's
    deadline counted a replacement runtime's init, slow on a loaded machine)."""
    await env.deploy(python_function("slowinit", SLOW_INIT_HANDLER, timeoutSeconds=1))
    client = lambda_client(env.url)
    first = await invoke(client, f"{env.namespace}/slowinit", {"n": 1})
    assert first["body"].get("echo") == {"n": 1}, first["body"]
    timed_out = await invoke(client, f"{env.namespace}/slowinit", {"sleep": 5})
    assert "Task timed out after 1.00 seconds" in timed_out["body"]["errorMessage"], timed_out["body"]
    after = await invoke(client, f"{env.namespace}/slowinit", {"n": 2})
    assert after["body"].get("echo") == {"n": 2}, after["body"]
    assert 0 < after["body"]["remaining"] <= 1000, after["body"]


async def test_reserved_concurrency_is_never_exceeded(env: Env) -> None:
    doc = function(
        "limited",
        timeoutSeconds=10,
        concurrency={"reserved": 2, "perInstance": 2},
        scaling={"minInstances": 1, "maxInstances": 1},
    )
    await env.deploy(doc)
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.ready_endpoints((env.namespace, "limited"))),
        bool,
        what="the warm instance",
        timeout=60,
    )
    client = lambda_client(env.url)

    def call(i: int) -> str:
        try:
            return str(invoke_sync(client, f"{env.namespace}/limited", {"sleep": 2, "i": i})["StatusCode"])
        except client.exceptions.TooManyRequestsException as e:
            return str(e.response.get("Reason"))

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(6) as pool:
        outcomes = await asyncio.gather(*(loop.run_in_executor(pool, call, i) for i in range(6)))
    assert sorted(outcomes) == ["200", "200"] + ["ReservedFunctionConcurrentInvocationLimitExceeded"] * 4
    # Seen from the agent itself (2 workers): exactly 2 invocations arrived, and none was refused as busy,
    # so no third one was ever in flight there.
    endpoint = env.gateway.registry.ready_endpoints((env.namespace, "limited"))[0]
    token = function_token(AGENT_KEY, env.namespace, "limited")  # agents answer only their token
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{endpoint}/metrics", headers=bearer(token)) as resp,
    ):
        text = await resp.text()
    counts = {
        line.split('outcome="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kubelambda_agent_invocations_total{")
    }
    assert counts["success"] == 2, counts
    assert counts.get("refused_busy", 0) == 0, counts
    assert sum(counts.values()) == 2, counts


async def test_idle_functions_scale_to_zero_and_wake_again(env: Env) -> None:
    await env.deploy(function("sleepy", scaling={"scaleToZeroAfterSeconds": 3}))
    client = lambda_client(env.url)
    assert (await invoke(client, f"{env.namespace}/sleepy", {}))["StatusCode"] == 200
    assert await replicas(env.kube, env.namespace, "sleepy") == 1
    await wait_for(
        lambda: replicas(env.kube, env.namespace, "sleepy"),
        lambda n: n == 0,
        what="scale to zero after 3 s idle",
        timeout=60,
    )
    await wait_for(
        lambda: env.kube.list(
            resource_path("v1", "pods", namespace=env.namespace),
            params={"labelSelector": "kubelambda.io/function=sleepy"},
        ),
        lambda pods: pods["items"] == [],
        what="the pods gone",
        timeout=60,
    )
    again = await invoke(client, f"{env.namespace}/sleepy", {"back": True})
    assert again["body"]["echo"] == {"back": True}
    assert again["ResponseMetadata"]["HTTPHeaders"]["x-kubelambda-cold-start"] == "true"


async def test_sustained_load_scales_out_and_back_down(env: Env) -> None:
    # One invocation per instance; each call takes 0.5 s; 4 callers keep 4 invocations in flight.
    doc = function("busy", timeoutSeconds=5, scaling={"maxInstances": 10, "scaleToZeroAfterSeconds": 3})
    await env.deploy(doc)
    client = lambda_client(env.url)
    stop = asyncio.Event()
    peak = 0

    async def caller() -> None:
        while not stop.is_set():
            await invoke(client, f"{env.namespace}/busy", {"sleep": 0.5})

    async def watch_scale() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(env.gateway.registry.ready_endpoints((env.namespace, "busy"))))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(caller()) for _ in range(4)] + [asyncio.create_task(watch_scale())]
    try:
        # Four in flight, one per instance: four ready instances (the panic window reacts within seconds).
        await wait_for(
            lambda: asyncio.sleep(0, result=peak),
            lambda p: p >= 4,
            what="scale-out to 4 instances",
            timeout=60,
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert await replicas(env.kube, env.namespace, "busy") <= 10
    # Load gone: back to zero after the idle period, through the rate-limited halving.
    await wait_for(
        lambda: replicas(env.kube, env.namespace, "busy"),
        lambda n: n == 0,
        what="scale back down to zero",
        timeout=90,
    )


async def test_a_restarted_gateway_routes_from_its_watches(env: Env) -> None:
    await env.deploy(function("again", scaling={"minInstances": 1}))
    # A second gateway with nothing in memory: it learns Functions and endpoints from its watches.
    fresh, url = await start_gateway(env.cluster, env.kube)
    try:
        answer = await invoke(lambda_client(url), f"{env.namespace}/again", {"after": "restart"})
        assert answer["body"]["echo"] == {"after": "restart"}
    finally:
        await stop_gateway(fresh)


WEB_HANDLER = """
import base64, json


def handler(event, context):
    if event["rawPath"] == "/png":
        return {"statusCode": 200, "headers": {"content-type": "image/png"}, "isBase64Encoded": True,
                "body": base64.b64encode(b"\\x89PNG").decode()}
    if event["rawPath"] == "/fail":
        raise RuntimeError("boom")
    if event["rawPath"] == "/plain":
        return {"seen": event["rawPath"]}
    return {"statusCode": 201, "headers": {"x-echo": event["requestContext"]["http"]["method"]},
            "cookies": ["a=1"], "body": json.dumps(event)}
"""


async def test_http_routes_speak_api_gateway_payload_2(env: Env) -> None:
    doc = function("web")
    doc["spec"]["code"]["inline"] = {"app.py": WEB_HANDLER}
    await env.deploy(doc)
    base = f"{env.url}/http/{env.namespace}/web"
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{base}/items/7?a=1&a=2",
            data=b"\x00\xff",
            headers={"Content-Type": "application/octet-stream", "Cookie": "s=1"},
        ) as resp:
            assert resp.status == 201
            assert resp.headers["x-echo"] == "PUT"
            assert resp.headers.getall("Set-Cookie") == ["a=1"]
            event = json.loads(await resp.read())
        assert event["version"] == "2.0"
        assert event["rawPath"] == "/items/7"
        assert event["queryStringParameters"] == {"a": "1,2"}
        assert event["cookies"] == ["s=1"]
        assert event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == b"\x00\xff"
        async with http.get(f"{base}/png") as resp:
            assert (resp.status, resp.headers["Content-Type"], await resp.read()) == (
                200,
                "image/png",
                b"\x89PNG",
            )
        async with http.get(f"{base}/plain") as resp:
            assert (resp.status, await resp.json()) == (200, {"seen": "/plain"})
        async with http.get(f"{base}/fail") as resp:
            assert (resp.status, await resp.json()) == (500, {"message": "Internal Server Error"})
        async with http.get(f"{env.url}/http/{env.namespace}/nope/") as resp:
            assert (resp.status, await resp.json()) == (404, {"message": "Not Found"})


async def test_a_scale_refused_before_the_operator_grants_it_is_retried_quietly_then_warned_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A Function in the registry before the operator granted the gateway its per-function Role (a version just
    published): the autoscaler's 403s are retried with back-off (debug), one warning naming the Role once they
    have lasted 30 s, and it scales as soon as the Role exists. A clock the test moves: no waiting."""
    caplog.set_level(logging.DEBUG, logger="kubelambda.gateway.scaler")
    name, ns = "ungranted", env.namespace
    labels = {"app": name}
    await env.kube.create(
        resource_path("apps/v1", "deployments", namespace=ns),
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "never-started"}]},
                },
            },
        },
    )
    registry = Registry()
    registry.apply_function(
        "ADDED",
        {
            "metadata": {"name": name, "namespace": ns, "uid": "u", "generation": 1},
            "spec": {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x"}}},
            "status": {"observedGeneration": 1},
        },
    )
    scaler = Autoscaler(Throttler(), registry, env.gateway.kube)
    start = 1000.0
    scaler.note_active((ns, name), start)  # tracked from now (the sampler's part)
    for t in range(0, 62, 2):  # 31 decisions over 60 s
        await scaler.decide_once(start + t)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "kubelambda.gateway.scaler"]
    quiet = [m for level, m in messages if level == logging.DEBUG and "yet (403" in m]
    warned = [m for level, m in messages if level == logging.WARNING]
    # Tries at 0, 2, 6, 14, 30 (the warning: 30 s refused) and 46 s: back-off 2, 4, 8, 16, 16 s.
    assert len(quiet) == 5, messages
    assert len(warned) == 1, messages
    assert f"{ns}/{name}-scale" in warned[0], warned
    assert "403" in warned[0], warned

    rule = {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": [name],
        "verbs": ["get"],
    }
    await env.kube.create(
        resource_path("rbac.authorization.k8s.io/v1", "roles", namespace=ns),
        {"metadata": {"name": f"{name}-scale"}, "rules": [rule]},
    )
    await env.kube.create(
        resource_path("rbac.authorization.k8s.io/v1", "rolebindings", namespace=ns),
        {
            "metadata": {"name": f"{name}-scale"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-scale"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "kubelambda-gateway", "namespace": "kubelambda-system"}
            ],
        },
    )
    clock = [start + 62]

    async def decide() -> int | None:
        await scaler.decide_once(clock[0])
        clock[0] += 20  # past any back-off: every call tries
        return scaler.tracks[(ns, name)].written

    await wait_for(decide, lambda written: written == 0, what="the scale read once the Role exists")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "kubelambda.gateway.scaler"]
    assert any(level == logging.INFO and "May scale" in m for level, m in messages), messages
    assert len([m for level, m in messages if level == logging.WARNING]) == 1, messages
