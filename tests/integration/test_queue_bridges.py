"""Queue bridges (Lambda's SQS event source mapping) against real brokers: RabbitMQ, NATS JetStream, Redis Streams
and an SQS-compatible server (ElasticMQ), each started on loopback by a fixture.

One Function (``worker``) records every batch it receives in one POST to the test's receiver, keyed by the
queue name (the last part of ``eventSourceARN``), and answers ``batchItemFailures`` for bodies starting with
``poison`` (always) or ``flaky`` (on their first receive). Each test runs the Trigger's bridge as its own
process (kltest.bridge.BridgeProcess), so one test can SIGKILL it mid-run.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
from aiobotocore.session import get_session

from kltest import Cluster, create_namespace, wait_for
from kltest.bridge import BridgeProcess
from kltest.platform import REPO, deploy, python_function, running_platform, start_operator
from kltest.records import Records
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.bridge.queues.nats import consumer_name
from kubelambda.devcluster.servers import NatsServer, RabbitMQServer, RedisServer, SqsServer
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.bridge import bridge_name

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
BROKERS = ["rabbitmq", "nats", "redis", "sqs"]
# Deliveries of a message its function always fails, before the broker's own limit dead-letters it.
MAX_RECEIVES = 3

HANDLER = """
import json
import os
import urllib.request


def handler(event, context):
    records = event["Records"]
    failed = []
    for r in records:
        body = r["body"]
        receives = int(r["attributes"]["ApproximateReceiveCount"])
        if body.startswith("poison") or (body.startswith("flaky") and receives == 1):
            failed.append(r["messageId"])
    queue = records[0]["eventSourceARN"].rsplit(":", 1)[-1]
    data = json.dumps({"records": records, "failed": failed}).encode()
    request = urllib.request.Request(
        os.environ["RECORDS_URL"] + "/" + queue, data=data, headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=30).read()
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}
"""


class Queue(Protocol):
    """The test's side of one broker: make a queue, publish, look at what is left."""

    async def create(self, name: str, *, visibility_seconds: int) -> JSON:
        """Creates queue ``name`` (with its dead-letter configuration); returns the Trigger's source block."""
        ...

    async def publish(self, name: str, bodies: list[bytes]) -> None: ...

    async def dead_letters(self, name: str) -> int | None:
        """Messages the broker dead-lettered (None where the broker keeps no dead-letter queue: NATS)."""
        ...

    async def settled(self, name: str) -> bool:
        """Nothing waiting and nothing delivered but unacknowledged."""
        ...

    async def close(self) -> None: ...


