"""Stream bridges (Kafka, Redis Streams, NATS JetStream, Kinesis API) on real brokers and the local cluster.

Every source gets the same checks: 10,000 records processed exactly once and in order per partition key
(record by record, as the function saw them), non-UTF-8 data delivered base64 intact; a poison record that
blocks its shard until its retries run out, then goes to the on-failure destination while the shard moves on;
a bridge SIGKILLed mid-run loses nothing (duplicates only after the last checkpoint).

The function is deployed once, then the operator is stopped, so the Triggers the tests create get no bridge
Deployment from it: each test runs its own bridge (in-process, or as a process it can SIGKILL).
The function writes what it saw into one file per invocation, named by the time it wrote it; invocations of
one shard never overlap, so sorting the files by name gives each shard's processing order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nats.js.api import StreamConfig

from kltest import Cluster, create_namespace, wait_for
from kltest.bridge import BridgeProcess
from kltest.platform import REPO, deploy, install_crds, python_function, running_platform, start_operator
from kltest.records import Records
from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge import BridgeSettings, run_bridge
from kubelambda.bridge.streams import kafka as kafka_source
from kubelambda.devcluster.servers import NatsServer, RedisServer
from kubelambda.devcluster.streamservers import KafkaServer, KinesisServer
from kubelambda.gateway.app import Gateway
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
SOURCES = ["kafka", "redis", "nats", "kinesis"]
SHARDS = 4  # Kafka partitions and Kinesis shards; Redis and NATS streams are one shard
KEYS = 16
FUNCTION = "recorder"

HANDLER = """
import base64
import json
import os
import time

OUT = os.environ["OUT_DIR"]


def handler(event, context):
    records = event["Records"]
    failures = []
    for n, r in enumerate(records):
        data = base64.b64decode(r["kinesis"]["data"])
        if data == b"poison":
            raise ValueError("poison record " + r["eventID"])
        if data == b"poison-partial":
            # Done up to here; report the rest of the batch as Lambda's partial batch response.
            failures = [{"itemIdentifier": r["kinesis"]["sequenceNumber"]}]
            records = records[:n]
            break
    if not records:
        return {"batchItemFailures": failures}
    stream = records[0]["eventSourceARN"].rsplit("/", 1)[1]
    folder = os.path.join(OUT, stream)
    os.makedirs(folder, exist_ok=True)
    lines = "".join(
        json.dumps([r["eventID"], r["kinesis"]["partitionKey"], r["kinesis"]["data"], r["eventSource"],
                    r["eventName"], r["kinesis"]["sequenceNumber"]]) + "\\n"
        for r in records
    )
    tmp = os.path.join(folder, "." + context.aws_request_id)
    with open(tmp, "w") as f:
        f.write(lines)
    os.rename(tmp, os.path.join(folder, "%d-%s" % (time.time_ns(), context.aws_request_id)))
    return {"batchItemFailures": failures}
"""

FAILURES = "failures"
FAILURES_HANDLER = """
import json
import os


def handler(event, context):
    folder = os.path.join(os.environ["OUT_DIR"], "_failures")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, context.aws_request_id), "w") as f:
        json.dump(event, f)
    return {}
"""

EVENT_SOURCE = {
    "kafka": "kubelambda:kafka",
    "redis": "kubelambda:redis",
    "nats": "kubelambda:nats",
    "kinesis": "aws:kinesis",
}


def payload(i: int) -> bytes:
    """Record ``i``'s data: its number, and every 97th record not UTF-8 (nor JSON) at all."""
    return b"\xff\xfe\x00" + str(i).encode() if i % 97 == 0 else str(i).encode()


def index_of(data: bytes) -> int:
    return int(data.removeprefix(b"\xff\xfe\x00"))


def seq_key(sequence: str) -> tuple[int, ...]:
    """Sequence numbers as comparable tuples (Redis entry ids are ``<ms>-<n>``, the others are integers)."""
    return tuple(int(part) for part in sequence.split("-"))


