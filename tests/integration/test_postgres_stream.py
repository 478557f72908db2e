"""``stream.postgres`` on a real PostgreSQL (``wal_level=logical``) and the local cluster.

Row changes reach the function as DynamoDB Streams records, in commit order per key, once each; a SIGKILLed
bridge replays only transactions after the slot's confirmed LSN; a transaction's changes arrive together and in
order; a TOASTed value arrives whole; a poison record is bisected out to the on-failure destination
(``DDBStreamBatchInfo``); a table without a primary key is a clear error in the Trigger's status. The events the
function received are parsed with powertools' ``DynamoDBStreamEvent``.

As in test_stream_bridges, the function is deployed once and the operator stopped: each test runs its own bridge.
The function writes each event it got into a file named by the time it wrote it (invocations of the one shard
never overlap), so sorting the files gives the processing order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import string
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis.asyncio as aioredis
import yaml
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecordEventName

from kltest import Cluster, create_namespace, wait_for
from kltest.bridge import BridgeProcess
from kltest.platform import REPO, deploy, python_function, running_platform
from kltest.records import Records
from kubelambda.bridge import BridgeSettings, run_bridge
from kubelambda.devcluster.servers import NatsServer, PostgresServer, RedisServer
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.bridge import CLEANUP_FINALIZER, bridge_to_wake

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
FUNCTION = "changes"
KEYS = 16

HANDLER = """
import json
import os
import time

OUT = os.environ["OUT_DIR"]


def handler(event, context):
    records = event["Records"]
    for r in records:
        image = r["dynamodb"].get("NewImage") or {}
        if image.get("note", {}).get("S") == "poison":
            raise ValueError("poison " + r["dynamodb"]["SequenceNumber"])
    table = records[0]["eventSourceARN"].split("/")[1].split(".")[-1]
    folder = os.path.join(OUT, table)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "." + context.aws_request_id)
    with open(tmp, "w") as f:
        json.dump(event, f)
    os.rename(tmp, os.path.join(folder, "%d-%s" % (time.time_ns(), context.aws_request_id)))
    return {}
"""


class Database:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def connect(self) -> Any:
        conn = psycopg2.connect(self.server.url)
        conn.autocommit = True
        return conn

    async def run(self, *statements: str | tuple[str, Any]) -> None:
        """Each statement in its own transaction (autocommit)."""

        def go() -> None:
            conn = self.connect()
            try:
                with conn.cursor() as cur:
                    for s in statements:
                        if isinstance(s, tuple):
                            cur.execute(*s)
                        else:
                            cur.execute(s)
            finally:
                conn.close()

        await asyncio.to_thread(go)

    async def transactions(self, batches: list[list[str | tuple[str, Any]]]) -> None:
        """Each inner list in one transaction, in list order."""

        def go() -> None:
            conn = psycopg2.connect(self.server.url)
            try:
                with conn.cursor() as cur:
                    for batch in batches:
                        for s in batch:
                            if isinstance(s, tuple):
                                cur.execute(*s)
                            else:
                                cur.execute(s)
                        conn.commit()
            finally:
                conn.close()

        await asyncio.to_thread(go)

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        def go() -> list[tuple[Any, ...]]:
            conn = self.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall())
            finally:
                conn.close()

        return await asyncio.to_thread(go)

    async def confirmed_lsn(self, slot: str) -> int:
        rows = await self.query(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", slot
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield Database(server)


class Platform:
    def __init__(self, url: str, namespace: str, out: Path, nats_url: str) -> None:
        self.url = url
        self.namespace = namespace
        self.out = out
        self.nats_url = nats_url


RECORDER = """
import json
import os


def handler(event, context):
    folder = os.path.join(os.environ["OUT_DIR"], os.environ["NAME"])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, context.aws_request_id), "w") as f:
        json.dump(event, f)
    return {}
