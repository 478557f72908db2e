"""Triggers against the real local cluster: the operator's bridge objects and RBAC, a bridge pod running under its
own ServiceAccount, Ready/FunctionMissing/SourceReachable, disabling, and the schedule bridge firing through a real
gateway and nats-server — in real time (a pod) and under a clock the test moves (in process)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kltest import Cluster, wait_for
from kltest.drained import async_queue_drained
from kltest.platform import Env, PlatformUnderTest, python_function, running_platform
from kltest.records import Records
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.bridge import BridgeSettings, build_context
from kubelambda.bridge._context import StatusReporter
from kubelambda.bridge.schedule import LAST_FIRED, ScheduleBridge
from kubelambda.bridge.schedule_expressions import iso
from kubelambda.devcluster.servers import NatsServer
from kubelambda.jsonobj import utcnow
from kubelambda.kube import KubeClient, resource_path
from kubelambda.operator._cleanup import GRACE_SECONDS, held_in_deletion
from kubelambda.operator._trigger import trigger_status, write_trigger_status
from kubelambda.resources.bridge import CLEANUP_FINALIZER, TriggerObject

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RECORDER = """
import json, os, urllib.request

def handler(event, context):
    body = json.dumps({"event": event, "requestId": context.aws_request_id}).encode()
    request = urllib.request.Request(os.environ["RECORDS_URL"], data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return {"ok": True}
"""


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(cluster, kube, nats_url=nats_server.url, http_routes=True) as platform:
        yield platform


def trigger_path(namespace: str, name: str = "") -> str:
    return resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=namespace, name=name or None)


def condition(body: JSON | None, kind: str) -> JSON:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


async def recorder(env: Env, name: str) -> None:
    """A Function ``name`` that POSTs each event it gets to the records under ``<namespace>-<name>``."""
    url = env.records.url(f"{env.namespace}-{name}")
    await env.deploy(python_function(name, RECORDER, environment={"RECORDS_URL": url}))


async def test_a_schedule_trigger_runs_its_bridge_pod_under_its_own_account_and_fires(env: Env) -> None:
    await recorder(env, "ticker")
    env.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Trigger",
            "metadata": {"name": "every-minute"},
            "spec": {"function": "ticker", "schedule": {"expression": "cron(* * * * ? *)"}},
        }
    )
    path = trigger_path(env.namespace, "every-minute")
    body = await wait_for(
        lambda: env.kube.get(path),
        lambda b: condition(b, "Ready").get("reason") == "BridgeReady",
        what="the Trigger Ready with its bridge running",
        timeout=90,
    )
    assert condition(body, "FunctionMissing")["status"] == "False"
    assert body["status"]["source"] == "schedule"
    # The bridge itself (as ServiceAccount every-minute-bridge) wrote SourceReachable: its RBAC allows that.
    await wait_for(
        lambda: env.kube.get(path),
        lambda b: condition(b, "SourceReachable").get("status") == "True",
        what="the bridge's SourceReachable",
        timeout=60,
    )
    role = await env.kube.get(
        resource_path(
            "rbac.authorization.k8s.io/v1", "roles", namespace=env.namespace, name="every-minute-bridge"
        )
    )
    assert all(rule.get("resourceNames") for rule in role["rules"])

    # cron(* * * * ? *) fires at the next minute boundary: one Scheduled Event, on the minute.
    got = await env.records.wait(f"{env.namespace}-ticker", 1, timeout=120)
    event = got[0]["event"]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["time"].endswith(":00Z")
    assert event["resources"] == [f"arn:aws:events:us-east-1:{env.namespace}:rule/every-minute"]
    checkpoint = await env.kube.get(
        resource_path("v1", "configmaps", namespace=env.namespace, name="every-minute-checkpoint")
    )
    assert checkpoint["data"][LAST_FIRED] >= event["time"]
    body = await wait_for(
        lambda: env.kube.get(path),
        lambda b: (b.get("status") or {}).get("eventsDelivered", 0) >= 1,
        what="eventsDelivered in the Trigger's status",
        timeout=60,
    )
    assert body["status"]["lastEventTime"]

    # enabled: false scales the bridge to zero; Ready says why.
    await env.kube.patch(path, {"spec": {"enabled": False}})
    deployment_path = resource_path(
        "apps/v1", "deployments", namespace=env.namespace, name="every-minute-bridge"
    )
    await wait_for(
        lambda: env.kube.get(deployment_path),
        lambda d: d["spec"]["replicas"] == 0,
        what="the bridge scaled to zero",
    )
    await wait_for(
        lambda: env.kube.get(path),
        lambda b: condition(b, "Ready").get("reason") == "Disabled",
        what="Ready reason Disabled",
    )


async def http_trigger_of_a_missing_function(env: Env, name: str, function: str) -> JSON:
    """An HTTP Trigger ``name`` (path ``/<name>``) of a Function that does not exist, once it says so."""
    env.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {"function": function, "http": {"path": f"/{name}", "methods": ["GET"]}},
        }
    )
    body: JSON = await wait_for(
        lambda: env.kube.get(trigger_path(env.namespace, name)),
        lambda b: condition(b, "FunctionMissing").get("status") == "True",
        what="FunctionMissing=True",
    )
    return body


async def test_a_trigger_of_a_missing_function_says_so_until_the_function_exists(env: Env) -> None:
    path = trigger_path(env.namespace, "orphan")
    body = await http_trigger_of_a_missing_function(env, "orphan", "later")
    assert condition(body, "Ready")["status"] == "False"
    assert f"{env.namespace}/later" in condition(body, "Ready")["message"]
    await recorder(env, "later")
    body = await wait_for(
        lambda: env.kube.get(path),
        lambda b: condition(b, "Ready").get("reason") == "RouteConfigured",
        what="Ready once the Function exists",
        timeout=60,
    )
    assert condition(body, "FunctionMissing")["status"] == "False"
    # HTTP triggers have no bridge.
    bridge = await env.kube.get_or_none(
        resource_path("apps/v1", "deployments", namespace=env.namespace, name="orphan-bridge")
    )
    assert bridge is None


async def wait_records(records: Records, key: str, count: int, *, bridge: asyncio.Task[None]) -> list[JSON]:
    """``records.wait``, failing at once with the bridge's own error if the bridge task died."""
    waiting = asyncio.ensure_future(records.wait(key, count, timeout=60))
    await asyncio.wait({waiting, bridge}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        bridge.result()  # raises the bridge's error
        raise AssertionError("the bridge stopped without an error")
    return waiting.result()


class MovableClock:
    """A clock the test moves: the bridge's waits end when the test sets the time past them."""

    def __init__(self, now: dt.datetime) -> None:
        self.t = now
        self.wake_at: dt.datetime | None = None  # what the bridge sleeps until, while it sleeps
        self.moved = asyncio.Condition()

    def now(self) -> dt.datetime:
        return self.t

    async def sleep_until(self, t: dt.datetime) -> None:
        async with self.moved:
            self.wake_at = t
            self.moved.notify_all()
            await self.moved.wait_for(lambda: self.t >= t)
            self.wake_at = None

    async def advance(self, t: dt.datetime) -> None:
        """Waits until the bridge sleeps for a tick after the current time, then moves the clock to ``t``."""
        async with self.moved:
            await asyncio.wait_for(
                self.moved.wait_for(lambda: self.wake_at is not None and self.wake_at > self.t), timeout=60
            )
            self.t = t
            self.moved.notify_all()


async def test_the_operators_status_write_keeps_a_condition_the_bridge_wrote_since_its_read(env: Env) -> None:
    """The operator reconciles from a read of the Trigger; its bridge writes SourceReachable a moment later; the
    operator's status write from that read keeps it (server-side apply of its own conditions: a merge patch
    replaced the whole list with the operator's copy). Then a real reconcile of a new generation keeps it too."""
    path = trigger_path(env.namespace, "shared")
    read = await http_trigger_of_a_missing_function(env, "shared", "absent")
    reporter = StatusReporter(env.kube, namespace=env.namespace, trigger="shared", generation=1)
    reporter.source_reachable(False, "the bridge's word")
    await reporter.flush()
    new = trigger_status(
        dict(read["status"]),
        trigger=TriggerObject.from_body(read),
        function_exists=True,
        deployment=None,
        now=utcnow(),
    )
    await write_trigger_status(env.kube, env.namespace, "shared", new)
    body = await env.kube.get(path)
    assert condition(body, "SourceReachable")["message"] == "the bridge's word"
    assert {c["type"] for c in body["status"]["conditions"]} == {
        "FunctionMissing",
        "Ready",
        "SourceReachable",
    }

    await env.kube.patch(path, {"spec": {"http": {"path": "/shared2"}}})
    body = await wait_for(
        lambda: env.kube.get(path),
        lambda b: b["status"].get("observedGeneration") == 2,
        what="the operator's reconcile of generation 2",
    )
    assert condition(body, "SourceReachable")["message"] == "the bridge's word"
    assert condition(body, "Ready")["reason"] == "FunctionMissing"


async def test_rate_and_cron_schedules_fire_at_the_right_times_once_per_tick(env: Env) -> None:
    await recorder(env, "clocked")
    key = f"{env.namespace}-clocked"
    for name, schedule in (
        ("rate", {"expression": "rate(1 minute)"}),
        ("cron", {"expression": "cron(30 9 * * ? *)", "timezone": "Europe/Berlin"}),
    ):
        # Disabled: the operator makes the objects, but the test runs the bridge itself with its own clock.
        env.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trigger",
                "metadata": {"name": name},
                "spec": {"function": "clocked", "enabled": False, "schedule": schedule},
            }
        )
    settings = BridgeSettings(kubeconfig=str(env.cluster.kubeconfig), gateway_url=env.url, port=0)

    async with KubeClient.from_kubeconfig(env.cluster.kubeconfig) as admin, aiohttp.ClientSession() as http:
        # rate(1 minute): ticks at creation + k minutes.
        ctx, kind = await build_context(admin, http, env.namespace, "rate", settings)
        assert kind == "schedule"
        created = dt.datetime.fromisoformat(ctx.trigger_meta["creationTimestamp"].replace("Z", "+00:00"))
        clock = MovableClock(created + dt.timedelta(seconds=5))
        bridge = ScheduleBridge(ctx, clock=clock)
        task = asyncio.create_task(bridge.run())
        try:
            for minute in (1, 2, 3):
                await clock.advance(created + dt.timedelta(minutes=minute, seconds=1))
                got = await wait_records(env.records, key, minute, bridge=task)
                assert got[-1]["event"]["time"] == iso(created + dt.timedelta(minutes=minute))
            # Re-sending a tick (a bridge killed after the gateway accepted it, before its checkpoint) is
            # stored once: same idempotency key, same request id, JetStream's duplicate window.
            await bridge.fire(created + dt.timedelta(minutes=3))
        finally:
            task.cancel()
        saved = await ctx.checkpoint.load()
        assert saved[LAST_FIRED] == iso(created + dt.timedelta(minutes=3))

        # Down for 10 minutes: only the latest missed tick fires when it comes back.
        clock2 = MovableClock(created + dt.timedelta(minutes=13, seconds=30))
        task = asyncio.create_task(ScheduleBridge(ctx, clock=clock2).run())
        try:
            got = await wait_records(env.records, key, 4, bridge=task)
            assert got[3]["event"]["time"] == iso(created + dt.timedelta(minutes=13))
        finally:
            task.cancel()

        # cron(30 9 * * ? *) in Berlin: 08:30 UTC in winter.
        ctx, _ = await build_context(admin, http, env.namespace, "cron", settings)
        start = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
        clock3 = MovableClock(start)
        task = asyncio.create_task(ScheduleBridge(ctx, clock=clock3).run())
        try:
            await clock3.advance(dt.datetime(2026, 12, 1, 8, 29, 59, tzinfo=dt.UTC))
            await clock3.advance(dt.datetime(2026, 12, 1, 8, 31, tzinfo=dt.UTC))
            got = await wait_records(env.records, key, 5, bridge=task)
            assert got[4]["event"]["time"] == "2026-12-01T08:30:00Z"
        finally:
            task.cancel()

    # Exactly one event per tick reached the function, each with its own request id. A re-sent tick JetStream
    # had not deduplicated, or a retry, would be a message on the function's subject until the function (which
    # records before it answers) has run: once the subject is empty nothing more can arrive.
    await async_queue_drained(env.gateway, env.namespace, "clocked")
    got = env.records.of(key)
    times = [r["event"]["time"] for r in got]
    assert len(times) == len(set(times)) == 5, times
    assert len({r["requestId"] for r in got}) == 5


