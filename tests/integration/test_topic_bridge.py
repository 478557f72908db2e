"""``topic.nats`` on a real nats-server and the local cluster: SNS events, fan-out, filter policies.

Two Triggers on one subject each get every message (SNS fan-out); a Trigger with a filter policy gets only
the messages SNS would deliver; the events parse as powertools' ``SNSEvent``; a function that fails is retried
by the async worker and its record goes to the Function's failure destination (the Function's async settings).
Each test runs its bridges in-process (the operator is stopped once the functions are deployed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from aws_lambda_powertools.utilities.data_classes import SNSEvent

from kltest import Cluster, create_namespace, wait_for
from kltest.platform import deploy, python_function, running_platform, start_operator
from kltest.records import Records
from kubelambda.bridge import BridgeSettings, run_bridge
from kubelambda.devcluster.servers import NatsServer, RedisServer
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]

HANDLER = """
import json
import os

OUT = os.path.join(os.environ["OUT_DIR"], os.environ["NAME"])


def handler(event, context):
    message = event["Records"][0]["Sns"]["Message"]
    if message == "fail":
        raise ValueError("asked to fail")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, context.aws_request_id), "w") as f:
        json.dump(event, f)
    return {}
"""


class Platform:
    def __init__(self, url: str, namespace: str, out: Path, nats_url: str) -> None:
        self.url = url
        self.namespace = namespace
        self.out = out
        self.nats_url = nats_url


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, tmp_path_factory: pytest.TempPathFactory, records: Records
) -> AsyncIterator[Platform]:
    namespace = await create_namespace(kube, "tp")
    out = tmp_path_factory.mktemp("seen")
    os.chmod(out, 0o777)
    async with (
        NatsServer(tmp_path_factory.mktemp("nats")) as server,
        running_platform(cluster, kube, slot_wait_seconds=5.0, nats_url=server.url) as (
            operator,
            gateway,
            url,
        ),
    ):
        for name in ("sub-a", "sub-b"):
            await deploy(
                cluster,
                gateway,
                namespace,
                python_function(name, HANDLER, environment={"OUT_DIR": str(out), "NAME": name}),
            )
        await deploy(
            cluster,
            gateway,
            namespace,
            python_function(
                "sub-fails",
                HANDLER,
                environment={"OUT_DIR": str(out), "NAME": "sub-fails"},
                **{
                    "async": {"maxRetries": 0, "onFailure": {"url": records.url(f"{namespace}-topic-failed")}}
                },
            ),
        )
        await operator.stop()
        try:
            yield Platform(url, namespace, out, server.url)
        finally:
            await kube.delete(resource_path("v1", "namespaces", name=namespace))


def trigger(name: str, function: str, subject: str, platform: Platform, **topic: Any) -> JSON:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {
            "function": function,
            "topic": {"nats": {"url": platform.nats_url, "subject": subject}, **topic},
        },
    }


def settings(platform: Platform, cluster: Cluster) -> BridgeSettings:
    return BridgeSettings(
        kubeconfig=str(cluster.kubeconfig), gateway_url=platform.url, port=0, status_interval_seconds=1
    )


@contextlib.asynccontextmanager
async def bridges(
    platform: Platform, cluster: Cluster, kube: KubeClient, names: list[str]
) -> AsyncIterator[list[asyncio.Task[bool]]]:
    """Runs the bridges of ``names`` until the block ends; yields once each has subscribed."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_bridge(platform.namespace, n, settings(platform, cluster), stop=stop))
        for n in names
    ]
    try:
        for name in names:
            path = resource_path(
                "kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name
            )
            await wait_for(
                lambda path=path: kube.get(path),  # type: ignore[misc]
                lambda b: any(
                    c["type"] == "SourceReachable"
                    and c["status"] == "True"
                    and "subscribed" in c.get("message", "")
                    for c in (b.get("status") or {}).get("conditions", [])
                ),
                what=f"{name} subscribed",
                timeout=60,
            )
        yield tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


def seen(platform: Platform, function: str) -> list[JSON]:
    folder = platform.out / function
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in folder.iterdir()]