"""


def example(nats_url: str, out: Path) -> dict[tuple[str, str], JSON]:
    """examples/orders-table as shipped, pointed at the test's NATS; the subscribers' handlers are recorders."""
    folder = REPO / "examples" / "orders-table"
    docs: dict[tuple[str, str], JSON] = {
        (d["kind"], d["metadata"]["name"]): d
        for name in ("function.yaml", "trigger.yaml", "topic.yaml")
        for d in yaml.safe_load_all((folder / name).read_text())
    }
    docs[("Function", "order-events")]["spec"]["environment"] = {"NATS_URL": nats_url}
    for name in ("order-audit", "order-mailer"):
        fn = docs[("Function", name)]
        fn["spec"]["code"]["inline"] = {"app.py": RECORDER}
        fn["spec"]["environment"] = {"OUT_DIR": str(out), "NAME": name}
    for name in ("orders-audit", "orders-mailer"):
        docs[("Trigger", name)]["spec"]["topic"]["nats"]["url"] = nats_url
    return docs


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    namespace = await create_namespace(kube, "pg")
    out = tmp_path_factory.mktemp("seen")
    os.chmod(out, 0o777)
    async with (
        NatsServer(tmp_path_factory.mktemp("nats")) as nats_server,
        running_platform(cluster, kube, slot_wait_seconds=5.0, nats_url=nats_server.url) as (
            operator,
            gateway,
            url,
        ),
    ):
        for (kind, _), doc in example(nats_server.url, out).items():
            if kind == "Function":
                await deploy(cluster, gateway, namespace, doc)
        await deploy(
            cluster,
            gateway,
            namespace,
            python_function(
                FUNCTION,
                HANDLER,
                timeoutSeconds=10,
                environment={"OUT_DIR": str(out)},
                concurrency={"perInstance": 8},
                scaling={"minInstances": 1, "maxInstances": 2},
            ),
        )
        await operator.stop()
        try:
            yield Platform(url, namespace, out, nats_server.url)
        finally:
            await kube.delete(resource_path("v1", "namespaces", name=namespace))


def trigger(name: str, database: Database, tables: list[str], **stream: Any) -> JSON:
    postgres = {"url": database.server.url, "tables": tables, "slot": name.replace("-", "_")}
    postgres.update(stream.pop("postgres", {}))
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"function": FUNCTION, "stream": {"postgres": postgres, "batchSize": 100, **stream}},
    }


def settings(platform: Platform, cluster: Cluster) -> BridgeSettings:
    return BridgeSettings(
        kubeconfig=str(cluster.kubeconfig), gateway_url=platform.url, port=0, status_interval_seconds=1
    )


class Seen:
    """The events the function got for one table, in processing order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def events(self) -> list[JSON]:
        if not self.folder.exists():
            return []
        return [
            json.loads(p.read_text())
            for p in sorted(p for p in self.folder.iterdir() if not p.name.startswith("."))
        ]

    def records(self) -> list[JSON]:
        return [r for e in self.events() for r in e["Records"]]

    async def count(self) -> int:
        return len(await asyncio.to_thread(self.records))


def n_of(record: JSON) -> int:
    return int(record["dynamodb"]["NewImage"]["n"]["N"])


def commit_lsn(record: JSON) -> int:
    return int(record["dynamodb"]["SequenceNumber"][:20])


def updates(total: int, table: str) -> list[list[str | tuple[str, Any]]]:
    """``total`` updates over KEYS rows (``n`` = the update's number), in transactions of 1 to 40 statements."""
    rng = random.Random(7)
    batches: list[list[str | tuple[str, Any]]] = []
    i = 0
    while i < total:
        size = min(total - i, rng.randint(1, 40))
        batches.append(
            [(f"UPDATE {table} SET n = %s WHERE k = %s", (j, f"k{j % KEYS}")) for j in range(i, i + size)]
        )
        i += size
    return batches


async def counters(database: Database, table: str) -> None:
    await database.run(
        f"CREATE TABLE {table} (k text PRIMARY KEY, n int NOT NULL, note text)",
        f"ALTER TABLE {table} REPLICA IDENTITY FULL",
    )


async def seed(database: Database, table: str) -> None:
    await database.run(
        *[(f"INSERT INTO {table} (k, n) VALUES (%s, %s)", (f"k{j}", -1 - j)) for j in range(KEYS)]
    )