class RabbitQueue:
    def __init__(self, server: RabbitMQServer) -> None:
        self.url = server.url
        self.conn: Any = None

    async def _channel(self) -> Any:
        if self.conn is None:
            self.conn = await aio_pika.connect(self.url)
        return await self.conn.channel()

    async def create(self, name: str, *, visibility_seconds: int) -> JSON:
        channel = await self._channel()
        dlx = await channel.declare_exchange(f"{name}-dlx", aio_pika.ExchangeType.FANOUT, durable=True)
        dlq = await channel.declare_queue(f"{name}-dlq", durable=True)
        await dlq.bind(dlx)
        # A quorum queue counts deliveries: past x-delivery-limit returns the broker dead-letters the message.
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": MAX_RECEIVES - 1,
                "x-dead-letter-exchange": f"{name}-dlx",
            },
        )
        await channel.close()
        return {"rabbitmq": {"url": self.url, "queue": name}}

    async def publish(self, name: str, bodies: list[bytes]) -> None:
        channel = await self._channel()  # publisher confirms: each publish returns once the broker has it
        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
                    for body in bodies[start : start + 500]
                )
            )
        await channel.close()

    async def _count(self, name: str) -> int:
        channel = await self._channel()
        queue = await channel.declare_queue(name, passive=True)
        count = int(queue.declaration_result.message_count or 0)
        await channel.close()
        return count

    async def dead_letters(self, name: str) -> int | None:
        return await self._count(f"{name}-dlq")

    async def settled(self, name: str) -> bool:
        # message_count counts ready messages only; unacknowledged ones come back on the bridge's stop.
        return await self._count(name) == 0

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class NatsQueue:
    def __init__(self, server: NatsServer, namespace: str) -> None:
        self.url = server.url
        self.namespace = namespace
        self.nc: Any = None

    async def _js(self) -> Any:
        if self.nc is None:
            self.nc = await nats.connect(self.url)
        return self.nc.jetstream()

    async def create(self, name: str, *, visibility_seconds: int) -> JSON:
        js = await self._js()
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        return {"nats": {"url": self.url, "stream": name, "subject": f"{name}.in"}}

    async def publish(self, name: str, bodies: list[bytes]) -> None:
        js = await self._js()
        for start in range(0, len(bodies), 200):
            await asyncio.gather(*(js.publish(f"{name}.in", body) for body in bodies[start : start + 200]))

    async def dead_letters(self, name: str) -> int | None:
        return None

    async def settled(self, name: str) -> bool:
        js = await self._js()
        info = await js.consumer_info(name, consumer_name(self.namespace, name))
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class RedisQueue:
    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.client = aioredis.from_url(server.url)

    async def create(self, name: str, *, visibility_seconds: int) -> JSON:
        return {"redis": {"url": self.url, "key": name}}

    async def publish(self, name: str, bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 1000):
            async with self.client.pipeline(transaction=False) as pipe:
                for body in bodies[start : start + 1000]:
                    pipe.xadd(name, {"body": body, "origin": "test"})
                await pipe.execute()

    async def dead_letters(self, name: str) -> int | None:
        return int(await self.client.xlen(f"{name}:dlq"))

    async def settled(self, name: str) -> bool:
        groups = await self.client.xinfo_groups(name)
        return bool(groups) and all(g["lag"] == 0 and g["pending"] == 0 for g in groups)

    async def close(self) -> None:
        await self.client.aclose()


class SqsQueue:
    def __init__(self, server: SqsServer) -> None:
        self.endpoint = server.endpoint
        self.session = get_session()
        self.urls: dict[str, str] = {}

    def _client(self) -> Any:
        return self.session.create_client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    async def create(self, name: str, *, visibility_seconds: int) -> JSON:
        async with self._client() as sqs:
            dlq = await sqs.create_queue(QueueName=f"{name}-dlq")
            self.urls[f"{name}-dlq"] = dlq["QueueUrl"]
            arn = await sqs.get_queue_attributes(QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"])
            policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": MAX_RECEIVES}
            queue = await sqs.create_queue(
                QueueName=name,
                Attributes={
                    "RedrivePolicy": json.dumps(policy),
                    "VisibilityTimeout": str(visibility_seconds),
                },
            )
            self.urls[name] = queue["QueueUrl"]
        return {"sqs": {"endpoint": self.endpoint, "queueUrl": queue["QueueUrl"]}}

    async def publish(self, name: str, bodies: list[bytes]) -> None:
        async with self._client() as sqs:
            chunks = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]
            for start in range(0, len(chunks), 20):
                await asyncio.gather(
                    *(
                        sqs.send_message_batch(
                            QueueUrl=self.urls[name],
                            Entries=[{"Id": str(n), "MessageBody": b.decode()} for n, b in enumerate(chunk)],
                        )
                        for chunk in chunks[start : start + 20]
                    )
                )

    async def _attrs(self, name: str) -> dict[str, str]:
        async with self._client() as sqs:
            answer = await sqs.get_queue_attributes(QueueUrl=self.urls[name], AttributeNames=["All"])
            return dict(answer["Attributes"])

    async def dead_letters(self, name: str) -> int | None:
        return int((await self._attrs(f"{name}-dlq"))["ApproximateNumberOfMessages"])

    async def settled(self, name: str) -> bool:
        attrs = await self._attrs(name)
        return (
            attrs["ApproximateNumberOfMessages"] == "0"
            and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
        )

    async def close(self) -> None:
        return None