ECHO_HTTP = """
import json

def handler(event, context):
    return {"statusCode": 201, "headers": {"content-type": "application/json"},
            "body": json.dumps({"routeKey": event["routeKey"], "rawPath": event["rawPath"],
                                "pathParameters": event.get("pathParameters"), "method": event["requestContext"]["http"]["method"]})}
"""


async def test_an_http_trigger_routes_its_path_and_methods_to_the_function(env: Env) -> None:
    await env.deploy(python_function("orders", ECHO_HTTP))
    env.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Trigger",
            "metadata": {"name": "order-by-id"},
            "spec": {"function": "orders", "http": {"path": "/orders/{id}", "methods": ["GET", "DELETE"]}},
        }
    )
    await wait_for(
        lambda: env.kube.get(trigger_path(env.namespace, "order-by-id")),
        lambda b: condition(b, "Ready").get("reason") == "RouteConfigured",
        what="the HTTP Trigger Ready",
    )

    async def call(method: str, path: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{env.url}/api/{env.namespace}{path}") as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    status, body = await wait_for(
        lambda: call("GET", "/orders/42"),
        lambda r: r[0] != 404,
        what="the route on the gateway",
        timeout=30,
    )
    assert status == 201
    assert body == {
        "routeKey": "GET /orders/{id}",
        "rawPath": "/orders/42",
        "pathParameters": {"id": "42"},
        "method": "GET",
    }
    assert (await call("DELETE", "/orders/42"))[0] == 201
    assert await call("POST", "/orders/42") == (405, {"message": "Method Not Allowed"})
    assert await call("GET", "/customers/1") == (404, {"message": "Not Found"})
    # Deleting the Trigger removes the route.
    await env.kube.delete(trigger_path(env.namespace, "order-by-id"))
    await wait_for(lambda: call("GET", "/orders/42"), lambda r: r[0] == 404, what="the route gone")