class Brokers:
    """The four brokers and how to make a stream, publish to it and name it in a Trigger."""

    def __init__(
        self, kafka: KafkaServer, redis: RedisServer, nats_server: NatsServer, kinesis: KinesisServer
    ):
        self.kafka = kafka
        self.redis = redis
        self.nats = nats_server
        self.kinesis = kinesis

    def source(self, kind: str, name: str) -> JSON:
        if kind == "kafka":
            return {"kafka": {"bootstrapServers": [self.kafka.bootstrap], "topic": name}}
        if kind == "redis":
            return {"redis": {"url": self.redis.url, "key": name}}
        if kind == "nats":
            return {"nats": {"url": self.nats.url, "stream": name}}
        return {"kinesis": {"endpoint": self.kinesis.endpoint, "streamName": name}}

    async def create(self, kind: str, name: str) -> None:
        if kind == "kafka":
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(name, SHARDS, 1)])
            finally:
                await admin.close()
        elif kind == "nats":
            nc = await nats.connect(self.nats.url)
            try:
                await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
            finally:
                await nc.close()
        elif kind == "kinesis":
            async with self._kinesis() as api:
                await api.create_stream(StreamName=name, ShardCount=SHARDS)
                await api.get_waiter("stream_exists").wait(StreamName=name)

    def _kinesis(self) -> Any:
        return get_session().create_client(
            "kinesis",
            endpoint_url=self.kinesis.endpoint,
            region_name="us-east-1",
            aws_access_key_id="kubelambda",
            aws_secret_access_key="kubelambda",
        )

    async def checkpoint(
        self, kind: str, name: str, kube: KubeClient, namespace: str
    ) -> dict[str, tuple[int, ...]]:
        """Per shard, the sequence number of the last record checkpointed (where a restart continues after)."""
        if kind in ("redis", "kinesis"):
            cm = await kube.get_or_none(
                resource_path("v1", "configmaps", namespace=namespace, name=f"{name}-checkpoint")
            )
            data = (cm or {}).get("data") or {}
            if kind == "redis":
                saved = data.get(f"redis.{name}")
                return {"shardId-000000000000": seq_key(saved)} if saved else {}
            return {shard: seq_key(seq) for shard, seq in data.items()}
        if kind == "kafka":
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.kafka.bootstrap, group_id=f"kubelambda-{namespace}-{name}"
            )
            await consumer.start()
            try:
                out: dict[str, tuple[int, ...]] = {}
                for p in range(SHARDS):
                    offset = await consumer.committed(TopicPartition(name, p))
                    if offset is not None:
                        out[f"shardId-{p:012d}"] = (offset - 1,)
                return out
            finally:
                await consumer.stop()
        nc = await nats.connect(self.nats.url)
        try:
            info = await nc.jetstream().consumer_info(name, f"kubelambda-{namespace}-{name}")
            return {"shardId-000000000000": (info.ack_floor.stream_seq,)}
        finally:
            await nc.close()

    async def publish(self, kind: str, name: str, items: list[tuple[str, bytes]]) -> None:
        """Publishes (partition key, data) pairs in list order."""
        if kind == "kafka":
            producer = AIOKafkaProducer(bootstrap_servers=self.kafka.bootstrap, linger_ms=5, acks="all")
            await producer.start()
            try:
                futures = [await producer.send(name, data, key=pk.encode()) for pk, data in items]
                await producer.flush()
                await asyncio.gather(*futures)
            finally:
                await producer.stop()
        elif kind == "redis":
            conn = aioredis.Redis.from_url(self.redis.url)
            try:
                for start in range(0, len(items), 1000):
                    pipe = conn.pipeline(transaction=False)
                    for pk, data in items[start : start + 1000]:
                        pipe.xadd(name, {"data": data, "partitionKey": pk})
                    await pipe.execute()
            finally:
                await conn.aclose()
        elif kind == "nats":
            nc = await nats.connect(self.nats.url)
            try:
                js = nc.jetstream()
                # In order: JetStream keeps publish order per connection; acks are awaited in chunks.
                for start in range(0, len(items), 500):
                    acks = [
                        asyncio.ensure_future(js.publish(f"{name}.{pk}", data))
                        for pk, data in items[start : start + 500]
                    ]
                    await asyncio.gather(*acks)
            finally:
                await nc.close()
        else:
            async with self._kinesis() as api:
                for start in range(0, len(items), 500):
                    answer = await api.put_records(
                        StreamName=name,
                        Records=[
                            {"PartitionKey": pk, "Data": data} for pk, data in items[start : start + 500]
                        ],
                    )
                    assert answer.get("FailedRecordCount", 0) == 0