# ---- fixtures


@pytest.fixture(scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    started = {
        "rabbitmq": RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")),
        "nats": NatsServer(tmp_path_factory.mktemp("nats")),
        "redis": RedisServer(tmp_path_factory.mktemp("redis")),
        "sqs": SqsServer(tmp_path_factory.mktemp("elasticmq")),
    }
    try:
        await asyncio.gather(*(s.start() for s in started.values()))
        yield started
    finally:
        await asyncio.gather(*(s.stop() for s in started.values()), return_exceptions=True)


@pytest.fixture(scope="module")
async def worker(cluster: Cluster, kube: KubeClient, records: Records) -> AsyncIterator[tuple[str, str]]:
    """The platform and the ``worker`` Function in a namespace of this module; yields (namespace, gateway URL)."""
    namespace = await create_namespace(kube, "q")
    async with running_platform(cluster, kube, slot_wait_seconds=5.0) as (operator, gateway, url):
        doc = python_function(
            "worker",
            HANDLER,
            timeoutSeconds=60,
            environment={"RECORDS_URL": records.url("").rstrip("/")},
            concurrency={"perInstance": 4},
            scaling={"minInstances": 1},
        )
        await deploy(cluster, gateway, namespace, doc)
        # The same worker under a name the throttle test can throttle (reserved concurrency 0) and release.
        # (No minimum instances: reserved concurrency 0 must stay valid.)
        gated = {
            **doc,
            "metadata": {"name": "gated"},
            "spec": {**doc["spec"], "scaling": {"minInstances": 0}},
        }
        await deploy(cluster, gateway, namespace, gated)
        # From here on Triggers get no bridge Deployment: each test runs the bridge process it needs.
        await operator.stop()
        try:
            yield namespace, url
        finally:
            await kube.delete(resource_path("v1", "namespaces", name=namespace))


def queue_for(broker: str, servers: dict[str, Any], namespace: str) -> Queue:
    if broker == "rabbitmq":
        return RabbitQueue(servers["rabbitmq"])
    if broker == "nats":
        return NatsQueue(servers["nats"], namespace)
    if broker == "redis":
        return RedisQueue(servers["redis"])
    return SqsQueue(servers["sqs"])


class Run:
    """One test's queue, Trigger and bridge process."""

    def __init__(
        self, cluster: Cluster, worker: tuple[str, str], servers: dict[str, Any], broker: str, tmp: Path
    ) -> None:
        self.cluster = cluster
        self.namespace, self.gateway_url = worker
        self.broker = broker
        self.queue = queue_for(broker, servers, self.namespace)
        self.tmp = tmp
        self.name = ""
        self.bridge: BridgeProcess | None = None

    async def start(
        self,
        name: str,
        *,
        batch_size: int,
        window: int,
        concurrency: int = 2,
        visibility_seconds: int = 30,
        report_batch_item_failures: bool = True,
        bridge: bool = True,
        function: str = "worker",
        env: dict[str, str] | None = None,
        source: JSON | None = None,
    ) -> None:
        self.name = f"{self.broker}-{name}"
        source = source or await self.queue.create(self.name, visibility_seconds=visibility_seconds)
        trigger = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Trigger",
            "metadata": {"name": self.name},
            "spec": {
                "function": function,
                "queue": {
                    **source,
                    "batchSize": batch_size,
                    "maxBatchingWindowSeconds": window,
                    "maxConcurrency": concurrency,
                    "reportBatchItemFailures": report_batch_item_failures,
                },
            },
        }
        self.cluster.apply(trigger, self.namespace)
        if not bridge:
            return
        self.bridge = BridgeProcess(
            self.cluster,
            self.namespace,
            self.name,
            gateway_url=self.gateway_url,
            log_dir=self.tmp,
            KUBELAMBDA_BRIDGE_QUEUE_VISIBILITY_TIMEOUT_SECONDS=str(visibility_seconds),
            KUBELAMBDA_BRIDGE_QUEUE_MAX_RECEIVE_COUNT=str(MAX_RECEIVES),
            KUBELAMBDA_BRIDGE_QUEUE_LAG_INTERVAL_SECONDS="1",
            **(env or {}),
        )
        self.bridge.start()

    async def diagnose(self) -> str:
        """What a failed wait should show: the broker's view and the end of the bridge's log."""
        try:
            settled = await self.queue.settled(self.name)
            dead = await self.queue.dead_letters(self.name)
        except Exception as e:
            settled, dead = None, f"{type(e).__name__}: {e}"
        log = self.bridge.log()[-4000:] if self.bridge else ""
        return f"queue settled: {settled}; dead letters: {dead}\nbridge log:\n{log}"

    async def stop(self) -> None:
        try:
            if self.bridge is not None:
                code = self.bridge.stop()
                assert code == 0, f"the bridge exited with {code}:\n{self.bridge.log()[-3000:]}"
        finally:
            await self.queue.close()
            if self.name:
                # Else the next operator this module starts runs a bridge pod for every Trigger left here
                # (sixteen more processes starting at once beside the four of the operator test).
                self.cluster.kubectl(
                    "delete", "trigger", self.name, "-n", self.namespace, "--ignore-not-found", "--wait=false"
                )


