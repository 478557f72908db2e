"""Function logs that outlive their pods (docs/logs.md), on the real local cluster with a real nats-server.

The operator and the gateway are given the module's NATS: function pods and warm-pool pods ship their log to it,
the operator makes each namespace's log stream, and ``kubelambda logs`` (a subprocess, as a user runs it) reads
it after the pods are gone.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml

from kltest import Cluster, create_namespace, wait_for
from kltest.platform import (
    FAST_ASYNC,
    POOL_NS,
    Env,
    PlatformUnderTest,
    install_crds,
    lambda_client,
    python_function,
    start_gateway,
    start_operator,
    stop_gateway,
    token_of,
)
from kubelambda import logstore
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]

HANDLER = """
import json


def handler(event, context):
    print("hello from", context.aws_request_id, event.get("i"))
    print(json.dumps({"level": "ERROR", "message": "something to look at", "i": event.get("i")}))
    return {"ok": True}
"""


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    """The gateway (Event invocations and a one-pod python3.11 warm pool) and the operator, both given the
    module's NATS, so function pods and warm-pool pods ship their logs there."""
    await install_crds(cluster, kube)
    gateway, url = await start_gateway(
        cluster,
        kube,
        slot_wait_seconds=1.0,
        autoscale_interval_seconds=0.5,
        nats_url=nats_server.url,
        warm_pool_sizes={"python3.11": 1},
        # A specialised pool pod goes when the function's own pod is ready, or after this: with scale to zero
        # after 2 s, the own pod may never get ready, and the test waits for every instance to be gone.
        warm_pool_max_lifetime_seconds=5.0,
        **FAST_ASYNC,
    )
    try:
        operator = await start_operator(
            cluster, kube, problem_retry_seconds=1.0, gateway_url=url, nats_url=nats_server.url
        )
        try:
            yield PlatformUnderTest(operator, gateway, url)
        finally:
            await operator.stop()
    finally:
        await stop_gateway(gateway, kube)