def check_commit_order(records: list[JSON]) -> None:
    """First sightings: sequence numbers only go up (one shard, commit order) and so does n per key."""
    seen: set[str] = set()
    last_seq = ""
    last_n: dict[str, int] = {}
    for r in records:
        seq = r["dynamodb"]["SequenceNumber"]
        if seq in seen:
            continue
        seen.add(seq)
        assert seq > last_seq, f"{seq} after {last_seq}"
        last_seq = seq
        if r["eventName"] == "MODIFY":
            key = r["dynamodb"]["Keys"]["k"]["S"]
            assert n_of(r) > last_n.get(key, -1), f"key {key}: {n_of(r)} after {last_n[key]}"
            last_n[key] = n_of(r)


async def test_ten_thousand_changes_once_each_in_commit_order_per_key(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    name, table = "pg-once", "once_counters"
    total = 10_000
    await counters(database, table)
    cluster.apply(trigger(name, database, [table]), platform.namespace)
    seen = Seen(platform.out / table)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        # The slot starts where the bridge creates it: write once it exists.
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", "pg_once"),
            lambda rows: bool(rows) or bridge.done(),
            what="the slot created",
            timeout=60,
        )
        await seed(database, table)
        await database.transactions(updates(total, table))
        await wait_for(
            seen.count,
            lambda n: n >= total + KEYS or bridge.done(),
            what=f"{total + KEYS} changes seen",
            timeout=180,
            interval=0.5,
        )
        assert not bridge.done(), bridge.exception()
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    events = seen.events()
    records = [r for e in events for r in e["Records"]]
    assert Counter(r["eventName"] for r in records) == {"INSERT": KEYS, "MODIFY": total}
    counts = Counter(n_of(r) for r in records if r["eventName"] == "MODIFY")
    assert sorted(counts) == list(range(total))
    assert max(counts.values()) == 1, "duplicates"
    check_commit_order(records)
    # The shape, as powertools reads it.
    for raw in events[:50]:
        parsed = DynamoDBStreamEvent(raw)
        for rec in parsed.records:
            assert rec.event_source == "aws:dynamodb"
            assert rec.dynamodb is not None
            assert rec.dynamodb.stream_view_type is not None
            assert rec.dynamodb.stream_view_type.name == "NEW_AND_OLD_IMAGES"
            assert rec.dynamodb.keys["k"].startswith("k")
            if rec.event_name == DynamoDBRecordEventName.MODIFY:
                assert rec.dynamodb.new_image["n"] > rec.dynamodb.old_image["n"]
            assert rec.dynamodb.sequence_number == rec.raw_event["dynamodb"]["SequenceNumber"]
            assert (rec.dynamodb.size_bytes or 0) > 0
            assert rec.event_source_arn is not None
            assert rec.event_source_arn.endswith(f"table/public.{table}/stream/pg_once")
    # Everything was confirmed: the slot holds no more than the last transaction's end.
    assert await database.confirmed_lsn("pg_once") >= max(commit_lsn(r) for r in records)
    status = (await kube.get(trigger_path(platform, name)))["status"]
    assert status["eventsDelivered"] == total + KEYS


def trigger_path(platform: Platform, name: str) -> str:
    return resource_path("kubelambda.io/v1alpha1", "triggers", namespace=platform.namespace, name=name)