async def publish(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    nc = await nats.connect(url)
    try:
        for subject, data, headers in messages:
            await nc.publish(subject, data, headers=headers or None)
        await nc.flush()
    finally:
        await nc.close()


def orders(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for i in range(n):
        headers = {
            "store": "eu" if i % 2 else "us",
            "price": str(i * 1.5),
            "Sns-Attribute-Types": "price=Number",
            "Sns-Message-Id": f"order-{i}",
        }
        if i % 10 == 0:
            headers["Sns-Subject"] = f"order {i}"
        out.append(
            (
                "shop.orders",
                json.dumps({"order": i, "status": "paid" if i % 3 == 0 else "new"}).encode(),
                headers,
            )
        )
    return out


def expected_filtered(n: int) -> set[int]:
    return {i for i in range(n) if i % 2 and i * 1.5 > 10}


async def test_fan_out_and_filter_policies(platform: Platform, cluster: Cluster, kube: KubeClient) -> None:
    """Both Triggers get their messages; sub-b only those its policy (store eu, price > 10) lets through."""
    total = 60
    cluster.apply(trigger("fan-a", "sub-a", "shop.*", platform), platform.namespace)
    cluster.apply(
        trigger(
            "fan-b",
            "sub-b",
            "shop.orders",
            platform,
            filterPolicy={"store": ["eu"], "price": [{"numeric": [">", 10]}]},
        ),
        platform.namespace,
    )
    async with bridges(platform, cluster, kube, ["fan-a", "fan-b"]) as tasks:
        await publish(platform.nats_url, [*orders(total), ("shop.misc", b"\xff\xfe binary", {})])
        want = expected_filtered(total)
        await wait_for(
            lambda: asyncio.sleep(0, result=(len(seen(platform, "sub-a")), len(seen(platform, "sub-b")))),
            lambda c: (c[0] >= total + 1 and c[1] >= len(want)) or any(t.done() for t in tasks),
            what=f"{total + 1} events for sub-a and {len(want)} for sub-b",
            timeout=120,
            interval=0.5,
        )
    a, b = seen(platform, "sub-a"), seen(platform, "sub-b")
    assert len(a) == total + 1
    parsed = [SNSEvent(e) for e in a]
    ids = sorted(p.record.sns.message_id for p in parsed)
    assert [i for i in ids if i.startswith("order-")] == sorted(f"order-{i}" for i in range(total))
    by_id = {p.record.sns.message_id: p for p in parsed}
    first = by_id["order-10"]
    assert first.record.event_source == "aws:sns"
    assert first.record.sns.subject == "order 10"
    assert json.loads(first.sns_message) == {"order": 10, "status": "new"}
    assert first.record.sns.topic_arn == f"arn:kubelambda:nats:us-east-1:{platform.namespace}:shop.orders"
    assert first.record.sns.message_attributes["price"].get_type == "Number"
    assert first.record.sns.message_attributes["price"].value == "15.0"
    assert first.record.sns.message_attributes["store"].value == "us"
    assert by_id["order-11"].record.sns.subject is None
    (binary,) = [p for p in parsed if not p.record.sns.message_id.startswith("order-")]
    assert binary.record.sns.topic_arn.endswith(":shop.misc")
    assert binary.record.sns.message_attributes["Kubelambda-Message-Encoding"].value == "base64"
    got_b = sorted(json.loads(SNSEvent(e).sns_message)["order"] for e in b)
    assert got_b == sorted(want)
    for name in ("fan-a", "fan-b"):
        await kube.delete(
            resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name)
        )


async def test_a_body_scoped_policy(platform: Platform, cluster: Cluster, kube: KubeClient) -> None:
    total = 30
    cluster.apply(
        trigger(
            "body-b",
            "sub-b",
            "shop.paid",
            platform,
            filterPolicyScope="MessageBody",
            filterPolicy={"status": ["paid"], "order": [{"numeric": [">=", 3]}]},
        ),
        platform.namespace,
    )
    before = {json.loads(SNSEvent(e).sns_message)["order"] for e in seen(platform, "sub-b")}
    async with bridges(platform, cluster, kube, ["body-b"]):
        await publish(platform.nats_url, [("shop.paid", data, {}) for _, data, _ in orders(total)])
        want = {i for i in range(total) if i % 3 == 0 and i >= 3}
        await wait_for(
            lambda: asyncio.sleep(0, result=len(seen(platform, "sub-b"))),
            lambda n: n >= len(before) + len(want),
            what=f"{len(want)} more events for sub-b",
            timeout=120,
            interval=0.5,
        )
    events = [SNSEvent(e) for e in seen(platform, "sub-b")]
    new = [
        json.loads(e.sns_message)["order"] for e in events if e.record.sns.topic_arn.endswith(":shop.paid")
    ]
    assert sorted(new) == sorted(want)
    await kube.delete(
        resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name="body-b")
    )