@pytest.fixture(scope="module")
async def brokers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Brokers]:
    root = tmp_path_factory.mktemp("brokers")
    servers = (
        KafkaServer(root / "kafka"),
        RedisServer(root / "redis"),
        NatsServer(root / "nats"),
        KinesisServer(root / "kinesis"),
    )
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(s) for s in servers))
        yield Brokers(*servers)  # type: ignore[arg-type]


class Platform:
    def __init__(self, gateway: Gateway, url: str, namespace: str, out: Path) -> None:
        self.gateway = gateway
        self.url = url
        self.namespace = namespace
        self.out = out


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, brokers: Brokers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    namespace = await create_namespace(kube, "st")
    out = tmp_path_factory.mktemp("seen")
    # The gateway queues Event invocations (the function destination) in the brokers' NATS.
    async with running_platform(cluster, kube, slot_wait_seconds=5.0, nats_url=brokers.nats.url) as (
        operator,
        gateway,
        url,
    ):
        await deploy(
            cluster,
            gateway,
            namespace,
            python_function(FAILURES, FAILURES_HANDLER, environment={"OUT_DIR": str(out)}),
        )
        doc = python_function(
            FUNCTION,
            HANDLER,
            timeoutSeconds=10,
            environment={"OUT_DIR": str(out)},
            concurrency={"perInstance": 8},
            scaling={"minInstances": 1, "maxInstances": 2},
        )
        await deploy(cluster, gateway, namespace, doc)
        # From here on Triggers get no bridge Deployment: each test runs the bridge it needs.
        await operator.stop()
        try:
            yield Platform(gateway, url, namespace, out)
        finally:
            await kube.delete(resource_path("v1", "namespaces", name=namespace))


def trigger(kind: str, name: str, brokers: Brokers, **stream: Any) -> JSON:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {
            "function": FUNCTION,
            "stream": {**brokers.source(kind, name), "batchSize": 100, **stream},
        },
    }