@pytest.fixture
async def run(
    request: pytest.FixtureRequest,
    cluster: Cluster,
    worker: tuple[str, str],
    servers: dict[str, Any],
    tmp_path: Path,
) -> AsyncIterator[Run]:
    running = Run(cluster, worker, servers, request.param, tmp_path)
    try:
        yield running
    finally:
        await running.stop()


def seen(records: Records, queue: str) -> list[JSON]:
    """Every record the function received from ``queue``, with ``failed`` set on those it reported failed."""
    out = []
    for batch in records.of(queue):
        failed = set(batch["failed"])
        for r in batch["records"]:
            out.append({**r, "failed": r["messageId"] in failed})
    return out


def bodies_seen(records: Records, queue: str) -> collections.Counter[str]:
    return collections.Counter(r["body"] for r in seen(records, queue))


async def trigger_status(kube: KubeClient, namespace: str, name: str) -> JSON:
    body = await kube.get(resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=namespace, name=name))
    return dict(body.get("status") or {})


async def operator_bridge_diagnosis(cluster: Cluster, kube: KubeClient, run: Run) -> str:
    """What a failed wait on an operator-run bridge should show: the Trigger's status, its bridge pods' phases,
    containers (restarts, last state) and Events (a failed probe, a kill), and the end of their logs (pods are
    processes of the local node, logging under its state dir). An empty log with a restart means the process was
    ended before it wrote a line: the Events say by whom."""
    prefix = f"{bridge_name(run.name)}-"
    try:
        status: Any = await trigger_status(kube, run.namespace, run.name)
        pods = await kube.get(resource_path("v1", "pods", namespace=run.namespace))
        events = await kube.get(resource_path("v1", "events", namespace=run.namespace))
    except Exception as e:
        status, pods, events = f"{type(e).__name__}: {e}", {}, {}
    mine = [p for p in pods.get("items", []) if p["metadata"]["name"].startswith(prefix)]
    phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in mine}
    containers = "".join(
        f"\n  {p['metadata']['name']}/{c['name']}: restarts {c.get('restartCount')}, state {c.get('state')}, "
        f"last state {c.get('lastState')}"
        for p in mine
        for c in (p.get("status") or {}).get("containerStatuses") or []
    )
    said = "".join(
        f"\n  {e.get('lastTimestamp')} {e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message')}"
        for e in events.get("items", [])
        if str(e.get("involvedObject", {}).get("name", "")).startswith(prefix)
    )
    others = sum(1 for p in pods.get("items", []) if "-bridge-" in p["metadata"]["name"])
    logs = "".join(
        f"\n---- {path.relative_to(cluster.state_dir)}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted((cluster.state_dir / "pods").glob(f"{run.namespace}_{prefix}*/logs/*.log"))
    )
    return (
        f"Trigger status: {status}\nbridge pods: {phases} ({others} bridge pods in the namespace)"
        f"\ncontainers:{containers}\nevents:{said}\n{await run.diagnose()}{logs}"
    )


# ---- tests


@pytest.mark.parametrize("run", BROKERS, indirect=True)
async def test_ten_thousand_messages_are_each_processed_once(
    run: Run, records: Records, kube: KubeClient
) -> None:
    await run.start("many", batch_size=100, window=1, concurrency=4)
    bodies = [f"m-{i:05d}".encode() for i in range(10_000)]
    await run.queue.publish(run.name, bodies)

    async def count() -> int:
        return len(bodies_seen(records, run.name))

    try:
        await wait_for(count, lambda n: n >= 10_000, what="10,000 distinct messages processed", timeout=120)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{await run.diagnose()}") from None
    got = bodies_seen(records, run.name)
    assert set(got) == {b.decode() for b in bodies}
    duplicates = {b: n for b, n in got.items() if n != 1}
    assert not duplicates, f"{len(duplicates)} messages processed more than once, e.g. {list(duplicates)[:5]}"
    sizes = [len(batch["records"]) for batch in records.of(run.name)]
    assert max(sizes) <= 100
    assert len(sizes) < 1000, f"{len(sizes)} batches for 10,000 messages: batching does not gather"
    await wait_for(lambda: run.queue.settled(run.name), bool, what="the queue settled (all acknowledged)")
    status = await wait_for(
        lambda: trigger_status(kube, run.namespace, run.name),
        lambda s: s.get("eventsDelivered") == 10_000 and s.get("lag") == 0,
        what="the Trigger's status: 10,000 delivered, lag 0",
    )
    (reachable,) = [c for c in status["conditions"] if c["type"] == "SourceReachable"]
    assert reachable["status"] == "True"


@pytest.mark.parametrize("run", BROKERS, indirect=True)
async def test_failed_items_are_redelivered_until_the_brokers_limit(run: Run, records: Records) -> None:
    await run.start("partial", batch_size=10, window=0, visibility_seconds=2)
    poison = [f"poison-{i}" for i in range(10)]
    flaky = [f"flaky-{i}" for i in range(10)]
    ok = [f"ok-{i:03d}" for i in range(280)]
    await run.queue.publish(run.name, [b.encode() for b in poison + flaky + ok])

    def summary() -> tuple[int, int, int]:
        got = bodies_seen(records, run.name)
        return (
            sum(1 for b in ok if got[b] >= 1),
            sum(1 for b in flaky if got[b] >= 2),
            sum(1 for b in poison if got[b] >= MAX_RECEIVES),
        )

    await wait_for(
        lambda: asyncio.sleep(0, result=summary()),
        lambda s: s == (len(ok), len(flaky), len(poison)),
        what="every ok message once, every flaky one twice, every poison one up to the limit",
        timeout=90,
    )
    if run.broker != "nats":
        dead = await wait_for(
            lambda: run.queue.dead_letters(run.name),
            lambda n: n == len(poison),
            what="the poison messages in the dead-letter queue",
            timeout=60,
        )
        assert dead == len(poison)
    await wait_for(lambda: run.queue.settled(run.name), bool, what="the queue settled", timeout=60)

    by_body: dict[str, list[JSON]] = collections.defaultdict(list)
    for r in seen(records, run.name):
        by_body[r["body"]].append(r)
    for body in ok:
        assert len(by_body[body]) == 1, f"{body} was delivered {len(by_body[body])} times"
        assert not by_body[body][0]["failed"]
    for body in flaky:
        counts = [int(r["attributes"]["ApproximateReceiveCount"]) for r in by_body[body]]
        assert counts == [1, 2], f"{body}: receive counts {counts}"
    for body in poison:
        counts = [int(r["attributes"]["ApproximateReceiveCount"]) for r in by_body[body]]
        assert counts == list(range(1, MAX_RECEIVES + 1)), f"{body}: receive counts {counts}"
        assert all(r["failed"] for r in by_body[body])


@pytest.mark.parametrize("run", BROKERS, indirect=True)
async def test_a_killed_bridge_loses_nothing(run: Run, records: Records) -> None:
    await run.start("kill", batch_size=50, window=1, concurrency=2, visibility_seconds=3)
    bodies = [f"k-{i:04d}".encode() for i in range(2000)]
    await run.queue.publish(run.name, bodies)

    async def count() -> int:
        return len(bodies_seen(records, run.name))

    await wait_for(count, lambda n: n >= 400, what="a fifth of the messages processed", timeout=60)
    assert run.bridge is not None
    run.bridge.kill()
    before = await count()
    assert before < 2000, "the bridge finished before it could be killed"
    run.bridge.start()
    await wait_for(count, lambda n: n >= 2000, what="every message processed after the restart", timeout=120)
    assert set(bodies_seen(records, run.name)) == {b.decode() for b in bodies}
    await wait_for(lambda: run.queue.settled(run.name), bool, what="the queue settled", timeout=60)


@pytest.mark.parametrize("run", BROKERS, indirect=True)
async def test_malformed_bodies_are_delivered_as_the_shape_defines(run: Run, records: Records) -> None:
    await run.start("odd", batch_size=10, window=1)
    text = ["not json {", "caf\u00e9 \u2713", '{"valid": "json"}']
    raw = [b"\xff\xfe\x00binary"] if run.broker != "sqs" else []  # SQS bodies are Unicode text by definition
    await run.queue.publish(run.name, [t.encode() for t in text] + raw)
    got = await wait_for(
        lambda: asyncio.sleep(0, result=seen(records, run.name)),
        lambda s: len(s) >= len(text) + len(raw),
        what="the odd messages delivered",
    )
    bodies = {r["body"]: r for r in got}
    for t in text:
        record = bodies[t]
        assert record["md5OfBody"] == hashlib.md5(t.encode()).hexdigest()
        assert "kubelambda.bodyEncoding" not in record["messageAttributes"]
    for b in raw:
        record = bodies[base64.b64encode(b).decode()]
        assert record["messageAttributes"]["kubelambda.bodyEncoding"]["stringValue"] == "base64"
        assert record["md5OfBody"] == hashlib.md5(b).hexdigest()
    record = got[0]
    assert set(record) >= {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert set(record["attributes"]) >= {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert record["eventSource"] == ("aws:sqs" if run.broker == "sqs" else f"kubelambda:{run.broker}")
    assert record["eventSourceARN"].endswith(f":{run.name}")
    assert record["awsRegion"] == "us-east-1"
    assert run.bridge is not None
    assert run.bridge.alive(), run.bridge.log()[-3000:]
    await wait_for(lambda: run.queue.settled(run.name), bool, what="the queue settled")


async def test_the_operator_runs_a_bridge_for_each_broker(
    cluster: Cluster,
    kube: KubeClient,
    worker: tuple[str, str],
    servers: dict[str, Any],
    records: Records,
    tmp_path: Path,
) -> None:
    """End to end: Triggers applied, the operator's bridge Deployments (pods on the local node) deliver."""
    namespace, url = worker
    runs = [Run(cluster, worker, servers, broker, tmp_path) for broker in BROKERS]
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0, gateway_url=url)
    try:
        for run in runs:
            await run.start("e2e", batch_size=10, window=0, bridge=False)
            await run.queue.publish(run.name, [f"e-{i:03d}".encode() for i in range(200)])
        for run in runs:

            async def count(name: str = run.name) -> int:
                return len(bodies_seen(records, name))

            try:
                await wait_for(
                    count, lambda n: n >= 200, what=f"200 messages through {run.name}", timeout=120
                )
            except AssertionError as e:
                raise AssertionError(f"{e}\n{await operator_bridge_diagnosis(cluster, kube, run)}") from None
            assert max(bodies_seen(records, run.name).values()) == 1
            await wait_for(lambda r=run: r.queue.settled(r.name), bool, what=f"{run.name} settled")
        for run in runs:
            await kube.delete(
                resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=namespace, name=run.name)
            )
    finally:
        await operator.stop()
        for run in runs:
            await run.stop()


@pytest.mark.parametrize(
    "name", ["function", "trigger-rabbitmq", "trigger-nats", "trigger-redis", "trigger-sqs"]
)
async def test_the_queue_worker_example_is_accepted_by_the_api_server(
    name: str, cluster: Cluster, worker: tuple[str, str]
) -> None:
    namespace, _ = worker
    path = REPO / "examples" / "queue-worker" / f"{name}.yaml"
    cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))


async def test_an_unreachable_broker_is_reported_and_recovered(
    cluster: Cluster, kube: KubeClient, worker: tuple[str, str], records: Records, tmp_path: Path
) -> None:
    """Redis goes away under the bridge (the operator's bridge Deployment): SourceReachable turns False with the
    error and the operator's Ready with it (SourceUnreachable), the bridge reconnects with backoff once Redis is
    back on the same port, delivers what was published meanwhile, and Ready is True again."""
    namespace, url = worker
    server = RedisServer(tmp_path / "redis")
    await server.start()
    run = Run(cluster, worker, {"redis": server}, "redis", tmp_path)
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0, gateway_url=url)
    try:
        await run.start("down", batch_size=10, window=0, bridge=False)

        async def reachable() -> str:
            status = await trigger_status(kube, namespace, run.name)
            return next(
                (c["status"] for c in status.get("conditions", []) if c["type"] == "SourceReachable"), ""
            )

        async def ready() -> tuple[str, str]:
            status = await trigger_status(kube, namespace, run.name)
            cond = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            return cond.get("status", ""), cond.get("reason", "")

        await wait_for(reachable, lambda s: s == "True", what="SourceReachable True")
        await wait_for(ready, lambda r: r == ("True", "BridgeReady"), what="Ready True")
        await server.stop()
        await wait_for(reachable, lambda s: s == "False", what="SourceReachable False while Redis is down")
        status = await trigger_status(kube, namespace, run.name)
        (condition,) = [c for c in status["conditions"] if c["type"] == "SourceReachable"]
        assert condition["reason"] == "Unreachable"
        assert condition["message"]
        # The operator follows: not READY while nothing can be delivered (kubectl get trig's column).
        await wait_for(
            ready, lambda r: r == ("False", "SourceUnreachable"), what="Ready False SourceUnreachable"
        )
        server = RedisServer(tmp_path / "redis-again", port=server.port)
        await server.start()
        await run.queue.publish(run.name, [f"back-{i}".encode() for i in range(20)])
        await wait_for(
            lambda: asyncio.sleep(0, result=len(bodies_seen(records, run.name))),
            lambda n: n >= 20,
            what="the messages published after Redis came back",
            timeout=90,
        )
        await wait_for(reachable, lambda s: s == "True", what="SourceReachable True again")
        await wait_for(ready, lambda r: r == ("True", "BridgeReady"), what="Ready True again")
    finally:
        await operator.stop()
        await run.stop()
        await server.stop()


def set_reserved(cluster: Cluster, namespace: str, name: str, reserved: int | None) -> None:
    patch = {"spec": {"concurrency": {"reserved": reserved}}}
    cluster.kubectl("patch", "fn", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))


@pytest.mark.parametrize("run", BROKERS, indirect=True)
async def test_a_throttled_function_uses_no_delivery_attempt(run: Run, records: Records) -> None:
    """Reserved concurrency 0 makes every invocation a 429: the bridge holds the batch (renewing the broker's
    lease) and backs off; once the limit is lifted every message arrives on its first receive.

    The batch is held for longer than the visibility timeout, so only the renewals keep it from coming back. The
    timeout (5 s) leaves room for the first 429 on a loaded machine: SQS (like Lambda's poller) renews nothing
    while an invocation is under way, so a receive-to-429 round trip longer than the timeout would be a
    redelivery the bridge never saw, not a failed renewal."""
    visibility = 5
    set_reserved(run.cluster, run.namespace, "gated", 0)
    try:
        await run.start("throttled", batch_size=10, window=0, visibility_seconds=visibility, function="gated")
        await run.queue.publish(run.name, [f"t-{i:02d}".encode() for i in range(20)])
        assert run.bridge is not None
        bridge = run.bridge
        await wait_for(
            lambda: asyncio.sleep(0, result=bridge.log().count("Held a batch")),
            lambda n: n >= 2,
            what="the bridge holding throttled batches",
            timeout=60,
        )
        # Held past the visibility timeout: the first receive count below then proves the renewals.
        await asyncio.sleep(visibility * 1.5)
    finally:
        set_reserved(run.cluster, run.namespace, "gated", None)
    got = await wait_for(
        lambda: asyncio.sleep(0, result=seen(records, run.name)),
        lambda s: len({r["body"] for r in s}) >= 20,
        what="the 20 messages once the throttle is lifted",
        timeout=90,
    )
    assert sorted(r["body"] for r in got) == [f"t-{i:02d}" for i in range(20)], "a message came twice"
    assert {r["attributes"]["ApproximateReceiveCount"] for r in got} == {"1"}
    await wait_for(lambda: run.queue.settled(run.name), bool, what="the queue settled")


async def test_rabbitmq_classic_queue_failures_go_to_its_dead_letter_exchange(
    cluster: Cluster, worker: tuple[str, str], servers: dict[str, Any], records: Records, tmp_path: Path
) -> None:
    """A classic queue keeps no delivery count: with KUBELAMBDA_BRIDGE_QUEUE_RABBITMQ_REQUEUE=false a failed
    message is rejected to the queue's dead-letter exchange at once, the others are acknowledged once."""
    run = Run(cluster, worker, servers, "rabbitmq", tmp_path)
    assert isinstance(run.queue, RabbitQueue)
    name = "rabbitmq-classic"
    channel = await run.queue._channel()
    dlx = await channel.declare_exchange(f"{name}-dlx", aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(f"{name}-dlq", durable=True)
    await dlq.bind(dlx)
    await channel.declare_queue(name, durable=True, arguments={"x-dead-letter-exchange": f"{name}-dlx"})
    await channel.close()
    try:
        await run.start(
            "classic",
            batch_size=10,
            window=0,
            env={"KUBELAMBDA_BRIDGE_QUEUE_RABBITMQ_REQUEUE": "false"},
            source={"rabbitmq": {"url": run.queue.url, "queue": name}},
        )
        await run.queue.publish(name, [b"ok-1", b"poison-1", b"ok-2", b"poison-2", b"ok-3"])
        await wait_for(
            lambda: run.queue.dead_letters(name),
            lambda n: n == 2,
            what="the two poison messages dead-lettered",
        )
        got = bodies_seen(records, name)
        assert got == {"ok-1": 1, "ok-2": 1, "ok-3": 1, "poison-1": 1, "poison-2": 1}
        await wait_for(lambda: run.queue.settled(name), bool, what="the queue settled")
    finally:
        await run.stop()