async def test_a_bridge_killed_mid_run_replays_only_after_the_confirmed_lsn(
    database: Database, platform: Platform, cluster: Cluster, tmp_path: Path
) -> None:
    name, table, slot = "pg-kill", "kill_counters", "pg_kill"
    total = 10_000
    await counters(database, table)
    cluster.apply(trigger(name, database, [table]), platform.namespace)
    seen = Seen(platform.out / table)
    bridge = BridgeProcess(cluster, platform.namespace, name, gateway_url=platform.url, log_dir=tmp_path)
    with bridge:
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot),
            bool,
            what="the slot created",
            timeout=60,
        )
        await seed(database, table)
        await database.transactions(updates(total, table))

        async def progress() -> tuple[int, int]:
            return await seen.count(), await database.confirmed_lsn(slot)

        start = await database.confirmed_lsn(slot)
        await wait_for(
            progress,
            lambda p: p[0] >= 2000 and p[1] > start,
            what="2,000 changes seen and a confirmed LSN",
            timeout=120,
            interval=0.2,
        )
        bridge.kill()
        confirmed = await database.confirmed_lsn(slot)
        bridge.start()
        await wait_for(
            seen.count,
            lambda n: (
                len({r["dynamodb"]["SequenceNumber"] for r in seen.records()}) >= total + KEYS
                or not bridge.alive()
            ),
            what=f"{total + KEYS} changes seen after the restart",
            timeout=180,
            interval=0.5,
        )
        assert bridge.alive(), bridge.log()[-3000:]
    records = seen.records()
    counts = Counter(r["dynamodb"]["SequenceNumber"] for r in records)
    assert len(counts) == total + KEYS, "changes lost"
    assert max(counts.values()) <= 2
    replayed = [r for r in records if counts[r["dynamodb"]["SequenceNumber"]] == 2]
    early = [r["dynamodb"]["SequenceNumber"] for r in replayed if commit_lsn(r) < confirmed]
    assert not early, f"replayed before the confirmed LSN {confirmed}: {early[:5]}"
    check_commit_order(records)


async def test_a_dropped_replication_connection_loses_and_repeats_nothing(
    database: Database, platform: Platform, cluster: Cluster
) -> None:
    """The server ends the bridge's walsender mid-run (pg_terminate_backend): the bridge reconnects, the server
    sends again what was not confirmed, and what the bridge had handed out already is not delivered twice."""
    name, table, slot = "pg-drop", "drop_counters", "pg_drop"
    total = 3000
    await counters(database, table)
    cluster.apply(trigger(name, database, [table]), platform.namespace)
    seen = Seen(platform.out / table)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot),
            lambda rows: bool(rows) or bridge.done(),
            what="the slot created",
            timeout=60,
        )
        await seed(database, table)
        await database.transactions(updates(total, table))
        await wait_for(seen.count, lambda n: n >= 500, what="500 changes seen", timeout=120, interval=0.2)
        (killed,) = await database.query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", slot
        )
        assert killed == (True,)
        await wait_for(
            seen.count,
            lambda n: n >= total + KEYS or bridge.done(),
            what=f"{total + KEYS} changes seen",
            timeout=180,
            interval=0.5,
        )
        assert not bridge.done(), bridge.exception()
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    records = seen.records()
    counts = Counter(r["dynamodb"]["SequenceNumber"] for r in records)
    assert len(counts) == total + KEYS
    assert max(counts.values()) == 1, "duplicates after the reconnect"
    check_commit_order(records)