async def kubelambda_logs(
    env: Env, *args: str, kubeconfig: Path | None = None, store: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubelambda logs -n NAMESPACE ARGS`, told the store's URL (``store``) or nothing but the cluster."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "AWS_"))}
    run_env = {
        **clean,
        "KUBECONFIG": str(kubeconfig or env.cluster.kubeconfig),
        **({"KUBELAMBDA_LOG_STORE_URL": env.nats_url} if store else {}),
        "KUBELAMBDA_STATE_DIR": "/nonexistent",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelambda", "logs", "-n", env.namespace, *args],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=120,
    )


def invoke_tail(url: str, name: str, payload: JSON) -> tuple[str, str, dict[str, str]]:
    """A sync invoke with LogType=Tail: its request id (boto3's ResponseMetadata), log tail and headers."""
    response = lambda_client(url).invoke(FunctionName=name, Payload=json.dumps(payload), LogType="Tail")
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response, response["Payload"].read()
    tail = base64.b64decode(response["LogResult"]).decode()
    start = next(line for line in tail.splitlines() if line.startswith("START RequestId: "))
    # The SDK's request id (x-amzn-RequestId) is the invocation's, in START and in the log store.
    request_id = response["ResponseMetadata"]["RequestId"]
    assert start.split()[2] == request_id, (start, response["ResponseMetadata"])
    return request_id, tail, response["ResponseMetadata"]["HTTPHeaders"]


async def instances(kube: KubeClient, namespace: str, name: str) -> list[str]:
    own = await kube.list(
        resource_path("v1", "pods", namespace=namespace),
        params={"labelSelector": f"kubelambda.io/function={name}"},
    )
    pool = await kube.list(
        resource_path("v1", "pods", namespace=POOL_NS),
        params={
            "labelSelector": f"kubelambda.io/function={name},kubelambda.io/function-namespace={namespace}"
        },
    )
    return [p["metadata"]["name"] for p in own["items"] + pool["items"]]


async def stored(env: Env, name: str, request_id: str) -> list[str]:
    nc = await nats.connect(env.nats_url)
    try:
        query = logstore.LogQuery(env.namespace, name, request_id=request_id)
        return [r.message async for r in logstore.read(nc, query)]
    finally:
        await nc.close()


async def deployed_and_invoked(env: Env, name: str, payload: JSON) -> str:
    """Deploys HANDLER as ``name``, invokes it once and waits for the request's REPORT in the store; its id."""
    await env.deploy(python_function(name, HANDLER))
    rid, _, _ = await asyncio.to_thread(invoke_tail, env.url, f"{env.namespace}/{name}", payload)
    await wait_for(
        lambda: stored(env, name, rid),
        lambda got: any(m.startswith("REPORT ") for m in got),
        what=f"request {rid}'s REPORT stored",
    )
    return rid


async def test_a_cold_invoke_served_by_a_warm_pool_pod_is_readable_by_request_id_after_scale_to_zero(
    env: Env,
) -> None:
    doc = python_function("logged", HANDLER, scaling={"scaleToZeroAfterSeconds": 2})
    await env.deploy(doc)
    rid, tail, headers = await asyncio.to_thread(invoke_tail, env.url, f"{env.namespace}/logged", {"i": 1})
    assert headers.get("x-kubelambda-warm-pool"), f"not served by a warm-pool pod: {headers}"
    assert f"hello from {rid} 1" in tail
    # Everything of the request is in the store (the agent ships in the background; REPORT is the last line).
    messages = await wait_for(
        lambda: stored(env, "logged", rid),
        lambda got: any(m.startswith("REPORT RequestId: ") for m in got),
        what=f"request {rid}'s REPORT in the log store",
    )
    assert messages[0].startswith(f"START RequestId: {rid} ")
    assert f"hello from {rid} 1" in messages
    # Scaled to zero: neither the pool pod that served it nor any pod of the function is left.
    await wait_for(
        lambda: instances(env.kube, env.namespace, "logged"),
        lambda pods: pods == [],
        what="every instance of the function gone",
        timeout=120,
    )
    done = await kubelambda_logs(env, "logged", "--request-id", rid)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"START RequestId: {rid} Version: $LATEST"), done.stdout
    assert f"hello from {rid} 1" in lines
    assert lines[-1].startswith(f"REPORT RequestId: {rid}\t"), done.stdout
    # Filters: the JSON line at ERROR, a text filter, JSON output with the record's attributes.
    level = await kubelambda_logs(env, "logged", "--level", "error")
    assert level.returncode == 0, level.stderr
    assert [json.loads(line)["level"] for line in level.stdout.splitlines()] == ["ERROR"]
    as_json = await kubelambda_logs(env, "logged", "--filter", "hello from", "-o", "json")
    (record,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (record["namespace"], record["function"], record["requestId"]) == (env.namespace, "logged", rid)
    assert record["pod"] == headers["x-kubelambda-warm-pool"]
    # An empty answer says why.
    none = await kubelambda_logs(env, "logged", "--request-id", "no-such-request")
    assert none.returncode == 0
    assert none.stdout == ""
    assert "No log records for request no-such-request of Function" in none.stderr
    later = await kubelambda_logs(env, "logged", "--since", "2099-01-01T00:00:00Z")
    assert "no invocation logged since 2099-01-01T00:00:00Z" in later.stderr


async def test_a_cold_invoke_of_a_function_scaled_to_zero_is_readable_through_the_gateway_after_its_pod_went(
    env: Env,
) -> None:
    """No warm pool: the cold invoke starts the function's own pod, which scale to zero removes; the request id of
    boto3's ResponseMetadata then finds its records through the gateway (no route to NATS)."""
    scaling = {"scaleToZeroAfterSeconds": 2, "warmPool": False}
    await env.deploy(python_function("zeroed", HANDLER, scaling=scaling))
    await wait_for(
        lambda: instances(env.kube, env.namespace, "zeroed"),
        lambda pods: pods == [],
        what="the new Function at zero instances",
        timeout=120,
    )
    rid, _, headers = await asyncio.to_thread(invoke_tail, env.url, f"{env.namespace}/zeroed", {"i": 0})
    assert not headers.get("x-kubelambda-warm-pool"), headers
    await wait_for(
        lambda: instances(env.kube, env.namespace, "zeroed"),
        lambda pods: pods == [],
        what="the instance that served it gone (scale to zero)",
        timeout=120,
    )
    via = ("--from", "gateway", "--endpoint-url", env.url, "--request-id", rid)
    done = await kubelambda_logs(env, "zeroed", *via, store=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"START RequestId: {rid} "), done.stdout
    assert f"hello from {rid} 0" in lines
    assert lines[-1].startswith(f"REPORT RequestId: {rid}\t"), done.stdout


async def test_every_async_invocation_is_kept_and_no_record_is_dropped(env: Env) -> None:
    count = 1000  # the acceptance figure
    await env.deploy(python_function("many", HANDLER, concurrency={"perInstance": 4}))
    client = lambda_client(env.url)

    def enqueue(i: int) -> str:
        answer = client.invoke(
            FunctionName=f"{env.namespace}/many", InvocationType="Event", Payload=json.dumps({"i": i})
        )
        assert answer["StatusCode"] == 202
        return str(answer["ResponseMetadata"]["RequestId"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = await asyncio.to_thread(lambda: list(pool.map(enqueue, range(count))))
    assert all(ids), "an Event invoke without a request id"
    assert len(set(ids)) == count

    async def reports() -> set[str]:
        nc = await nats.connect(env.nats_url)
        try:
            query = logstore.LogQuery(env.namespace, "many", contains="REPORT RequestId: ")
            return {r.request_id async for r in logstore.read(nc, query)}
        finally:
            await nc.close()

    got = await wait_for(
        reports,
        lambda seen: seen >= set(ids),
        what=f"the REPORT of {count} requests",
        timeout=300,
        interval=1.0,
    )
    assert set(ids) <= got
    # Every request's own records: START, the handler's two lines, END, REPORT.
    for rid in ids[:: count // 20]:
        messages = await stored(env, "many", rid)
        assert len(messages) == 5, messages
    # The agents dropped nothing and had everything acknowledged.
    for endpoint in env.gateway.registry.ready_endpoints((env.namespace, "many")):
        async with aiohttp.ClientSession() as http, http.get(f"http://{endpoint}/metrics") as resp:
            text = await resp.text()
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("kubelambda_agent_log_records_")
        }
        assert values["kubelambda_agent_log_records_dropped_total"] == 0, values
        assert values["kubelambda_agent_log_records_stored_total"] > 0, values


async def test_a_tenant_cannot_read_another_namespaces_logs(env: Env, tmp_path: Path) -> None:
    await env.deploy(python_function("private", HANDLER))
    other = await create_namespace(env.kube, "tenant")
    try:
        await env.kube.create(
            resource_path("v1", "serviceaccounts", namespace=other), {"metadata": {"name": "tenant"}}
        )
        token = await token_of(env.kube, other, "tenant")
        config = yaml.safe_load(env.cluster.kubeconfig.read_text())
        config["users"] = [{"name": "tenant", "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = "tenant"
        kubeconfig = tmp_path / "tenant.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        done = await kubelambda_logs(env, "private", kubeconfig=kubeconfig)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout == ""
        assert "403" in done.stderr or "forbidden" in done.stderr.lower(), done.stderr
    finally:
        await env.kube.delete(resource_path("v1", "namespaces", name=other))


async def test_retention_removes_old_records(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await logstore.ensure_stream(nc, "short-lived", logstore.Retention(max_age_seconds=1.0))
        js = nc.jetstream()
        record = {"time": "2026-01-01T00:00:00Z", "requestId": "r1", "message": "old"}
        await js.publish(logstore.subject("short-lived", "fn", "r1"), json.dumps(record).encode())
        assert (await logstore.stream_state(nc, "short-lived")).messages == 1
        state = await wait_for(
            lambda: logstore.stream_state(nc, "short-lived"),
            lambda s: s.messages == 0,
            what="the record removed after the stream's 1 s retention",
            timeout=30,
        )
        assert state.max_age_seconds == 1.0
        # A longer retention given later updates the stream in place.
        await logstore.ensure_stream(nc, "short-lived", logstore.Retention(max_age_seconds=3600))
        assert (await logstore.stream_state(nc, "short-lived")).max_age_seconds == 3600
    finally:
        await nc.close()


async def test_follow_prints_stored_records_then_new_ones(env: Env) -> None:
    first = await deployed_and_invoked(env, "followed", {"i": 1})
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "AWS_"))}
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelambda", "logs", "followed", "-n", env.namespace, "--follow", "--prefix",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**clean, "KUBECONFIG": str(env.cluster.kubeconfig), "KUBELAMBDA_LOG_STORE_URL": env.nats_url,
             "KUBELAMBDA_STATE_DIR": "/nonexistent"},
    )  # fmt: skip
    out = follower.stdout
    assert out is not None
    seen: list[str] = []

    async def until(text: str) -> None:
        while not any(text in line for line in seen):
            line = await asyncio.wait_for(out.readline(), timeout=60)
            assert line, f"logs --follow ended: {seen}"
            seen.append(line.decode())

    try:
        await until(f"hello from {first} 1")  # what was stored before
        second, _, _ = await asyncio.to_thread(invoke_tail, env.url, f"{env.namespace}/followed", {"i": 2})
        await until(f"REPORT RequestId: {second}")  # then what comes
        assert any(f"hello from {second} 2" in line for line in seen)
        assert all(line.startswith("[") for line in seen), seen  # --prefix: [pod]
    finally:
        follower.terminate()
        await follower.wait()


async def test_an_invocation_by_a_trigger_bridge_is_kept_too(env: Env) -> None:
    await env.deploy(python_function("ticked", HANDLER))
    env.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "tick"},
            "spec": {"function": "ticked", "schedule": {"expression": "cron(* * * * ? *)"}},
        }
    )

    async def printed() -> list[logstore.LogRecord]:
        nc = await nats.connect(env.nats_url)
        try:
            query = logstore.LogQuery(env.namespace, "ticked", contains="hello from ")
            return [r async for r in logstore.read(nc, query)]
        finally:
            await nc.close()

    # The bridge fires at the next minute boundary (the bridge pod starts first).
    (first, *_) = await wait_for(
        printed, bool, what="the scheduled invocation's output stored", timeout=180, interval=1.0
    )
    assert first.message == f"hello from {first.request_id} None"
    done = await wait_for(
        lambda: kubelambda_logs(env, "ticked", "--request-id", first.request_id),
        lambda d: d.returncode != 0 or "REPORT RequestId" in d.stdout,
        what="the scheduled invocation's REPORT",
        interval=0.5,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"START RequestId: {first.request_id} "), done.stdout
    assert lines[-1].startswith(f"REPORT RequestId: {first.request_id}\t"), done.stdout

    # The bridge pod's own lines are kept too, beside its function's records, outside any request.
    async def bridge_lines() -> list[logstore.LogRecord]:
        nc = await nats.connect(env.nats_url)
        try:
            query = logstore.LogQuery(
                env.namespace, "ticked", request_id=logstore.NO_REQUEST, contains="Fired the"
            )
            return [r async for r in logstore.read(nc, query)]
        finally:
            await nc.close()

    (fired, *_) = await wait_for(bridge_lines, bool, what="the bridge's 'Fired the ... tick' line stored")
    assert fired.pod.startswith("tick-bridge-"), fired
    assert fired.message.startswith("[INFO]\tkubelambda.bridge"), fired
    assert fired.level == "INFO"
    bridge = await kubelambda_logs(env, "ticked", "--filter", "Fired the", "-o", "json")
    assert json.loads(bridge.stdout.splitlines()[0])["pod"] == fired.pod, bridge.stdout + bridge.stderr


async def test_a_bridges_lines_past_its_buffer_are_counted_not_kept(nats_server: NatsServer) -> None:
    """The bridge's shipper (kubelambda/logstore_ship.py) against the real NATS: records are stored in the
    namespace's stream; what does not fit the bounded buffer is counted as dropped."""
    from kubelambda import metrics
    from kubelambda.logstore_ship import LogShipper

    nc = await nats.connect(nats_server.url)
    try:
        await logstore.ensure_stream(nc, "bridged", logstore.Retention())
        shipper = LogShipper(
            nats_server.url,
            namespace="bridged",
            function="fn",
            pod="bridge-pod",
            component="bridge/t",
            buffer=3,
        )
        logger = logging.getLogger("kubelambda.test.bridge")
        logger.addHandler(shipper)
        logger.setLevel(logging.INFO)
        dropped = metrics.BRIDGE_LOG_RECORDS_DROPPED.labels("buffer_full")._value.get()
        try:
            for i in range(5):  # before the sender runs: 3 fit, 2 do not
                logger.warning("line %d", i)
            shipper.start()
            await shipper.aclose()
        finally:
            logger.removeHandler(shipper)
        assert metrics.BRIDGE_LOG_RECORDS_DROPPED.labels("buffer_full")._value.get() - dropped == 2
        query = logstore.LogQuery("bridged", "fn")
        got = [r async for r in logstore.read(nc, query)]
        assert [r.message for r in got] == [f"[WARNING]\tkubelambda.test.bridge: line {i}" for i in range(3)]
        assert {(r.pod, r.request_id, r.level) for r in got} == {("bridge-pod", "", "WARN")}
    finally:
        await nc.close()


async def gateway_logs(url: str, path: str, token: str | None = None) -> tuple[int, list[JSON]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}{path}", headers=headers) as resp:
        text = await resp.text()
    if resp.status != 200:
        return resp.status, [{"error": resp.headers.get("x-amzn-ErrorType"), "body": text}]
    return resp.status, [json.loads(line) for line in text.splitlines()]


async def test_the_gateway_serves_logs_to_who_may_get_the_function(env: Env) -> None:
    """GET /kubelambda/logs/NS/NAME (gateway/logsapi.py): a tenant reads the store without reaching NATS, only the
    Functions RBAC lets it get; `kubelambda logs --from gateway` reads through it."""
    rid = await deployed_and_invoked(env, "viewed", {"i": 7})
    # The CLI through the module's gateway (auth off), unsigned: no log store URL, no NATS.
    via = ("--from", "gateway", "--endpoint-url", env.url)
    done = await kubelambda_logs(env, "viewed", *via, "--request-id", rid, store=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"START RequestId: {rid} "), done.stdout
    assert f"hello from {rid} 7" in lines
    assert lines[-1].startswith(f"REPORT RequestId: {rid}\t"), done.stdout
    empty = await kubelambda_logs(env, "viewed", *via, "--request-id", "no-such-request", store=False)
    assert (empty.returncode, empty.stdout) == (0, ""), empty.stderr
    assert "No log records for request no-such-request of Function" in empty.stderr

    # A gateway that checks callers: a ServiceAccount allowed to get Functions in this namespace only.
    gateway, url = await start_gateway(
        env.cluster, env.kube, auth_mode="kubernetes", nats_url=env.nats_url, async_worker=False
    )
    other = await create_namespace(env.kube, "elsewhere")
    try:
        rbac = "rbac.authorization.k8s.io/v1"
        await env.kube.create(
            resource_path("v1", "serviceaccounts", namespace=env.namespace), {"metadata": {"name": "reader"}}
        )
        await env.kube.create(
            resource_path(rbac, "roles", namespace=env.namespace),
            {
                "metadata": {"name": "function-reader"},
                "rules": [{"apiGroups": ["kubelambda.io"], "resources": ["functions"], "verbs": ["get"]}],
            },
        )
        await env.kube.create(
            resource_path(rbac, "rolebindings", namespace=env.namespace),
            {
                "metadata": {"name": "function-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "function-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": env.namespace}],
            },
        )
        token = await token_of(env.kube, env.namespace, "reader")
        status, records = await wait_for(
            lambda: gateway_logs(url, f"/kubelambda/logs/{env.namespace}/viewed?requestId={rid}", token),
            lambda answer: answer[0] == 200,
            what="the reader's RBAC in force",
        )
        assert records[-1] == {"done": True, "records": len(records) - 1, "why": ""}, records
        assert [r["requestId"] for r in records[:-1]] == [rid] * (len(records) - 1)
        assert records[-2]["message"].startswith(f"REPORT RequestId: {rid}")
        # Another namespace's Function, no credentials: refused, as an invoke would be.
        status, answer = await gateway_logs(url, f"/kubelambda/logs/{other}/viewed", token)
        assert (status, answer[0]["error"]) == (403, "AccessDeniedException"), answer
        status, answer = await gateway_logs(url, f"/kubelambda/logs/{env.namespace}/viewed")
        assert (status, answer[0]["error"]) == (403, "MissingAuthenticationTokenException"), answer
        # A bad parameter is named.
        status, answer = await gateway_logs(url, f"/kubelambda/logs/{env.namespace}/viewed?level=loud", token)
        assert status == 400
        assert "level: unknown log level 'loud'" in answer[0]["body"]
        # A follower that goes away leaves no consumer on the store behind.
        follow = f"{url}/kubelambda/logs/{env.namespace}/viewed?follow=true"
        async with (
            aiohttp.ClientSession() as http,
            http.get(follow, headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            assert resp.status == 200
            assert json.loads(await resp.content.readline())["function"] == "viewed"

        async def consumers() -> int:
            nc = await nats.connect(env.nats_url)
            try:
                info = await nc.jetstream().stream_info(logstore.stream_name(env.namespace))
                return int(info.state.consumer_count or 0)
            finally:
                await nc.close()

        await wait_for(consumers, lambda n: n == 0, what="the gone follower's consumer removed")
    finally:
        await stop_gateway(gateway)
        await env.kube.delete(resource_path("v1", "namespaces", name=other))