async def test_a_redis_channel_fans_out_and_filters_on_the_body(
    platform: Platform, cluster: Cluster, kube: KubeClient, tmp_path: Path
) -> None:
    """``topic.redis``: sub-a subscribes to a pattern, sub-b to the channel with a body policy; both get their
    messages from one ``PUBLISH`` each, as SNS events (no attributes: Redis messages have none)."""
    total = 30
    async with RedisServer(tmp_path / "redis") as server:
        redis = {"url": server.url, "channel": "shop.redis"}
        for name, function, topic in (
            ("redis-a", "sub-a", {"redis": {**redis, "channel": "shop.*", "pattern": True}}),
            (
                "redis-b",
                "sub-b",
                {
                    "redis": redis,
                    "filterPolicyScope": "MessageBody",
                    "filterPolicy": {"status": ["paid"]},
                },
            ),
        ):
            doc = trigger(name, function, "-", platform)
            doc["spec"]["topic"] = topic
            cluster.apply(doc, platform.namespace)

        def redis_events(function: str) -> list[SNSEvent]:
            events = [SNSEvent(e) for e in seen(platform, function)]
            return [e for e in events if e.record.sns.topic_arn.startswith("arn:kubelambda:redis:")]

        want_b = {i for i in range(total) if i % 3 == 0}
        async with bridges(platform, cluster, kube, ["redis-a", "redis-b"]):
            client = aioredis.from_url(server.url)
            try:
                for _, data, _ in orders(total):
                    assert await client.publish("shop.redis", data) == 2  # both bridges subscribed
            finally:
                await client.aclose()
            await wait_for(
                lambda: asyncio.sleep(0, result=(len(redis_events("sub-a")), len(redis_events("sub-b")))),
                lambda got: got[0] >= total and got[1] >= len(want_b),
                what=f"{total} events for sub-a and {len(want_b)} for sub-b",
                timeout=120,
                interval=0.5,
            )
    a, b = redis_events("sub-a"), redis_events("sub-b")
    assert sorted(json.loads(e.sns_message)["order"] for e in a) == list(range(total))
    assert sorted(json.loads(e.sns_message)["order"] for e in b) == sorted(want_b)
    assert {e.record.sns.topic_arn for e in a + b} == {
        f"arn:kubelambda:redis:us-east-1:{platform.namespace}:shop.redis"
    }
    assert all(not e.record.sns.message_attributes for e in a + b)
    for name in ("redis-a", "redis-b"):
        await kube.delete(
            resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name)
        )


async def test_the_functions_async_settings_apply(
    platform: Platform, cluster: Cluster, kube: KubeClient, records: Records
) -> None:
    """A message whose invocation fails ends, after the Function's retries (0), in its failure destination."""
    cluster.apply(trigger("fails", "sub-fails", "shop.fail", platform), platform.namespace)
    async with bridges(platform, cluster, kube, ["fails"]):
        await publish(platform.nats_url, [("shop.fail", b"fail", {"Sns-Message-Id": "doomed"})])
        (record,) = await records.wait(f"{platform.namespace}-topic-failed", timeout=120)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"]["Records"][0]["Sns"]["MessageId"] == "doomed"
    assert record["responseContext"]["functionError"] == "Unhandled"


async def test_the_operator_runs_a_topic_bridge(
    platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    """End to end: the Trigger applied, the operator's bridge Deployment (a pod on the local node) subscribes and
    delivers. Core NATS keeps nothing for a subscriber that is not there yet, so the test publishes a numbered
    message every half second until one arrives."""
    path = resource_path(
        "kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name="by-operator"
    )
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0, gateway_url=platform.url)
    sent = 0

    async def probe() -> list[str]:
        nonlocal sent
        await publish(
            platform.nats_url, [("shop.operated", b"via the operator", {"Sns-Message-Id": f"op-{sent}"})]
        )
        sent += 1
        return [
            e["Records"][0]["Sns"]["MessageId"]
            for e in seen(platform, "sub-a")
            if e["Records"][0]["Sns"]["MessageId"].startswith("op-")
        ]

    try:
        cluster.apply(trigger("by-operator", "sub-a", "shop.operated", platform), platform.namespace)
        await wait_for(
            probe, bool, what="a message delivered by the operator's bridge pod", timeout=120, interval=0.5
        )
    finally:
        await kube.delete(path)
        await operator.stop()