async def test_the_http_api_and_cron_examples_work_as_documented(env: Env) -> None:
    docs = [
        d
        for f in ("http-api", "cron")
        for d in yaml.safe_load_all((EXAMPLES / f / "function.yaml").read_text())
    ]
    env.apply(docs)
    for trigger in ("notes-collection", "notes-item", "every-minute", "every-five-minutes"):
        await wait_for(
            lambda t=trigger: env.kube.get(trigger_path(env.namespace, t)),
            lambda b: condition(b, "Ready").get("status") == "True",
            what=f"Trigger {trigger} Ready",
            timeout=90,
        )
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.functions.get((env.namespace, "notes"))),
        lambda fn: fn is not None and fn.ready,
        what="the notes Function",
    )

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{env.url}/api/{env.namespace}{path}", json=body) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    await wait_for(lambda: call("GET", "/notes"), lambda r: r[0] == 200, what="GET /notes", timeout=60)
    assert await call("POST", "/notes", {"text": "hello"}) == (201, {"text": "hello", "id": "1"})
    assert await call("GET", "/notes/1") == (200, {"text": "hello", "id": "1"})
    assert await call("GET", "/notes") == (200, [{"text": "hello", "id": "1"}])
    assert await call("DELETE", "/notes/1") == (200, {"text": "hello", "id": "1"})
    assert (await call("GET", "/notes/1"))[0] == 404
    assert (await call("PUT", "/notes/1"))[0] == 405


