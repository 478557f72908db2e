"""Benchmark of the stream bridges (issue 9): records/s end to end per source to a no-op function.

For each source (Kafka, Redis Streams, NATS JetStream, Kinesis API via kinesalite), each batch size (100, 10)
and each of ``--rounds`` rounds (default 3; the table prints the median and range), in the same run:

1. **ceiling**: the broker's own consumer throughput, with the same client library the bridge uses, reading the
   same N records a batch at a time, as a consumer that handles each batch before reading on
   (Kafka: aiokafka ``getmany(max_records=batch)``; Redis: ``XREAD COUNT batch``; NATS: a pull consumer
   fetching a batch and acknowledging it (AckPolicy.ALL) like the bridge; Kinesis: aiobotocore
   ``GetRecords(Limit=batch)`` per shard in parallel);
2. **bridge**: the Trigger's bridge as the operator runs it (a pod of the local cluster, ``kubelambda bridge``),
   invoking a no-op Python function through the gateway with batches of that size. The Trigger is created
   disabled, the N records are published, then the Trigger is enabled; the rate is counted from the first record
   the bridge delivers to the last (its own ``kubelambda_bridge_events_total``), so pod start-up is left out.

The no-op function gets one full vCPU by default (``--function-mb 1769``, Lambda's 1,769 MB = 1 vCPU; its pod's
CPU limit is memoryMB / 1769 cores): at Lambda's smallest, 128 MB (``--function-mb 128``: 73m, 7.3 ms of CPU per
100 ms CFS period), the function's quota bounded the rate, not the bridge.

Figures only, never assertions. Run: ``make bench-streams`` (or ``.venv/bin/python bench/stream_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import psutil
import redis.asyncio as aioredis
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from _common import (
    add_bridge_bench_options,
    create_function_ready,
    create_namespace,
    function_cpu,
    gateway_cpu,
    load_average,
    print_platform_logs,
    spread,
    start_cluster,
    warm_function,
)
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster.servers import NatsServer, RedisServer
from kubelambda.devcluster.streamservers import KafkaServer, KinesisServer
from kubelambda.kube import KubeClient, resource_path

NS = "bench-streams"
FUNCTION = "noop"
SHARDS = 4
"""Partitions of a Kafka topic and shards of a Kinesis stream (``--shards``); the bridge runs one batch at a time
per partition (Lambda's ordering rule) and every partition at once, so the rate at a small batch grows with it."""
HANDLER = "def handler(event, context):\n    return {}\n"
GROUP_VERSION = "kubelambda.io/v1alpha1"


class Source:
    """One broker: create a stream of N records, read it as fast as its client can, name it in a Trigger."""

    kind = ""

    async def publish(self, name: str, n: int) -> None:
        raise NotImplementedError

    async def ceiling(self, name: str, n: int, batch: int) -> float:
        raise NotImplementedError

    def spec(self, name: str) -> dict[str, Any]:
        raise NotImplementedError


def data(i: int) -> bytes:
    return b'{"n": %d, "pad": "%s"}' % (i, b"x" * 64)


class Kafka(Source):
    kind = "kafka"

    def __init__(self, server: KafkaServer) -> None:
        self.server = server

    async def publish(self, name: str, n: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.server.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, SHARDS, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=self.server.bootstrap, linger_ms=10)
        await producer.start()
        try:
            for i in range(n):
                await producer.send(name, data(i), key=b"k%d" % (i % 64))
            await producer.flush()
        finally:
            await producer.stop()

    async def ceiling(self, name: str, n: int, batch: int) -> float:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.server.bootstrap, group_id=f"ceiling-{name}", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(name, p) for p in range(SHARDS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got = 0
            started = time.perf_counter()
            while got < n:
                batches = await consumer.getmany(timeout_ms=1000, max_records=batch)
                got += sum(len(v) for v in batches.values())
            return n / (time.perf_counter() - started)
        finally:
            await consumer.stop()

    def spec(self, name: str) -> dict[str, Any]:
        return {"kafka": {"bootstrapServers": [self.server.bootstrap], "topic": name}}


class Redis(Source):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    async def publish(self, name: str, n: int) -> None:
        conn = aioredis.Redis.from_url(self.server.url)
        try:
            for start in range(0, n, 1000):
                pipe = conn.pipeline(transaction=False)
                for i in range(start, min(n, start + 1000)):
                    pipe.xadd(name, {"data": data(i), "partitionKey": f"k{i % 64}"})
                await pipe.execute()
        finally:
            await conn.aclose()

    async def ceiling(self, name: str, n: int, batch: int) -> float:
        conn = aioredis.Redis.from_url(self.server.url)
        try:
            after, got = "0-0", 0
            started = time.perf_counter()
            while got < n:
                answer: Any = await conn.xread({name: after}, count=batch, block=1000)
                entries = answer[0][1]
                got += len(entries)
                after = entries[-1][0]
            return n / (time.perf_counter() - started)
        finally:
            await conn.aclose()

    def spec(self, name: str) -> dict[str, Any]:
        return {"redis": {"url": self.server.url, "key": name}}


class Nats(Source):
    kind = "nats"

    def __init__(self, server: NatsServer) -> None:
        self.server = server

    async def publish(self, name: str, n: int) -> None:
        nc = await nats.connect(self.server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
            for start in range(0, n, 1000):
                await asyncio.gather(
                    *(js.publish(f"{name}.k{i % 64}", data(i)) for i in range(start, min(n, start + 1000)))
                )
        finally:
            await nc.close()

    async def ceiling(self, name: str, n: int, batch: int) -> float:
        nc = await nats.connect(self.server.url)
        try:
            js = nc.jetstream()
            config = ConsumerConfig(durable_name="ceiling", ack_policy=AckPolicy.ALL, max_ack_pending=-1)
            await js.add_consumer(name, config)
            sub = await js.pull_subscribe_bind(durable="ceiling", stream=name)
            got = 0
            started = time.perf_counter()
            while got < n:
                msgs = await sub.fetch(batch=batch, timeout=5)
                got += len(msgs)
                await msgs[-1].ack_sync()
            return n / (time.perf_counter() - started)
        finally:
            await nc.close()

    def spec(self, name: str) -> dict[str, Any]:
        return {"nats": {"url": self.server.url, "stream": name}}


class Kinesis(Source):
    kind = "kinesis"

    def __init__(self, server: KinesisServer) -> None:
        self.server = server

    def client(self) -> Any:
        return get_session().create_client(
            "kinesis",
            endpoint_url=self.server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    async def publish(self, name: str, n: int) -> None:
        async with self.client() as api:
            await api.create_stream(StreamName=name, ShardCount=SHARDS)
            await api.get_waiter("stream_exists").wait(StreamName=name)
            for start in range(0, n, 500):
                await api.put_records(
                    StreamName=name,
                    Records=[
                        {"PartitionKey": f"k{i % 64}", "Data": data(i)}
                        for i in range(start, min(n, start + 500))
                    ],
                )

    async def ceiling(self, name: str, n: int, batch: int) -> float:
        async with self.client() as api:
            shards = [s["ShardId"] for s in (await api.list_shards(StreamName=name))["Shards"]]
            counts = dict.fromkeys(shards, 0)

            async def read(shard: str) -> None:
                iterator = (
                    await api.get_shard_iterator(
                        StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
                    )
                )["ShardIterator"]
                while sum(counts.values()) < n:
                    answer = await api.get_records(ShardIterator=iterator, Limit=batch)
                    iterator = answer["NextShardIterator"]
                    counts[shard] += len(answer["Records"])
                    if not answer["Records"]:
                        await asyncio.sleep(0.05)

            started = time.perf_counter()
            await asyncio.gather(*(read(s) for s in shards))
            return n / (time.perf_counter() - started)

    def spec(self, name: str) -> dict[str, Any]:
        return {"kinesis": {"endpoint": self.server.endpoint, "streamName": name}}


def trigger(
    name: str,
    source: Source,
    *,
    enabled: bool,
    parallelization: int = 1,
    function: str = FUNCTION,
    batch: int = 100,
) -> dict[str, Any]:
    """A stream Trigger named ``name`` on ``source`` (its ``spec(name)``), from the oldest record."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "function": function,
            "enabled": enabled,
            "stream": {
                **source.spec(name),
                "batchSize": batch,
                "startingPosition": "TRIM_HORIZON",
                "parallelizationFactor": parallelization,
            },
        },
    }


async def bridge_events(
    kube: KubeClient, http: aiohttp.ClientSession, name: str
) -> tuple[float, float] | None:
    """The bridge pod's own count of records delivered and the sum of its invocations' durations in seconds (its
    /metrics), or None while it is not up."""
    text = await bridge_metrics(kube, http, name)
    if text is None:
        return None
    found = [
        re.search(rf"^{metric} ([0-9.e+-]+)$", text, re.M)
        for metric in ("kubelambda_bridge_events_total", "kubelambda_bridge_invoke_seconds_sum")
    ]
    events, invoking = (float(m.group(1)) if m else 0.0 for m in found)
    return events, invoking


async def bridge_metrics(kube: KubeClient, http: aiohttp.ClientSession, name: str) -> str | None:
    """The bridge pod's /metrics text, or None while it is not up."""
    pods = await kube.get(resource_path("v1", "pods", namespace=NS))
    for pod in pods.get("items", []):
        if not pod["metadata"]["name"].startswith(f"{name}-") or pod["metadata"].get("deletionTimestamp"):
            continue
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"http://{ip}:8080/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return await resp.text()
    return None


def bridge_process(name: str) -> psutil.Process | None:
    """The bridge pod's process on the local node (pods are processes here): the newest, as the pod of the
    Trigger's disabled revision may still be stopping when the enabled one reads."""
    found = [
        proc
        for proc in psutil.process_iter(["cmdline", "create_time"])
        if "bridge" in (proc.info.get("cmdline") or []) and f"{NS}/{name}" in (proc.info.get("cmdline") or [])
    ]
    return max(found, key=lambda p: p.info.get("create_time") or 0.0, default=None)


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    with contextlib.suppress(psutil.Error):
        times = proc.cpu_times()
        return float(times.user + times.system)
    return float("nan")


async def bridge_rate(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    name: str,
    source: Source,
    n: int,
    *,
    interval: float = 0.02,
    samplers: dict[str, Callable[[], float]] | None = None,
    profile: Path | None = None,
) -> tuple[float, float, dict[str, float], float]:
    """Records/s from the first record delivered to the last, the bridge process's CPU use meanwhile (100 % = one
    core busy all the time), the CPU µs per record of each of ``samplers`` (CPU seconds of other processes)
    over the same time, and the invocations the bridge had in flight on average (the sum of their durations over
    the time: with one batch in flight per shard, as many as the shards when they are all read at once).
    ``profile``: py-spy samples the bridge process from its first record delivered to its last (raw, collapsed
    stacks: ``profile``/``name``.txt)."""
    path = resource_path(GROUP_VERSION, "triggers", namespace=NS, name=name)
    await kube.patch(path, {"spec": {"enabled": True}})
    samplers = samplers or {}
    first: tuple[float, float, float, dict[str, float], float] | None = None
    proc: psutil.Process | None = None
    spy: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 600
    nan = float("nan")
    while time.monotonic() < deadline:
        counters = await bridge_events(kube, http, name)
        now = time.perf_counter()
        events, invoking = counters or (0.0, 0.0)
        if events:
            if first is None:
                proc = bridge_process(name)
                first = (now, events, cpu_seconds(proc), {k: f() for k, f in samplers.items()}, invoking)
                if profile is not None and proc is not None:
                    spy = start_profile(proc.pid, profile / f"{name}.txt")
            if events >= n:
                stop_profile(spy)
                if now <= first[0]:
                    return nan, nan, {}, nan
                elapsed, count = now - first[0], events - first[1]
                others = {k: 1e6 * (f() - first[3][k]) / count for k, f in samplers.items()}
                in_flight = (invoking - first[4]) / elapsed
                return count / elapsed, (cpu_seconds(proc) - first[2]) / elapsed, others, in_flight
        await asyncio.sleep(interval)
    stop_profile(spy)
    raise TimeoutError(f"the {source.kind} bridge did not deliver {n} records within 600 s")


def process_cpu() -> float:
    """CPU seconds of this process so far (the ceiling's client runs in it)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def cores_needed(ceiling: float, client_us: float, bridge_us: float, others: dict[str, float]) -> str:
    """What half the ceiling would take: the CPU µs per record of the whole chain (bridge, gateway, the function's
    agent and runtime) times half the ceiling's rate, in cores, beside what the ceiling's own client used. Two
    cores are all this machine has, for the broker, the chain and this bench together."""
    chain = bridge_us + others.get("gateway", float("nan")) + others.get("function", float("nan"))
    return (
        f"CPU µs/record: ceiling's client {client_us:.1f}; bridge {bridge_us:.1f} + gateway"
        f" {others.get('gateway', float('nan')):.1f} + function {others.get('function', float('nan')):.1f} ="
        f" {chain:.1f}: half the ceiling ({ceiling / 2:,.0f} rec/s) needs {ceiling / 2 * chain / 1e6:.2f} cores for"
        f" the chain alone; on two free cores it passes at most {2e6 / chain:,.0f} rec/s"
    )


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (the venv's) recording ``pid`` into ``out`` until :func:`stop_profile`."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy beside {sys.executable} (not pinned: pip install py-spy)")
    command = [str(spy), "record", "--format", "raw", "--rate", "200", "-o", str(out), "--pid", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None and spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        spy.wait(30)


async def main() -> None:
    global SHARDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--sources", default="kafka,redis,nats,kinesis")
    add_bridge_bench_options(parser)
    parser.add_argument(
        "--profile",
        type=Path,
        help="a folder: py-spy samples each bridge while it delivers, one raw collapsed-stack file per case",
    )
    parser.add_argument(
        "--parallelization-factor",
        type=int,
        default=1,
        help="the Triggers' parallelizationFactor (1 = one batch in flight per shard, Lambda's default)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=SHARDS,
        help=f"partitions of the Kafka topics and shards of the Kinesis streams (default {SHARDS}); the function"
        " takes as many invocations at once",
    )
    args = parser.parse_args()
    SHARDS = args.shards
    n, batches = args.records, args.batch or [100, 10]
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-streams-") as tmp:
        root = Path(tmp)
        kafka, redis_server = KafkaServer(root / "kafka", heap_mb=768), RedisServer(root / "redis")
        nats_server, kinesis = NatsServer(root / "nats"), KinesisServer(root / "kinesis")
        proc, state = start_cluster(root)
        serve = psutil.Process(proc.pid)
        samplers: dict[str, Callable[[], float]] = {
            "gateway": lambda: gateway_cpu(serve),
            "function": lambda: function_cpu(serve),
        }
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(
                *(stack.enter_async_context(s) for s in (kafka, redis_server, nats_server, kinesis))
            )
            sources: dict[str, Source] = {
                "kafka": Kafka(kafka),
                "redis": Redis(redis_server),
                "nats": Nats(nats_server),
                "kinesis": Kinesis(kinesis),
            }
            rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
            try:
                async with (
                    KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                    aiohttp.ClientSession() as http,
                ):
                    await create_namespace(kube, NS, 180, tolerate_errors=True)
                    await create_function_ready(
                        kube,
                        warm_function(FUNCTION, NS, HANDLER, per_instance=SHARDS, memoryMB=args.function_mb),
                    )
                    print(
                        f"{n} records per source, parallelizationFactor {args.parallelization_factor}, no-op"
                        f" python3.11 function of {args.function_mb} MB; records/s"
                    )
                    print(
                        f"{'round':>5} {'source':<8} {'batch':>5} {'shards':>6} {'ceiling':>10} {'bridge':>10}"
                        f" {'ratio':>6} {'bridge CPU':>10} {'µs/record':>9} {'in flight':>9}"
                    )
                    # Rounds outermost: the machine's load drifts over minutes, and each round sees every case.
                    for round_ in range(args.rounds):
                        for batch in batches:
                            for kind in args.sources.split(","):
                                source = sources[kind]
                                name = f"bench-{kind}-{batch}-{round_}"
                                await source.publish(name, n)
                                client_cpu = process_cpu()
                                ceiling = await source.ceiling(name, n, batch)
                                client_us = 1e6 * (process_cpu() - client_cpu) / n
                                await kube.create(
                                    resource_path(GROUP_VERSION, "triggers", namespace=NS),
                                    trigger(
                                        name,
                                        source,
                                        enabled=False,
                                        parallelization=args.parallelization_factor,
                                        batch=batch,
                                    ),
                                )
                                rate, cpu, others, in_flight = await bridge_rate(
                                    kube, http, name, source, n, samplers=samplers, profile=args.profile
                                )
                                rows.setdefault((kind, batch), []).append((ceiling, rate, cpu))
                                shards = SHARDS if kind in ("kafka", "kinesis") else 1
                                print(
                                    f"{round_ + 1:>5} {kind:<8} {batch:>5} {shards:>6} {ceiling:>10.0f} {rate:>10.0f}"
                                    f" {rate / ceiling:>6.0%} {cpu:>10.0%} {1e6 * cpu / rate:>9.1f} {in_flight:>9.1f}"
                                    f"   {load_average()}",
                                    flush=True,
                                )
                                print(
                                    f"      {cores_needed(ceiling, client_us, 1e6 * cpu / rate, others)}",
                                    flush=True,
                                )
                                await kube.patch(
                                    resource_path(GROUP_VERSION, "triggers", namespace=NS, name=name),
                                    {"spec": {"enabled": False}},
                                )
            except BaseException:
                print_platform_logs(root)
                raise
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"\nstream bridges, median (range) of {args.rounds} rounds")
            print(
                "| source | batch | bridge (rec/s) | client ceiling (rec/s) | bridge / ceiling | bridge CPU"
                " | bridge CPU µs per record |"
            )
            print("|---|---|---|---|---|---|---|")
            for (kind, batch), runs in rows.items():
                print(
                    f"| {kind} | {batch} | {spread([r for _, r, _ in runs])} | {spread([c for c, _, _ in runs])}"
                    f" | {spread([100 * r / c for c, r, _ in runs], '{:.0f}%')}"
                    f" | {spread([100 * u for _, _, u in runs], '{:.0f}%')}"
                    f" | {spread([1e6 * u / r for _, r, u in runs], '{:.1f}')} |"
                )


if __name__ == "__main__":
    asyncio.run(main())