async def test_a_transaction_touching_several_rows_and_a_toasted_value(
    database: Database, platform: Platform, cluster: Cluster
) -> None:
    name, slot = "pg-txn", "pg_txn"
    await database.run(
        "CREATE TABLE txn_a (id int PRIMARY KEY, big text, note text)",
        "ALTER TABLE txn_a REPLICA IDENTITY FULL",
        "CREATE TABLE txn_b (region text, id int, qty numeric, tags text[], doc jsonb, raw bytea, ok bool, "
        "PRIMARY KEY (region, id))",
        "ALTER TABLE txn_b REPLICA IDENTITY FULL",
    )
    cluster.apply(trigger(name, database, ["txn_a", "public.txn_b"]), platform.namespace)
    # Random letters do not compress: 300 kB is stored out of line (TOAST).
    big = "".join(random.Random(3).choices(string.ascii_letters, k=300_000))
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    seen = Seen(platform.out / "txn_a")
    try:
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot),
            lambda rows: bool(rows) or bridge.done(),
            what="the slot created",
            timeout=60,
        )
        await database.transactions(
            [
                [
                    ("INSERT INTO txn_a VALUES (1, %s, 'first')", (big,)),
                    "INSERT INTO txn_b VALUES ('eu', 1, 2.50, '{a,\"b c\",NULL}', "
                    "'{\"x\": [1, 2.5, true, null, \"s\"]}', '\\x00ff', true)",
                    "UPDATE txn_b SET qty = 3 WHERE region = 'eu' AND id = 1",
                    "DELETE FROM txn_b WHERE region = 'eu' AND id = 1",
                ],
                # The TOASTed column is unchanged here: its value comes from the old row (REPLICA IDENTITY FULL).
                ["UPDATE txn_a SET note = 'second' WHERE id = 1"],
            ]
        )
        await wait_for(seen.count, lambda n: n >= 5 or bridge.done(), what="5 changes seen", timeout=60)
        assert not bridge.done(), bridge.exception()
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    events = seen.events()
    records = [r for e in events for r in e["Records"]]
    assert [r["eventName"] for r in records] == ["INSERT", "INSERT", "MODIFY", "REMOVE", "MODIFY"]
    # The first transaction's four changes: one commit LSN, in statement order, in one event.
    first = records[:4]
    assert len({commit_lsn(r) for r in first}) == 1
    assert [r["dynamodb"]["SequenceNumber"][20:] for r in first] == [
        "00000000",
        "00000001",
        "00000002",
        "00000003",
    ]
    assert any(len(e["Records"]) >= 4 for e in events)
    assert commit_lsn(records[4]) > commit_lsn(records[0])
    assert records[1]["eventSourceARN"].endswith("table/public.txn_b/stream/pg_txn")
    assert records[0]["dynamodb"]["NewImage"]["big"] == {"S": big}
    assert records[4]["dynamodb"]["NewImage"]["big"] == {"S": big}
    assert records[4]["dynamodb"]["OldImage"]["note"] == {"S": "first"}
    assert records[4]["dynamodb"]["NewImage"]["note"] == {"S": "second"}
    b = records[1]["dynamodb"]
    assert b["Keys"] == {"region": {"S": "eu"}, "id": {"N": "1"}}
    assert b["NewImage"]["qty"] == {"N": "2.50"}
    assert b["NewImage"]["tags"] == {"L": [{"S": "a"}, {"S": "b c"}, {"NULL": True}]}
    assert b["NewImage"]["doc"] == {
        "M": {"x": {"L": [{"N": "1"}, {"N": "2.5"}, {"BOOL": True}, {"NULL": True}, {"S": "s"}]}}
    }
    assert b["NewImage"]["raw"] == {"B": "AP8="}
    assert b["NewImage"]["ok"] == {"BOOL": True}
    assert "OldImage" not in b
    assert records[2]["dynamodb"]["OldImage"]["qty"] == {"N": "2.50"}
    assert "NewImage" not in records[3]["dynamodb"]
    assert records[3]["dynamodb"]["Keys"] == {"region": {"S": "eu"}, "id": {"N": "1"}}
    parsed = DynamoDBStreamEvent({"Records": records})
    recs = list(parsed.records)
    assert recs[1].dynamodb is not None
    assert recs[1].dynamodb.new_image["doc"] == {"x": [1, 2.5, True, None, "s"]}
    assert recs[1].dynamodb.keys == {"region": "eu", "id": 1}