async def test_a_namespace_deleted_under_a_held_postgres_trigger_is_not_held_for_ever(env: Env) -> None:
    """PostgreSQL stream Triggers whose bridge holds the cleanup finalizer (it created a slot, then its pod went):
    one deleted on its own first, one deleted with the namespace. A terminating namespace admits no bridge pod, so
    the operator takes the finalizers off after its grace and the namespace goes (`kubectl delete namespace` of
    examples/orders-table hung for ever before; docs/triggers-database.md)."""
    postgres = {"url": "postgresql://kubelambda@127.0.0.1:9/shop", "tables": ["orders"]}
    for name in ("alone", "with-namespace"):
        env.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trigger",
                "metadata": {"name": name, "finalizers": [CLEANUP_FINALIZER]},
                "spec": {"function": "absent", "enabled": False, "stream": {"postgres": postgres}},
            }
        )
    alone = trigger_path(env.namespace, "alone")
    await env.kube.delete(alone)
    held = await env.kube.get(alone)
    assert held["metadata"]["deletionTimestamp"]
    assert held_in_deletion(held)

    namespace = resource_path("v1", "namespaces", name=env.namespace)
    await env.kube.delete(namespace)
    await wait_for(
        lambda: env.kube.get_or_none(namespace),
        lambda ns: ns is None,
        what=f"namespace {env.namespace} deleted",
        timeout=GRACE_SECONDS + 120,
    )
