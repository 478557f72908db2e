"""Benchmark of the PostgreSQL change stream (issue 22): row changes/s through one database bridge, beside the
driver's own logical-replication read rate in the same run, and commit → function start latency.

1. **ceiling**: psycopg2's replication protocol reading the same N changes from a slot of its own with
   ``pgoutput`` (``read_message`` in a loop, no decoding): the rate the bridge's driver can read at;
2. **bridge**: the Trigger's bridge as the operator runs it (a pod of the local cluster), invoking a no-op
   Python function through the gateway, at batchSize 100 and 1,000 with parallelizationFactor 1, 4 and 10 (Lambda
   allows 1 to 10; a user who wants one shard's throughput sets more than the default 1). The slots exist before
   the N rows are written (inserts of 100 rows per transaction); the Trigger is created disabled, then enabled,
   and the rate is counted from the first change delivered to the last (the bridge's
   ``kubelambda_bridge_events_total``). Beside it, the CPU µs per change of each process over the whole run: the
   driver and its walsender for the ceiling; the bridge (from when it reads its slot, after its start-up), its
   walsender, the gateway, the function pods' agents and their runtimes (runtime client + handler).

   The no-op function has one full vCPU by default (``--function-mb 1769``, Lambda's 1,769 MB): a function's CPU
   limit is memoryMB / 1769 cores, and at 128 MB (73m, a CFS quota of 7.3 ms per 100 ms) one 527 KB batch of
   1,000 costs its pod more CPU than a period gives, so the function's limit, not the bridge, bounds the rate
   (``--function-mb 128`` shows it);
3. **latency**: with a bridge caught up, 200 single-row transactions 20 ms apart; the function notes, when it
   starts, the time since the row's ``clock_timestamp()`` (its commit, within a millisecond): p50 and p95.

Figures only, never assertions. Run: ``make bench-postgres`` (or ``.venv/bin/python bench/postgres_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import itertools
import json
import re
import select
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg2
import psycopg2.extras

from _common import (
    create_function_ready,
    create_namespace,
    developer_headers,
    function_cpu,
    gateway_cpu,
    load_average,
    print_platform_logs,
    py_spy,
    py_spy_binary,
    start_cluster,
    stop_spies,
    tree_cpu,
    wait,
    warm_function,
)
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster.servers import PostgresServer
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.deployment import MB_PER_VCPU
from stream_bench import (
    GROUP_VERSION,
    NS,
    bridge_metrics,
    bridge_process,
    bridge_rate,
    cpu_seconds,
    trigger,
)

POLL_SECONDS = 0.1
"""How often the bridge pod's /metrics is read while it runs (each read costs the bridge CPU)."""
NOOP = "def handler(event, context):\n    return {}\n"
TRACE = """
import time


def handler(event, context):
    return {"start": time.time(), "records": len(event["Records"])}
"""
TRACE_CALLS = 20
TRACE_FUNCTIONS = (("trace", 128), ("trace-vcpu", MB_PER_VCPU))
"""The trace's functions, name and memoryMB: Lambda's smallest (CPU limit 73m: 7.3 ms of CPU per 100 ms CFS
period) and one whole vCPU, so that the wait a CPU limit adds shows beside the same path without it."""
STAMP = """
import json
import os
import time


def handler(event, context):
    now = time.time()
    lines = "".join("%f\\n" % (now - float(r["dynamodb"]["NewImage"]["t"]["N"])) for r in event["Records"])
    with open(os.environ["OUT"], "a") as f:
        f.write(lines)
    return {}
"""


BATCHES = (100, 1000)
FACTORS = (1, 4, 10)
"""Each round's Triggers: every batchSize with every parallelizationFactor (Lambda allows 1 to 10; 1 is its
default, a user who wants throughput from one shard sets more). The no-op function takes as many concurrent
invocations as the largest factor, so that no factor's batches wait for a free worker."""