async def test_a_poison_change_is_bisected_out_to_the_failure_destination(
    database: Database, platform: Platform, cluster: Cluster, records: Records
) -> None:
    name, table, slot = "pg-poison", "poison_rows", "pg_poison"
    await database.run(f"CREATE TABLE {table} (k text PRIMARY KEY, n int NOT NULL, note text)")
    key = f"{platform.namespace}-{name}"
    cluster.apply(
        trigger(
            name,
            database,
            [table],
            postgres={"streamViewType": "NEW_IMAGE"},
            bisectBatchOnFunctionError=True,
            maximumRetryAttempts=1,
            onFailure={"url": records.url(key)},
        ),
        platform.namespace,
    )
    seen = Seen(platform.out / table)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot),
            lambda rows: bool(rows) or bridge.done(),
            what="the slot created",
            timeout=60,
        )
        await database.transactions(
            [
                [
                    (
                        f"INSERT INTO {table} VALUES (%s, %s, %s)",
                        (f"r{i}", i, "poison" if i == 30 else None),
                    )
                    for i in range(60)
                ]
            ]
        )
        (failure,) = await records.wait(key, timeout=120)
        await wait_for(seen.count, lambda n: n >= 59, what="59 changes seen", timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    info = failure["DDBStreamBatchInfo"]
    assert info["batchSize"] == 1
    assert info["startSequenceNumber"] == info["endSequenceNumber"]
    assert info["streamArn"].endswith(f"slot/{slot}")
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    got = sorted(n_of(r) for r in seen.records())
    assert got == [i for i in range(60) if i != 30]
    assert {r["dynamodb"]["StreamViewType"] for r in seen.records()} == {"NEW_IMAGE"}
    assert len(records.of(key)) == 1


async def test_a_failure_destination_queue_takes_its_credentials_from_a_secret(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient, tmp_path: Path
) -> None:
    """``onFailure.queue.redis`` on a Redis that requires a password: the URL has none, the Secret named by
    ``credentialsSecret`` has it; the discarded change arrives there once."""
    name, table = "pg-creds", "creds_rows"
    await database.run(f"CREATE TABLE {table} (k text PRIMARY KEY, n int NOT NULL, note text)")
    async with RedisServer(tmp_path / "redis") as server:
        admin = aioredis.from_url(server.url)
        await admin.config_set("requirepass", "s3cret-pw")
        await admin.aclose()
        await kube.create(
            resource_path("v1", "secrets", namespace=platform.namespace),
            {"metadata": {"name": "failure-redis"}, "stringData": {"password": "s3cret-pw"}},
        )
        failures = {"redis": {"url": server.url, "key": "failures", "credentialsSecret": "failure-redis"}}
        cluster.apply(
            trigger(
                name,
                database,
                [table],
                postgres={"streamViewType": "NEW_IMAGE"},
                maximumRetryAttempts=0,
                onFailure={"queue": failures},
            ),
            platform.namespace,
        )
        stop = asyncio.Event()
        bridge = asyncio.create_task(
            run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop)
        )
        reader = aioredis.from_url(server.url, password="s3cret-pw")
        try:
            await wait_for(
                lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pg_creds'"),
                lambda rows: bool(rows) or bridge.done(),
                what="the slot created",
                timeout=60,
            )
            await database.run((f"INSERT INTO {table} VALUES (%s, %s, %s)", ("p", 1, "poison")))
            entries = await wait_for(
                lambda: reader.xrange("failures"),
                lambda got: bool(got) or bridge.done(),
                what="the failure record in the Redis stream",
                timeout=120,
            )
        finally:
            stop.set()
            await asyncio.wait_for(bridge, 60)
            await reader.aclose()
    ((_, fields),) = entries
    record = json.loads(fields[b"data"])
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["DDBStreamBatchInfo"]["batchSize"] == 1