class Seen:
    """What the function saw for one stream, in processing order per shard."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def rows(self) -> list[list[str]]:
        if not self.folder.exists():
            return []
        rows: list[list[str]] = []
        for path in sorted(p for p in self.folder.iterdir() if not p.name.startswith(".")):
            rows.extend(json.loads(line) for line in path.read_text().splitlines())
        return rows

    def indexes(self) -> list[int]:
        return [index_of(base64.b64decode(row[2])) for row in self.rows()]

    async def count(self) -> int:
        return len(set(await asyncio.to_thread(self.indexes)))


def check_order(rows: list[list[str]]) -> None:
    """Per partition key, record numbers only go up (first sightings, so replays after a crash are fine)."""
    last: dict[str, int] = {}
    seen: set[int] = set()
    for row in rows:
        i = index_of(base64.b64decode(row[2]))
        if i in seen:
            continue
        seen.add(i)
        assert i > last.get(row[1], -1), f"record {i} of key {row[1]} after record {last[row[1]]}"
        last[row[1]] = i


def items(n: int, *, prefix: str = "k") -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i % KEYS}", payload(i)) for i in range(n)]


async def delete_trigger(kube: KubeClient, namespace: str, name: str) -> None:
    """So that the operator started by the last test runs no bridge for the Triggers of the earlier ones."""
    await kube.delete(resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name=name))


def settings(platform: Platform, cluster: Cluster) -> BridgeSettings:
    return BridgeSettings(
        kubeconfig=str(cluster.kubeconfig), gateway_url=platform.url, port=0, status_interval_seconds=1
    )


async def ten_thousand(
    kind: str, name: str, brokers: Brokers, platform: Platform, cluster: Cluster, total: int
) -> Seen:
    """A stream ``name`` holding ``total`` records over KEYS keys, and its Trigger (no operator runs its bridge:
    the test does); returns what the function will have seen of it."""
    await brokers.create(kind, name)
    await brokers.publish(kind, name, items(total))
    cluster.apply(trigger(kind, name, brokers), platform.namespace)
    return Seen(platform.out / name)


@pytest.mark.parametrize("kind", SOURCES)
async def test_ten_thousand_records_once_each_in_order_per_key(
    kind: str, brokers: Brokers, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    name = f"once-{kind}"
    total = 10_000
    seen = await ten_thousand(kind, name, brokers, platform, cluster, total)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(
            seen.count,
            lambda n: n >= total or bridge.done(),
            what=f"{total} records seen",
            timeout=150,
            interval=0.5,
        )
        assert not bridge.done(), bridge.exception()
        # Every record was published before the bridge started, so it read a backlog (IteratorAge > 0 then);
        # once it has delivered them all and reads nothing more, the age is 0, as Lambda reports it.
        path = resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name)
        await wait_for(
            lambda: kube.get(path),
            lambda b: (
                (b.get("status") or {}).get("eventsDelivered") == total
                and b["status"].get("iteratorAgeSeconds") == 0
            ),
            what="every record delivered and the bridge caught up (iteratorAgeSeconds 0)",
            timeout=30,
        )
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    rows = seen.rows()
    counts = Counter(index_of(base64.b64decode(r[2])) for r in rows)
    assert sorted(counts) == list(range(total))
    assert max(counts.values()) == 1, f"duplicates: {[i for i, c in counts.items() if c > 1][:20]}"
    check_order(rows)
    # The shape: eventSource names the broker, eventID is shardId:sequenceNumber, data is the exact bytes.
    assert {r[3] for r in rows} == {EVENT_SOURCE[kind]}
    assert {r[4] for r in rows} == {"aws:kinesis:record"}
    assert all(r[0].startswith("shardId-") and r[0].endswith(":" + r[5]) for r in rows)
    assert {base64.b64decode(r[2]) for r in rows if index_of(base64.b64decode(r[2])) == 97} == {payload(97)}
    shards = {r[0].split(":", 1)[0] for r in rows}
    assert len(shards) == (SHARDS if kind in ("kafka", "kinesis") else 1)
    body = await kube.get(
        resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name)
    )
    status = body["status"]
    assert status["eventsDelivered"] == total
    assert status["iteratorAgeSeconds"] == 0
    assert any(c["type"] == "SourceReachable" and c["status"] == "True" for c in status["conditions"])
    await delete_trigger(kube, platform.namespace, name)


@pytest.mark.parametrize("mode", ["bisect", "partial"])
@pytest.mark.parametrize("kind", SOURCES)
async def test_a_poison_record_blocks_its_shard_then_goes_to_the_failure_destination(
    kind: str,
    mode: str,
    brokers: Brokers,
    platform: Platform,
    cluster: Cluster,
    kube: KubeClient,
    records: Records,
) -> None:
    """``bisect``: the function raises on the poison; bisection isolates it, and only it is discarded.
    ``partial``: the function reports it in ``batchItemFailures``; records before it are done, the batch is
    retried from it, and after the retries the rest of that batch (from the poison on) is discarded."""
    name = f"poison-{mode}-{kind}"
    await brokers.create(kind, name)
    total, poison = 300, 150
    # One partition key: every record, the poison included, is in the same shard.
    marker = b"poison" if mode == "bisect" else b"poison-partial"
    published = [("one", marker if i == poison else payload(i)) for i in range(total)]
    await brokers.publish(kind, name, published)
    key = f"{platform.namespace}-{name}"
    errors: JSON = (
        {"bisectBatchOnFunctionError": True} if mode == "bisect" else {"reportBatchItemFailures": True}
    )
    cluster.apply(
        trigger(kind, name, brokers, maximumRetryAttempts=2, onFailure={"url": records.url(key)}, **errors),
        platform.namespace,
    )
    seen = Seen(platform.out / name)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        (failure,) = await records.wait(key, timeout=120)
        discarded = failure["KinesisBatchInfo"]["batchSize"]
        after = set(range(total)) - set(range(poison, poison + discarded))
        await wait_for(seen.count, lambda n: n >= len(after), what=f"{len(after)} records seen", timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 3
    assert failure["requestContext"]["functionArn"] == (
        f"arn:aws:lambda:us-east-1:{platform.namespace}:function:{FUNCTION}"
    )
    assert failure["responseContext"]["functionError"] == ("Unhandled" if mode == "bisect" else "")
    info = failure["KinesisBatchInfo"]
    if mode == "bisect":
        assert info["batchSize"] == 1
        assert info["startSequenceNumber"] == info["endSequenceNumber"]
    else:
        assert 1 <= info["batchSize"] <= 100
    assert info["streamArn"].endswith(f"/{name}")
    rows = seen.rows()
    counts = Counter(index_of(base64.b64decode(r[2])) for r in rows)
    # Everything but the discarded records, each once, in order; the shard moved on past them.
    assert sorted(counts) == sorted(after)
    assert max(counts.values()) == 1
    check_order(rows)
    by_index = {index_of(base64.b64decode(r[2])): r for r in rows}
    assert by_index[poison - 1][0].split(":")[0] == info["shardId"]
    assert len(records.of(key)) == 1
    await delete_trigger(kube, platform.namespace, name)


@pytest.mark.parametrize("kind", SOURCES)
async def test_a_bridge_killed_mid_run_loses_nothing(
    kind: str, brokers: Brokers, platform: Platform, cluster: Cluster, kube: KubeClient, tmp_path: Path
) -> None:
    name = f"kill-{kind}"
    total = 10_000
    seen = await ten_thousand(kind, name, brokers, platform, cluster, total)
    bridge = BridgeProcess(cluster, platform.namespace, name, gateway_url=platform.url, log_dir=tmp_path)
    with bridge:

        async def progress() -> tuple[int, dict[str, tuple[int, ...]]]:
            return await seen.count(), await brokers.checkpoint(kind, name, kube, platform.namespace)

        # Killed mid-run once a checkpoint is written (before any, a restart replays everything: correct, but
        # not the case to test).
        await wait_for(
            progress,
            lambda p: p[0] >= 2000 and any(v[0] > 0 for v in p[1].values()),
            what="2,000 records seen and a checkpoint written",
            timeout=120,
            interval=0.2,
        )
        bridge.kill()
        checkpoint = await brokers.checkpoint(kind, name, kube, platform.namespace)
        bridge.start()
        await wait_for(
            seen.count,
            lambda n: n >= total or not bridge.alive(),
            what=f"{total} records seen after the restart",
            timeout=150,
            interval=0.5,
        )
        assert bridge.alive(), bridge.log()[-3000:]
    rows = seen.rows()
    counts = Counter(index_of(base64.b64decode(r[2])) for r in rows)
    assert sorted(counts) == list(range(total)), "records lost"
    # Replays only of what was done after the last checkpoint the dead bridge wrote, each at most once more.
    assert max(counts.values()) <= 2
    replayed = [r for r in rows if counts[index_of(base64.b64decode(r[2]))] == 2]
    early = [
        r
        for r in replayed
        if r[0].split(":", 1)[0] in checkpoint and seq_key(r[5]) <= checkpoint[r[0].split(":", 1)[0]]
    ]
    assert not early, f"replayed before the checkpoint {checkpoint}: {early[:5]}"
    check_order(rows)
    await delete_trigger(kube, platform.namespace, name)


async def test_discarded_records_go_to_a_function_destination_once(
    brokers: Brokers, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    """``onFailure.function``: an Event invocation through the gateway, carrying Lambda's on-failure record."""
    kind, name = "redis", "poison-to-function"
    await brokers.create(kind, name)
    await brokers.publish(kind, name, [("k", b"poison" if i == 20 else payload(i)) for i in range(40)])
    cluster.apply(
        trigger(
            kind,
            name,
            brokers,
            batchSize=10,
            bisectBatchOnFunctionError=True,
            maximumRetryAttempts=0,
            onFailure={"function": FAILURES},
        ),
        platform.namespace,
    )
    folder = platform.out / "_failures"
    seen = Seen(platform.out / name)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(seen.count, lambda n: n >= 39, what="39 records seen", timeout=60)
        files = await wait_for(
            lambda: asyncio.sleep(0, result=list(folder.iterdir()) if folder.exists() else []),
            bool,
            what="the failure destination invoked",
            timeout=60,
        )
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    (record,) = [json.loads(f.read_text()) for f in files]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["KinesisBatchInfo"]["batchSize"] == 1
    assert record["KinesisBatchInfo"]["streamArn"].endswith(f"/{name}")
    await delete_trigger(kube, platform.namespace, name)