class Postgres:
    kind = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def sql(self, *statements: str) -> None:
        conn = psycopg2.connect(self.server.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
        finally:
            conn.close()

    def prepare(self, table: str, *, slots: list[str]) -> None:
        self.sql(
            f"CREATE TABLE {table} (id int PRIMARY KEY, t double precision NOT NULL, pad text NOT NULL)",
            f"CREATE PUBLICATION {table}_pub FOR TABLE {table}",
            *(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')" for slot in slots),
        )

    def publish(self, table: str, n: int) -> None:
        conn = psycopg2.connect(self.server.url)
        try:
            with conn.cursor() as cur:
                for start in range(0, n, 100):
                    psycopg2.extras.execute_values(
                        cur,
                        f"INSERT INTO {table} VALUES %s",
                        [(i, 0.0, "x" * 64) for i in range(start, min(n, start + 100))],
                    )
                    conn.commit()
        finally:
            conn.close()

    def ceiling(self, table: str, slot: str, n: int) -> tuple[float, float, list[bytes]]:
        """The driver's read rate, the CPU µs per change of the server's walsender that sent the changes, and the
        messages read (for :func:`stages`)."""
        conn = psycopg2.connect(
            self.server.url, connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
        try:
            walsender = psutil.Process(conn.info.backend_pid)
            sent = tree_cpu(walsender, children=False)
            cur = conn.cursor()
            cur.start_replication(
                slot_name=slot,
                decode=False,
                options={"proto_version": "1", "publication_names": f"{table}_pub"},
            )
            got = 0
            payloads: list[bytes] = []
            started = time.perf_counter()
            while got < n:
                msg = cur.read_message()
                if msg is None:
                    select.select([cur], [], [], 1.0)
                    continue
                payloads.append(msg.payload)
                if msg.payload[:1] == b"I":
                    got += 1
                    if got % 1000 == 0:
                        cur.send_feedback(flush_lsn=msg.data_start)
            rate = n / (time.perf_counter() - started)
            return rate, 1e6 * (tree_cpu(walsender, children=False) - sent) / n, payloads
        finally:
            conn.close()

    def walsender(self, slot: str) -> int | None:
        """The pid of the walsender streaming ``slot`` (None while no one reads it)."""
        conn = psycopg2.connect(self.server.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                row = cur.fetchone()
                return None if row is None else row[0]
        finally:
            conn.close()

    async def reading(self, name: str, slot: str) -> tuple[psutil.Process, psutil.Process, float, float]:
        """Once the bridge of Trigger ``name`` streams ``slot`` (its start-up, imports and checks, done): its
        process, the slot's walsender, and the CPU seconds of each so far."""
        for _ in range(6000):  # 5 minutes: the bridge's pod starts in seconds
            pid = await asyncio.to_thread(self.walsender, slot)
            bridge = bridge_process(name)
            if pid is not None and bridge is not None:
                walsender = psutil.Process(pid)
                return bridge, walsender, cpu_seconds(bridge), tree_cpu(walsender, children=False)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no bridge read slot {slot} within 5 minutes")

    def spec(self, name: str) -> dict[str, Any]:
        table = name.replace("-", "_")
        return {
            "postgres": {
                "url": self.server.url,
                "tables": [table],
                "slot": f"{table}_bridge",
                "publication": f"{table}_pub",
                "streamViewType": "NEW_IMAGE",
            }
        }


async def shaped_rate(kube: KubeClient, server: PostgresServer, table: str, slot: str, n: int) -> float:
    """The bridge's own reading pipeline in this process (psycopg2 read, pgoutput decoding, DynamoDB records),
    without invoking anything: what one bridge can read and shape at."""
    import types

    from kubelambda.api.v1alpha1 import Trigger
    from kubelambda.bridge.streams._core import CheckpointStore
    from kubelambda.bridge.streams.postgres import _PostgresClient

    class Nowhere:
        name = "bench"

        async def load(self) -> dict[str, str]:
            return {}

        async def save(self, data: Any) -> None:
            return None

    spec = {
        "url": server.url,
        "tables": [table],
        "slot": slot,
        "publication": f"{table}_pub",
        "streamViewType": "NEW_IMAGE",
    }
    ctx: Any = types.SimpleNamespace(
        trigger=Trigger.model_validate({"spec": {"function": "f", "stream": {"postgres": spec}}}),
        namespace=NS,
        name="bench",
        region="us-east-1",
        secrets=None,
        kube=kube,  # no Trigger "bench": the finalizer has nothing to go on
        trigger_meta={},
    )
    client = _PostgresClient(ctx, CheckpointStore(Nowhere(), interval=1))  # type: ignore[arg-type]
    await client.start()
    try:
        reader = await client.reader("shardId-000000000000")
        got = 0
        started = time.perf_counter()
        while got < n:
            got += len(await reader.read(1000))
        return n / (time.perf_counter() - started)
    finally:
        await client.close()


def runtime_decoder() -> Callable[[bytes], Any]:
    """The local Python runtime's event decoder (``bootstrap.EventDecoder`` of ``python_runtime_dir()``, with its
    private orjson), loaded from its file as the agent starts it."""
    from kubelambda.runtimes import python_runtime_dir

    path = python_runtime_dir() / "bootstrap.py"
    spec = importlib.util.spec_from_file_location("kubelambda_bench_bootstrap", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decoder: Callable[[bytes], Any] = module.EventDecoder(module.vendor_folder())
    return decoder


def stages(payloads: list[bytes], table: str, batch: int) -> tuple[dict[str, float], bytes]:
    """CPU ms per batch of ``batch`` changes of each stage of the bridge's pipeline, run alone in this process on
    the messages the ceiling read, as the bridge's reader runs them: pgoutput decoding and shaping DynamoDB records
    (natively: kubelambda._native; the other messages in Python), the StreamRecord objects, the event's encoding,
    and the function side's decode of the event (the Python runtime's own ``EventDecoder``: orjson from its private
    folder for large events, json.loads otherwise, as before calling the handler); and the first batch's event as the
    bridge sends it."""
    from kubelambda import _native
    from kubelambda.bridge.streams._batch import StreamRecord
    from kubelambda.bridge.streams._pgoutput import Begin, Commit, DecodeError, Decoder, Relation
    from kubelambda.bridge.streams.postgres import ROW_CHANGES, PostgresStream

    decoder = Decoder()
    shaper = _native.Shaper(
        view_type="NEW_IMAGE", region="us-east-1", namespace=NS, slot=table, error=DecodeError
    )
    clock = time.process_time
    shaped: list[tuple[str, str, bytes]] = []
    begin = 0
    t0 = clock()
    for payload in payloads:
        if payload[:1] in ROW_CHANGES:
            shaper.change(payload)
            continue
        event = decoder.feed(payload)
        if isinstance(event, Relation):
            shaper.relation(event.oid, event.qualified, [(c.name, c.type_oid) for c in event.columns], ["id"])
        elif isinstance(event, Begin):
            begin = event.final_lsn
        elif isinstance(event, Commit):
            shaped += shaper.commit(begin, event.timestamp)
    t1 = clock()
    records = [
        StreamRecord("s", sequence, partition, data, 0.0, i)
        for i, (sequence, partition, data) in enumerate(shaped)
    ]
    t2 = clock()
    encode = PostgresStream.encode
    events = [encode(None, records[i : i + batch]) for i in range(0, len(records), batch)]  # type: ignore[arg-type]
    t3 = clock()
    decode_event = runtime_decoder()
    decode_event(events[0])  # orjson is imported at the first large event, once per runtime process
    t3 = clock()
    for body in events:
        decode_event(body)
    t4 = clock()
    per_batch = 1e3 * batch / len(records)
    return {
        "decode+shape": (t1 - t0) * per_batch,
        "records": (t2 - t1) * per_batch,
        "encode": (t3 - t2) * per_batch,
        "runtime decode": (t4 - t3) * per_batch,
        "event KB": len(events[0]) / 1024,
    }, events[0]


def cpu_throttling(serve: psutil.Process) -> tuple[int, float]:
    """CFS periods in which the local cluster's function pods were throttled so far, and for how long (ms), summed
    over the CPU cgroups of their agents (cgroup v1 ``cpu.stat``'s ``nr_throttled``/``throttled_time`` in ns, v2's
    ``nr_throttled``/``throttled_usec``); (0, 0.0) where the node enforces no CPU limits."""
    seen: set[Path] = set()
    periods, ms = 0, 0.0
    with contextlib.suppress(psutil.Error):
        for proc in serve.children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                if not any("kubelambda-agent" in part for part in proc.cmdline()[:1]):
                    continue
                for line in Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines():
                    _, controllers, path = line.split(":", 2)
                    if "cpu" in controllers.split(","):
                        stat = Path(f"/sys/fs/cgroup/{controllers}{path}/cpu.stat")
                    elif controllers == "":
                        stat = Path(f"/sys/fs/cgroup{path}/cpu.stat")
                    else:
                        continue
                    if stat in seen or not stat.exists():
                        continue
                    seen.add(stat)
                    values = dict(row.split() for row in stat.read_text().splitlines())
                    periods += int(values.get("nr_throttled", 0))
                    if "throttled_time" in values:
                        ms += int(values["throttled_time"]) / 1e6
                    else:
                        ms += int(values.get("throttled_usec", 0)) / 1e3
    return periods, ms


async def trace(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    event: bytes,
    serve: psutil.Process,
    label: str,
) -> str:
    """One batch's event sent ``TRACE_CALLS`` times, one at a time, from this process the way the bridge sends
    it (POST to the gateway's Invoke API) to a function that answers the time its handler started: where the
    wall time of a round trip goes (send → handler start: the body to the gateway, its read and JSON check, the
    forward, the agent, the runtime's receive and ``json.loads``; handler start → answer: the way back), p50
    and min (the min is what a free CPU gives), beside the CPU ms per call of the gateway and the function pods,
    the function pods' CFS throttling per call (their CPU limit: memoryMB / 1769 cores) and the load average.
    The clocks are this machine's one clock."""
    rows: list[tuple[float, float, float]] = []
    cpu = (gateway_cpu(serve), function_cpu(serve), process_cpu())
    throttled = cpu_throttling(serve)
    for _ in range(TRACE_CALLS):
        sent = time.time()
        async with http.post(url, data=event, headers=headers) as resp:
            answer = json.loads(await resp.read())
        back = time.time()
        if resp.status != 200 or "start" not in answer:
            raise RuntimeError(f"the trace function answered {resp.status}: {answer}")
        rows.append((1e3 * (answer["start"] - sent), 1e3 * (back - answer["start"]), 1e3 * (back - sent)))
    gateway, function, client = (
        1e3 * (now - then) / TRACE_CALLS
        for now, then in zip((gateway_cpu(serve), function_cpu(serve), process_cpu()), cpu, strict=True)
    )
    periods, throttled_ms = (
        (now - then) / TRACE_CALLS for now, then in zip(cpu_throttling(serve), throttled, strict=True)
    )
    walls = ", ".join(
        f"{what} p50 {statistics.median(r[k] for r in rows):.0f} ms (min {min(r[k] for r in rows):.0f})"
        for k, what in enumerate(("send → handler start", "handler start → answer back", "round trip"))
    )
    return (
        f"    trace ({label}), this batch's event sent {TRACE_CALLS} times one at a time ({load_average()}): {walls};"
        f" CPU ms per call: gateway {gateway:.1f}, function pods {function:.1f}, sender {client:.1f};"
        f" function pods throttled per call: {periods:.1f} CFS periods, {throttled_ms:.0f} ms"
    )


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def process_cpu() -> float:
    """CPU seconds of this process so far (all threads: the ceiling's read runs in one)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def spy(name: str, serve: psutil.Process, directory: Path | None) -> None:
    """With ``--profile``: py-spy on the Trigger's bridge (its enabled revision's process, the newest) and on the
    gateway from when the bridge starts until cancelled; then the bridge's profile summed up."""
    if directory is None:
        return
    enabled = time.time()
    found = None
    for _ in range(6000):  # 5 minutes: the bridge's pod starts in seconds
        found = bridge_process(name)
        if found is not None and found.create_time() >= enabled - 1:
            break
        await asyncio.sleep(0.05)
    assert found is not None
    pids = {"bridge": found.pid}
    with contextlib.suppress(psutil.Error):
        pids.update(("gateway", c.pid) for c in serve.children() if "gateway" in c.cmdline())
    spies = [py_spy(pid, directory / f"{name}-{who}.txt") for who, pid in pids.items()]
    try:
        await asyncio.Event().wait()
    finally:
        stop_spies(spies)
        print(profile_summary(directory / f"{name}-bridge.txt"), flush=True)
        print(gateway_summary(directory / f"{name}-gateway.txt"), flush=True)


PARTS = [
    (
        "start-up",
        (
            "_find_and_load",
            "load_source (",
            "StreamBridge._connect (",
            "CheckpointStore.load (",
            "BaseSettings.__init__ (",
        ),
    ),
    ("/metrics", ("prometheus_client",)),
    ("Kubernetes API (checkpoint ConfigMap, deletion poll)", ("kubelambda/kube", "CheckpointStore")),
    ("slot feedback (confirmed LSN)", ("_Reader.commit", "send_feedback")),
    ("event encode", ("PostgresStream.encode",)),
    ("pgoutput decode + DynamoDB records", ("_pgoutput.py",)),
    ("invoke (HTTP request and answer)", ("Invoker.invoke", "aiohttp/", "kubelambda/plainhttp.py")),
    ("replication read, transaction buffer", ("postgres.py",)),
]
"""Where a bridge sample goes: the first part any of whose strings is in its stack."""


def profile_summary(path: Path) -> str:
    """A bridge's collapsed-stacks profile in :data:`PARTS` (start-up, left out of the shares: imports,
    settings, the checkpoint's load, the slot's checks), and its three busiest lines. py-spy counts a thread
    that is running or waiting for a core, so on a loaded machine the shares follow where the process waits
    for the CPU as well as where it spends it."""
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            part = next((p for p, marks in PARTS if any(m in stack for m in marks)), "shard loop and other")
            if stack.endswith(";Runner.run (asyncio/runners.py:118)"):
                part = "event loop (uvloop's C: sockets, timers)"
            parts[part] = parts.get(part, 0) + int(n)
            if part != PARTS[0][0]:
                leaf = re.sub(r" [(].*/", " (", stack.rsplit(";", 1)[-1])
                leaves[leaf] = leaves.get(leaf, 0) + int(n)
    startup = parts.pop(PARTS[0][0], 0)
    total = sum(parts.values())
    if not total:
        return f"    profile {path.name}: no samples after start-up"
    shares = ", ".join(f"{p} {100 * c / total:.0f} %" for p, c in sorted(parts.items(), key=lambda i: -i[1]))
    busiest = ", ".join(
        f"{f} {100 * c / total:.0f} %" for f, c in sorted(leaves.items(), key=lambda i: -i[1])[:3]
    )
    return (
        f"    bridge profile ({path.name}, {total} samples at 250/s after start-up's {startup}): {shares};"
        f" busiest lines: {busiest}"
    )


def gateway_summary(path: Path) -> str:
    """The gateway's own functions that most of its samples were in (inclusive: each counted once a sample)."""
    counts: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit():
                total += int(n)
                for frame in {f for f in stack.split(";") if "kubelambda/gateway/" in f}:
                    counts[frame] = counts.get(frame, 0) + int(n)
    shown = sorted(((c, f) for f, c in counts.items() if c < 0.9 * total), reverse=True)[:3]
    parts = ", ".join(f"{re.sub(r' [(].*/', ' (', f)} {100 * c / total:.0f} %" for c, f in shown)
    return f"    gateway profile ({path.name}, {total} samples): {parts or 'none of its own'}"


def print_spread(ratios: dict[str, list[tuple[float, float, float]]]) -> None:
    """Each configuration over the rounds: the bridge's share of the driver's rate, median and range."""
    for what, runs in ratios.items():
        shares = sorted(r[0] for r in runs)
        print(
            f"{what}: bridge / driver {statistics.median(shares):.0%} (median of {len(runs)}; "
            f"{shares[0]:.0%} to {shares[-1]:.0%}); bridge "
            + ", ".join(f"{r[1]:.0f}/s of {r[2]:.0f}/s" for r in runs),
            flush=True,
        )


async def deploy(
    kube: KubeClient, name: str, handler: str, env: dict[str, str], *, per_instance: int = 4, **spec: Any
) -> None:
    await create_function_ready(
        kube, warm_function(name, NS, handler, per_instance=per_instance, environment=env, **spec)
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--latency-rows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="every configuration, this many times over")
    parser.add_argument(
        "--batches", default=",".join(map(str, BATCHES)), help="the Triggers' batchSize values"
    )
    parser.add_argument(
        "--factors",
        default=",".join(map(str, FACTORS)),
        help="the Triggers' parallelizationFactor values (1 to 10)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy profiles (collapsed stacks) of each bridge and the gateway while they run, and print"
        " the bridge's largest parts",
    )
    parser.add_argument(
        "--function-mb",
        type=int,
        default=MB_PER_VCPU,
        help="memoryMB of the no-op function the bridge invokes (its CPU limit is memoryMB / 1769 cores). The"
        " default, one full core (Lambda's 1,769 MB), measures the bridge; at 128 (CPU limit 73m) a batch of 1,000"
        " needs more CPU than a 100 ms CFS period gives the function, and the function's limit bounds the rate",
    )
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    factors = [int(f) for f in args.factors.split(",")]
    if not all(1 <= f <= 10 for f in factors):
        parser.error(f"--factors {args.factors}: each parallelizationFactor must be 1 to 10")
    if args.profile is not None:
        py_spy_binary()  # before minutes of setup
    n = args.records
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-postgres-") as tmp:
        root = Path(tmp)
        out = root / "latency.txt"
        out.touch()
        out.chmod(0o666)
        proc, state = start_cluster(root)
        async with PostgresServer(root / "postgres") as server:
            pg = Postgres(server)
            try:
                async with (
                    KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                    aiohttp.ClientSession() as http,
                ):
                    await create_namespace(kube, NS, 180, tolerate_errors=True)
                    await deploy(kube, "noop", NOOP, {}, per_instance=max(factors), memoryMB=args.function_mb)
                    await deploy(kube, "stamp", STAMP, {"OUT": str(out)})
                    for trace_name, memory in TRACE_FUNCTIONS:
                        await deploy(kube, trace_name, TRACE, {}, memoryMB=memory)
                    assert state.gateway_url
                    trace_urls = {
                        f"{memory} MB function": f"{state.gateway_url}/2015-03-31/functions/{NS}/{trace_name}/invocations"
                        for trace_name, memory in TRACE_FUNCTIONS
                    }
                    headers = {**await developer_headers(state), "Content-Type": "application/json"}
                    print(
                        f"{n} row changes (INSERTs, 100 per transaction), no-op python3.11 function of"
                        f" {args.function_mb} MB ({args.function_mb / MB_PER_VCPU:.2f} cores), {max(factors)}"
                        f" concurrent; changes/s",
                        flush=True,
                    )
                    serve = psutil.Process(proc.pid)
                    samplers = {
                        "gateway": functools.partial(gateway_cpu, serve),
                        "agent": functools.partial(function_cpu, serve, "agent"),
                        "runtime + handler": functools.partial(function_cpu, serve, "runtime"),
                    }
                    ratios: dict[str, list[tuple[float, float, float]]] = {}
                    for round_ in range(1, args.rounds + 1):
                        print(f"round {round_} of {args.rounds}", flush=True)
                        for batch, lanes in itertools.product(batches, factors):
                            name = f"bench-b{batch}-f{lanes}-{round_}"
                            table = name.replace("-", "_")
                            slots = [f"{table}_ceiling", f"{table}_shaped", f"{table}_bridge"]
                            await asyncio.to_thread(pg.prepare, table, slots=slots)
                            await asyncio.to_thread(pg.publish, table, n)
                            cpu = process_cpu()
                            ceiling, ceiling_server_us, payloads = await asyncio.to_thread(
                                pg.ceiling, table, slots[0], n
                            )
                            ceiling_us = 1e6 * (process_cpu() - cpu) / n
                            stage, event = stages(payloads, table, batch)
                            cpu = process_cpu()
                            shaped = await shaped_rate(kube, server, table, slots[1], n)
                            shaped_us = 1e6 * (process_cpu() - cpu) / n
                            await kube.create(
                                resource_path(GROUP_VERSION, "triggers", namespace=NS),
                                trigger(
                                    name,
                                    pg,  # type: ignore[arg-type]
                                    function="noop",
                                    enabled=False,
                                    batch=batch,
                                    parallelization=lanes,
                                ),
                            )
                            spying = asyncio.create_task(spy(name, serve, args.profile))
                            throttled = cpu_throttling(serve)
                            before = {who: sample() for who, sample in samplers.items()}
                            reading = asyncio.create_task(pg.reading(name, slots[2]))
                            rate, cpu, _, _ = await bridge_rate(
                                kube,
                                http,
                                name,
                                pg,  # type: ignore[arg-type]
                                n,
                                interval=POLL_SECONDS,
                            )
                            throttled_ms = cpu_throttling(serve)[1] - throttled[1]
                            # CPU µs per change of each process over the whole run (the bridge's from when it
                            # reads the slot: after its start-up), not only between the first and last delivery.
                            bridge_proc, walsender, bridge_cpu, walsender_cpu = await reading
                            us = {
                                "bridge": 1e6 * (cpu_seconds(bridge_proc) - bridge_cpu) / n,
                                "its walsender": 1e6
                                * (tree_cpu(walsender, children=False) - walsender_cpu)
                                / n,
                                **{
                                    who: 1e6 * (sample() - before[who]) / n
                                    for who, sample in samplers.items()
                                },
                            }
                            spying.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await spying
                            ratios.setdefault(f"batch {batch}, factor {lanes}", []).append(
                                (rate / ceiling, rate, ceiling)
                            )
                            text = await bridge_metrics(kube, http, name) or ""
                            invokes = metric(text, "kubelambda_bridge_invoke_seconds_count")
                            invoke_ms = 1e3 * metric(text, "kubelambda_bridge_invoke_seconds_sum") / invokes
                            print(
                                f"batch {batch:>4}, parallelizationFactor {lanes:>2}: ceiling (psycopg2 read) {ceiling:>7.0f}"
                                f" ({ceiling_us:.1f} µs CPU/change), bridge read+decode+shape {shaped:>6.0f}"
                                f" ({shaped / ceiling:.0%}; {shaped_us:.1f} µs CPU/change), bridge end to end {rate:>6.0f}"
                                f" ({rate / ceiling:.0%}, bridge CPU {cpu:.0%} = {1e6 * cpu / rate:.1f} µs/change); {load_average()}",
                                flush=True,
                            )
                            per = batch / 1e3  # µs per change → ms per batch
                            print(
                                f"    per batch of {batch} ({stage['event KB']:.0f} KB event): wall {1e3 * batch / rate:.0f} ms"
                                f" end to end; {invokes:.0f} invocations, round trip {invoke_ms:.0f} ms (gateway → agent →"
                                f" runtime → handler → back), so {invoke_ms * rate / (1e3 * batch):.1f} in flight on average"
                                f" of the {lanes} allowed; CPU ms: bridge {us['bridge'] * per:.1f} (alone: decode+shape"
                                f" {stage['decode+shape']:.1f}, records {stage['records']:.1f}, encode {stage['encode']:.1f}),"
                                f" function pod {(us['agent'] + us['runtime + handler']) * per:.1f} (of it the"
                                f" event's decode {stage['runtime decode']:.1f}), gateway {us['gateway'] * per:.1f};"
                                f" function pods throttled {throttled_ms / (n / batch):.0f} ms per batch (no-op function"
                                f" {args.function_mb} MB: CPU limit {args.function_mb / MB_PER_VCPU:.3f} cores)",
                                flush=True,
                            )
                            print(
                                f"    CPU µs per change by process, whole run: driver {ceiling_us:.1f} + its walsender"
                                f" {ceiling_server_us:.1f} = {ceiling_us + ceiling_server_us:.1f};"
                                + ",".join(f" {who} {v:.1f}" for who, v in us.items())
                                + f" = {sum(us.values()):.1f} (the runtime's decode of the event, alone in this"
                                f" process: {1e3 * stage['runtime decode'] / batch:.1f})",
                                flush=True,
                            )
                            for label, trace_url in trace_urls.items() if round_ == 1 else ():
                                print(await trace(http, trace_url, headers, event, serve, label), flush=True)
                            await kube.patch(
                                resource_path(GROUP_VERSION, "triggers", namespace=NS, name=name),
                                {"spec": {"enabled": False}},
                            )

                    print_spread(ratios)

                    lat = "bench-lat"
                    await asyncio.to_thread(pg.prepare, "bench_lat", slots=["bench_lat_bridge"])
                    await kube.create(
                        resource_path(GROUP_VERSION, "triggers", namespace=NS),
                        trigger(lat, pg, function="stamp", enabled=True),  # type: ignore[arg-type]
                    )
                    await asyncio.sleep(
                        15
                    )  # the bridge pod up and reading (no change yet: nothing to wait for)
                    conn = psycopg2.connect(server.url)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        for i in range(args.latency_rows):
                            cur.execute(
                                "INSERT INTO bench_lat VALUES (%s, extract(epoch from clock_timestamp()), 'x')",
                                (i,),
                            )
                            await asyncio.sleep(0.02)
                    conn.close()
                    await wait(
                        lambda: asyncio.sleep(0, len(out.read_text().split())),
                        lambda c: c >= args.latency_rows,
                        "every latency noted",
                        120,
                    )
                    values = sorted(float(v) * 1000 for v in out.read_text().split())
                    q = statistics.quantiles(values, n=20)
                    print(
                        f"commit → function start, {len(values)} single-row transactions 20 ms apart: "
                        f"p50 {statistics.median(values):.0f} ms, p95 {q[18]:.0f} ms, max {values[-1]:.0f} ms"
                    )
            except BaseException:
                print_platform_logs(root)
                raise
            finally:
                with contextlib.suppress(Exception):
                    proc.terminate()
                    proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