async def test_a_table_without_a_primary_key_is_a_clear_error(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    name = "pg-nokey"
    await database.run("CREATE TABLE nokey (a int)")
    cluster.apply(trigger(name, database, ["nokey"]), platform.namespace)
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        body = await wait_for(
            lambda: kube.get(trigger_path(platform, name)),
            lambda b: any(
                c["type"] == "SourceReachable" and c["status"] == "False"
                for c in (b.get("status") or {}).get("conditions", [])
            ),
            what="SourceReachable False",
            timeout=60,
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bridge, 60)
    (cond,) = [c for c in body["status"]["conditions"] if c["type"] == "SourceReachable"]
    assert "public.nokey has no primary key" in cond["message"]
    # Nothing was created for a Trigger that cannot run.
    assert not await database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pg_nokey'")


async def test_a_deleted_trigger_drops_the_slot_and_publication_its_bridge_created_and_nothing_else(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    """``pg-owned``'s bridge creates its slot and publication; ``pg-found`` streams a slot and a publication made
    by hand. A bridge stopped while its Trigger exists drops nothing; a restarted one knows what it created (the
    checkpoint ConfigMap); once the Triggers are deleted, their stopping bridges drop only what they created."""
    table = "owned_counters"
    await counters(database, table)
    await database.run(
        f"CREATE PUBLICATION pg_found FOR TABLE {table}",
        "SELECT pg_create_logical_replication_slot('pg_found', 'pgoutput')",
    )
    ns = platform.namespace
    cluster.apply(trigger("pg-owned", database, [table]), ns)
    cluster.apply(trigger("pg-found", database, [table]), ns)

    async def objects() -> set[str]:
        slots = await database.query(
            "SELECT 'slot ' || slot_name || CASE WHEN active THEN ' active' ELSE '' END FROM pg_replication_slots"
        )
        publications = await database.query("SELECT 'publication ' || pubname FROM pg_publication")
        return {r[0] for r in slots + publications}

    def start(name: str) -> tuple[asyncio.Event, asyncio.Task[bool]]:
        stop = asyncio.Event()
        return stop, asyncio.create_task(run_bridge(ns, name, settings(platform, cluster), stop=stop))

    async def stopped(bridge: tuple[asyncio.Event, asyncio.Task[bool]]) -> None:
        bridge[0].set()
        assert await asyncio.wait_for(bridge[1], 60)

    running = {"slot pg_owned active", "slot pg_found active", "publication pg_owned", "publication pg_found"}
    owned, found = start("pg-owned"), start("pg-found")
    try:
        await wait_for(objects, lambda o: running <= o, what="both slots in use", timeout=60)
    finally:
        await stopped(owned)
    assert {"slot pg_owned", "publication pg_owned"} <= await objects(), "dropped while its Trigger exists"
    owned = start("pg-owned")
    try:
        await wait_for(objects, lambda o: running <= o, what="both slots in use again", timeout=60)
        for name in ("pg-owned", "pg-found"):
            await kube.delete(trigger_path(platform, name))
    finally:
        await stopped(owned)
        await stopped(found)
    left = {o.removesuffix(" active") for o in await objects()}
    assert not {"slot pg_owned", "publication pg_owned"} & left, left
    assert {"slot pg_found", "publication pg_found"} <= left, left


async def test_a_trigger_deleted_while_its_bridge_is_down_stays_until_the_bridge_dropped_its_slot(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient, tmp_path: Path
) -> None:
    """The bridge puts its finalizer on the Trigger before creating the slot and publication. SIGKILLed, then the
    Trigger disabled and deleted: the Trigger stays (and so its bridge's Deployment, which would start the bridge
    again), with the slot and the publication; the bridge started again drops both and releases the Trigger."""
    name, table = "pg-down", "down_counters"
    await counters(database, table)
    cluster.apply(trigger(name, database, [table]), platform.namespace)
    path = trigger_path(platform, name)

    async def objects() -> set[str]:
        slots = await database.query("SELECT 'slot ' || slot_name FROM pg_replication_slots")
        publications = await database.query("SELECT 'publication ' || pubname FROM pg_publication")
        return {r[0] for r in slots + publications}

    ours = {"slot pg_down", "publication pg_down"}
    bridge = BridgeProcess(cluster, platform.namespace, name, gateway_url=platform.url, log_dir=tmp_path)
    with bridge:
        await wait_for(objects, lambda o: ours <= o, what="the slot and publication created", timeout=60)
        assert CLEANUP_FINALIZER in (await kube.get(path))["metadata"]["finalizers"]
        bridge.kill()
    await kube.patch(path, {"spec": {"enabled": False}})  # disabled too: its bridge would run no pod
    await kube.delete(path)
    held = await kube.get(path)
    assert held["metadata"]["deletionTimestamp"]
    assert CLEANUP_FINALIZER in held["metadata"]["finalizers"]
    assert bridge_to_wake(held), "the operator would not start the bridge of this disabled Trigger"
    assert ours <= await objects(), "dropped with no bridge running"

    stop = asyncio.Event()
    again = asyncio.create_task(run_bridge(platform.namespace, name, settings(platform, cluster), stop=stop))
    try:
        await wait_for(
            lambda: kube.get_or_none(path), lambda t: t is None, what="the Trigger gone", timeout=60
        )
        assert not ours & await objects()
    finally:
        stop.set()
        assert await asyncio.wait_for(again, 60)


async def test_the_orders_table_example_is_accepted_by_the_api_server(
    platform: Platform, cluster: Cluster
) -> None:
    folder = REPO / "examples" / "orders-table"
    for name in ("function.yaml", "trigger.yaml"):
        cluster.kubectl("apply", "--dry-run=server", "-n", platform.namespace, "-f", str(folder / name))


async def test_the_orders_table_example_end_to_end(
    database: Database, platform: Platform, cluster: Cluster, kube: KubeClient
) -> None:
    """examples/orders-table (URLs pointed at the test's servers): the table's changes reach order-events, which
    publishes them on the topic; order-audit gets every change, order-mailer only new orders over 100."""
    docs = example(platform.nats_url, platform.out)
    trig = docs[("Trigger", "orders-changes")]
    del trig["spec"]["stream"]["postgres"]["credentialsSecret"]
    trig["spec"]["stream"]["postgres"]["url"] = database.server.url
    trig["spec"]["stream"]["postgres"]["slot"] = "example_orders"
    await database.run(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL, "
        "status text NOT NULL)",
        "ALTER TABLE orders REPLICA IDENTITY FULL",
    )
    names = ["orders-changes", "orders-audit", "orders-mailer"]
    for name in names:
        cluster.apply(docs[("Trigger", name)], platform.namespace)
    stop = asyncio.Event()
    bridges = [
        asyncio.create_task(run_bridge(platform.namespace, n, settings(platform, cluster), stop=stop))
        for n in names
    ]
    audit, mailer = Seen(platform.out / "order-audit"), Seen(platform.out / "order-mailer")
    try:
        await wait_for(
            lambda: database.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'example_orders'"),
            lambda rows: bool(rows) or any(b.done() for b in bridges),
            what="the slot created",
            timeout=60,
        )
        for name in ("orders-audit", "orders-mailer"):
            await wait_for(
                lambda name=name: kube.get(trigger_path(platform, name)),  # type: ignore[misc]
                lambda b: any(
                    c["type"] == "SourceReachable" and "subscribed" in c.get("message", "")
                    for c in (b.get("status") or {}).get("conditions", [])
                ),
                what=f"{name} subscribed",
                timeout=60,
            )
        await database.transactions(
            [
                ["INSERT INTO orders VALUES (1, 'ann', 120, 'new')"],
                ["INSERT INTO orders VALUES (2, 'bob', 20, 'new')"],
                ["UPDATE orders SET status = 'paid' WHERE id = 1"],
                ["DELETE FROM orders WHERE id = 2"],
            ]
        )

        async def counts() -> tuple[int, int]:
            return len(audit.events()), len(mailer.events())

        await wait_for(
            counts,
            lambda c: (c[0] >= 4 and c[1] >= 1) or any(b.done() for b in bridges),
            what="4 audited changes and 1 mail",
            timeout=120,
            interval=0.5,
        )
        assert not any(b.done() for b in bridges)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*bridges, return_exceptions=True), 60)
    audited = sorted(
        (e["Records"][0]["Sns"]["MessageId"], json.loads(e["Records"][0]["Sns"]["Message"]))
        for e in audit.events()
    )
    assert [m["change"] for _, m in audited] == ["INSERT", "INSERT", "MODIFY", "REMOVE"]
    assert audited[2][1]["order"] == {"id": 1.0, "customer": "ann", "amount": 120.0, "status": "paid"}
    (mail,) = mailer.events()
    sns = mail["Records"][0]["Sns"]
    assert json.loads(sns["Message"])["order"]["customer"] == "ann"
    assert sns["MessageAttributes"]["amount"] == {"Type": "Number", "Value": "120.0"}
    assert sns["MessageAttributes"]["eventName"] == {"Type": "String", "Value": "INSERT"}