@pytest.mark.parametrize("kind", SOURCES)
async def test_at_timestamp_starts_at_the_first_record_stored_at_or_after_it(
    kind: str, brokers: Brokers, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    name = f"at-{kind}"
    await brokers.create(kind, name)
    await brokers.publish(kind, name, [("k", payload(i)) for i in range(50)])
    # Whole seconds apart, so that no broker's timestamp precision can put a record on the wrong side.
    await asyncio.sleep(1.1)
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=1)
    await asyncio.sleep(max(0.0, (start - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.1)
    await brokers.publish(kind, name, [("k", payload(i)) for i in range(50, 100)])
    cluster.apply(
        trigger(
            kind,
            name,
            brokers,
            startingPosition="AT_TIMESTAMP",
            startingPositionTimestamp=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
        platform.namespace,
    )
    seen = Seen(platform.out / name)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(seen.count, lambda n: n >= 50, what="the 50 later records", timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    assert sorted(seen.indexes()) == list(range(50, 100))
    await delete_trigger(kube, platform.namespace, name)


async def test_the_operator_runs_a_bridge_for_each_kind_of_stream(
    brokers: Brokers, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    """End to end: Triggers applied, the operator's bridge Deployments (pods on the local node) deliver."""
    total = 1000
    names = {kind: f"e2e-{kind}" for kind in SOURCES}
    for kind, name in names.items():
        await brokers.create(kind, name)
        await brokers.publish(kind, name, items(total))
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0, gateway_url=platform.url)
    try:
        for kind, name in names.items():
            cluster.apply(trigger(kind, name, brokers), platform.namespace)
        for kind, name in names.items():
            seen = Seen(platform.out / name)
            await wait_for(seen.count, lambda n: n >= total, what=f"{total} {kind} records seen", timeout=120)
            counts = Counter(seen.indexes())
            assert sorted(counts) == list(range(total))
            assert max(counts.values()) == 1
            check_order(seen.rows())
    finally:
        await operator.stop()


async def test_the_stream_processor_example_is_accepted_by_the_api_server(
    platform: Platform, cluster: Cluster
) -> None:
    folder = REPO / "examples" / "stream-processor"
    for name in ("function.yaml", "trigger.yaml"):
        cluster.kubectl("apply", "--dry-run=server", "-n", platform.namespace, "-f", str(folder / name))


async def test_a_kafka_broker_that_accepts_and_never_answers_is_reported_and_retried(
    cluster: Cluster, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener that takes the connection and says nothing (aiokafka itself waits 40 s per bootstrap): the
    bridge's own bound reports it (SourceReachable False, naming the bound) and connects again."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await install_crds(cluster, kube)
    namespace = await create_namespace(kube, "silent")
    name = "silent-kafka"
    cluster.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {
                "function": FUNCTION,
                "stream": {"kafka": {"bootstrapServers": [f"127.0.0.1:{port}"], "topic": name}},
            },
        },
        namespace,
    )
    monkeypatch.setenv("KUBELAMBDA_BRIDGE_STREAM_CONNECT_TIMEOUT_SECONDS", "2")
    config = BridgeSettings(
        kubeconfig=str(cluster.kubeconfig),
        gateway_url="http://127.0.0.1:9",
        port=0,
        status_interval_seconds=1,
    )
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(namespace, name, config, stop=stop))
    path = resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name=name)

    async def reachable() -> list[JSON]:
        body = await kube.get(path)
        return [c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == "SourceReachable"]

    try:
        said = await wait_for(
            reachable,
            lambda c: bool(c) or bridge.done(),
            what="SourceReachable written",
            timeout=30,
        )
        assert not bridge.done(), bridge.exception()
        assert said[0]["status"] == "False"
        assert said[0]["message"] == "the broker did not finish connecting within 2 s"
        await wait_for(
            lambda: asyncio.sleep(0, result=len(connections)),
            lambda n: n >= 2 or bridge.done(),
            what="a second connection after the first was given up",
            timeout=30,
        )
        assert not bridge.done(), bridge.exception()
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
        server.close()
        for writer in connections:
            writer.close()
        await kube.delete(resource_path("v1", "namespaces", name=namespace))


async def test_kafka_offsets_of_every_partition_are_committed_in_one_request_at_most_every_interval(
    brokers: Brokers,
) -> None:
    """The bridge's Kafka checkpoints: what the partitions want committed meanwhile goes in one OffsetCommit, and
    commits are at least the interval apart; each caller returns once its offset is committed."""
    name = "commits-kafka"
    await brokers.create("kafka", name)
    await brokers.publish("kafka", name, items(40))
    trigger_ = Trigger.model_validate(trigger("kafka", name, brokers))
    ctx = SimpleNamespace(trigger=trigger_, namespace="ns", name=name, region="us-east-1", secrets=None)
    client = kafka_source._KafkaClient(ctx, commit_interval=0.5)  # type: ignore[arg-type]
    await client.start()
    try:
        readers = [await client.reader(shard) for shard in await client.shards()]
        assert len(readers) == SHARDS
        consumer = client.consumer
        assert consumer is not None
        sent: list[tuple[float, dict[int, int]]] = []
        commit = consumer.commit
        loop = asyncio.get_running_loop()

        async def counted(offsets: dict[TopicPartition, Any]) -> None:
            sent.append((loop.time(), {tp.partition: meta.offset for tp, meta in offsets.items()}))
            await commit(offsets)

        consumer.commit = counted
        for base in (3, 7):
            await asyncio.gather(*(client.commit(r.tp, base + i) for i, r in enumerate(readers)))
        assert [offsets for _, offsets in sent] == [{i: base + i for i in range(SHARDS)} for base in (3, 7)]
        assert sent[1][0] - sent[0][0] >= 0.5
        assert {r.tp.partition: await consumer.committed(r.tp) for r in readers} == {
            i: 7 + i for i in range(SHARDS)
        }
    finally:
        await client.close()
