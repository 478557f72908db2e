"""Benchmark of the queue bridges (issue 9): records/s end to end per broker to a no-op function.

For each broker (RabbitMQ, NATS JetStream, Redis Streams, SQS API on ElasticMQ), each batch size (100, 10) and
each of ``--rounds`` rounds (default 3; the table prints each figure's median and range), in the same run, on a
queue pre-filled with N messages:

1. **ceiling**: the broker's own consumer throughput with the same client library the bridge uses, draining the
   queue the way the bridge does but without invoking anything (aio-pika consumer with prefetch and one ack per
   message; a NATS pull consumer fetching a batch and acking each message; Redis ``XREADGROUP COUNT`` +
   ``XACK``; SQS ``ReceiveMessage`` x10 in parallel + ``DeleteMessageBatch``);
2. **bridge**: the Trigger's bridge as its own process (``python -m kubelambda.bridge``, maxConcurrency 8)
   invoking a no-op Python function through the gateway, acknowledging after each success. The rate is counted
   from the bridge's first acknowledged batch to its N-th acknowledged message (its own
   ``kubelambda_bridge_events_total``), so process start-up and connecting are left out.

The no-op function gets one full vCPU by default (``--function-mb 1769``, Lambda's 1,769 MB = 1 vCPU; its pod's
CPU limit is memoryMB / 1769 cores): at Lambda's smallest, 128 MB (``--function-mb 128``: a 73m CPU limit, 7.3 ms of
CPU per 100 ms CFS period), the function's quota, not the bridge, bounded the rate (its pod was throttled in most
periods), so the figure measured the function's size rather than the bridge.

Figures only, never assertions. Run: ``make bench-queues`` (or ``.venv/bin/python bench/queue_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import nats
import psutil
import redis.asyncio as aioredis
from aiobotocore.session import get_session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _common import (  # noqa: E402
    add_bridge_bench_options,
    load_average,
    profile_breakdown,
    py_spy,
    spread,
    stop_spies,
)
from kltest import Cluster, start_cluster  # noqa: E402
from kltest.bridge import BridgeProcess  # noqa: E402
from kltest.platform import deploy, python_function, start_gateway, start_operator, stop_gateway  # noqa: E402
from kubelambda.bridge.queues.sqs import MAX_POLLERS as SQS_POLLERS  # noqa: E402
from kubelambda.devcluster.servers import NatsServer, RabbitMQServer, RedisServer, SqsServer  # noqa: E402
from kubelambda.kube import KubeClient, resource_path  # noqa: E402
from kubelambda.resources.deployment import MB_PER_VCPU  # noqa: E402

NS = "bench-queues"
FUNCTION = "noop"
CONCURRENCY = 8
HANDLER = "def handler(event, context):\n    return {}\n"
BROKERS = ["rabbitmq", "nats", "redis", "sqs"]
POLL_SECONDS = 0.25
"""How often the bridge's /metrics is read once it delivers: each read costs the bridge CPU (a 10 ms poll took ~10 %
of its samples in a profile; 0.1 s still 6 %), and 0.25 s is within 3 % of a run of ten seconds or more."""
FIRST_POLL_SECONDS = 0.02
"""How often it is read until the first batch is acknowledged (the rate's start; the bridge is connecting then): a
Redis run of 5,000 at batch 100 once ended within one 0.25 s poll, leaving no time to measure."""


def bodies(n: int) -> list[bytes]:
    return [json.dumps({"n": i, "pad": "x" * 64}).encode() for i in range(n)]


class Rabbit:
    def __init__(self, server: RabbitMQServer) -> None:
        self.url = server.url

    def source(self, name: str) -> dict[str, Any]:
        return {"rabbitmq": {"url": self.url, "queue": name}}

    async def fill(self, name: str, n: int) -> None:
        async with await aio_pika.connect(self.url) as conn:
            channel = await conn.channel()
            await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            data = bodies(n)
            for start in range(0, n, 1000):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(aio_pika.Message(b), routing_key=name)
                        for b in data[start : start + 1000]
                    )
                )

    async def drain(self, name: str, n: int, batch: int) -> float:
        async with await aio_pika.connect(self.url) as conn:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=2 * batch * (CONCURRENCY + 1))  # as the bridge
            queue = await channel.declare_queue(name, passive=True)
            done = asyncio.Event()
            got = 0

            async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal got
                await message.ack()
                got += 1
                if got >= n:
                    done.set()

            started = time.perf_counter()
            await queue.consume(on)
            await done.wait()
            return time.perf_counter() - started


class Nats:
    def __init__(self, server: NatsServer) -> None:
        self.url = server.url

    def source(self, name: str) -> dict[str, Any]:
        return {"nats": {"url": self.url, "stream": name, "subject": f"{name}.in"}}

    async def fill(self, name: str, n: int) -> None:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=name, subjects=[f"{name}.>"])
            data = bodies(n)
            for start in range(0, n, 500):
                await asyncio.gather(
                    *(js.publish(f"{name}.in", b, timeout=60) for b in data[start : start + 500])
                )  # 60 s: at load 70 the default 2 s ran out
        finally:
            await nc.close()

    async def drain(self, name: str, n: int, batch: int) -> float:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(f"{name}.in", durable="ceiling", stream=name)
            got = 0
            started = time.perf_counter()
            while got < n:
                with contextlib.suppress(nats.errors.TimeoutError):
                    for m in await sub.fetch(batch, timeout=1):
                        await m.ack()
                        got += 1
                    await nc.flush()
            return time.perf_counter() - started
        finally:
            await nc.close()


class Redis:
    def __init__(self, server: RedisServer) -> None:
        self.url = server.url

    def source(self, name: str) -> dict[str, Any]:
        return {"redis": {"url": self.url, "key": name}}

    async def fill(self, name: str, n: int) -> None:
        client = aioredis.from_url(self.url)
        try:
            data = bodies(n)
            for start in range(0, n, 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for b in data[start : start + 1000]:
                        pipe.xadd(name, {"body": b})
                    await pipe.execute()
        finally:
            await client.aclose()

    async def drain(self, name: str, n: int, batch: int) -> float:
        client = aioredis.from_url(self.url)
        try:
            await client.xgroup_create(name, "ceiling", id="0")
            got = 0
            started = time.perf_counter()
            while got < n:
                answer = await client.xreadgroup("ceiling", "c", {name: ">"}, count=batch, block=1000)
                for _key, entries in answer or []:
                    ids = [i for i, _ in entries]
                    if ids:
                        await client.xack(name, "ceiling", *ids)
                        got += len(ids)
            return time.perf_counter() - started
        finally:
            await client.aclose()


class Sqs:
    def __init__(self, server: SqsServer) -> None:
        self.endpoint = server.endpoint
        self.session = get_session()
        self.urls: dict[str, str] = {}

    def client(self) -> Any:
        return self.session.create_client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    def source(self, name: str) -> dict[str, Any]:
        return {"sqs": {"endpoint": self.endpoint, "queueUrl": self.urls[name]}}

    async def fill(self, name: str, n: int) -> None:
        async with self.client() as sqs:
            self.urls[name] = (await sqs.create_queue(QueueName=name))["QueueUrl"]
            data = bodies(n)
            chunks = [data[i : i + 10] for i in range(0, n, 10)]
            for start in range(0, len(chunks), 20):
                await asyncio.gather(
                    *(
                        sqs.send_message_batch(
                            QueueUrl=self.urls[name],
                            Entries=[{"Id": str(k), "MessageBody": b.decode()} for k, b in enumerate(chunk)],
                        )
                        for chunk in chunks[start : start + 20]
                    )
                )

    async def drain(self, name: str, n: int, batch: int) -> float:
        async with self.client() as sqs:
            url = self.urls[name]
            got = 0
            started = time.perf_counter()
            while got < n:
                pollers = min(SQS_POLLERS, math.ceil(batch / 10))
                answers = await asyncio.gather(
                    *(
                        sqs.receive_message(
                            QueueUrl=url,
                            MaxNumberOfMessages=min(10, batch),
                            WaitTimeSeconds=1,
                            MessageSystemAttributeNames=["All"],
                            MessageAttributeNames=["All"],
                        )
                        for _ in range(pollers)
                    )
                )
                messages = [m for a in answers for m in a.get("Messages") or []]
                await asyncio.gather(
                    *(
                        sqs.delete_message_batch(
                            QueueUrl=url,
                            Entries=[
                                {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]}
                                for k, m in enumerate(messages[i : i + 10])
                            ],
                        )
                        for i in range(0, len(messages), 10)
                    )
                )
                got += len(messages)
            return time.perf_counter() - started


METRICS = ("kubelambda_bridge_events_total", "kubelambda_bridge_invoke_seconds_sum")


async def bridge_counters(http: aiohttp.ClientSession, port: int) -> dict[str, float] | None:
    """The bridge process's ``kubelambda_bridge_events_total`` (messages acknowledged after a success) and the
    sum of its invocations' durations, or None while it does not answer."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    found = {name: re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE) for name in METRICS}
    return {name: float(m.group(1)) for name, m in found.items() if m}


@dataclass(frozen=True)
class Run:
    rate: float
    """Messages/s."""
    cpu_us: float
    """CPU µs per message of the consuming process (the bridge; the ceiling's client)."""
    gateway_cpu_us: float = float("nan")
    """CPU µs per message of this process while the bridge ran: the gateway (and this loop's polling)."""
    function_cpu_us: float = float("nan")
    """CPU µs per message of the function's pod: its agent and the runtime under it."""
    in_flight: float = float("nan")
    """Invocations the bridge had in flight on average (the sum of their durations over the time; Little's law):
    near ``maxConcurrency``, every slot waits on an invocation and the chain behind the gateway bounds the rate;
    well below it, the bridge's own loop (fetch, build, acknowledge) does."""


def busy(bridged: Run, ceiling: Run) -> str:
    """How much of a core each side kept busy (rate times CPU per message): a chain that keeps far less busy than
    the ceiling's one process waits on its hops (each process waiting for a core in turn), not on its CPU."""
    chain = bridged.cpu_us + bridged.gateway_cpu_us + bridged.function_cpu_us
    return (
        f"cores kept busy: bridge + gateway + function {bridged.rate * chain / 1e6:.0%} of one"
        f" ({chain:.0f} µs/msg: on two free cores at most {2e6 / chain:,.0f} msg/s),"
        f" ceiling's client {ceiling.rate * ceiling.cpu_us / 1e6:.0%}"
        f" (at most {1e6 / ceiling.cpu_us:,.0f} msg/s on one free core)"
    )


def listening_port(process: psutil.Process) -> int | None:
    """The port the bridge process's HTTP server listens on, once it does."""
    with contextlib.suppress(psutil.Error):
        for connection in process.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                return int(connection.laddr.port)
    return None


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def function_processes() -> list[psutil.Process]:
    """The no-op function's pod: its agent (pods are processes here; the agent's task root names the pod's
    folder, ``<namespace>_<pod>``) and everything under it (the runtime)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "kubelambda-agent" in cmdline and f"{NS}_{FUNCTION}-" in cmdline:
            with contextlib.suppress(psutil.Error):
                found += [proc, *proc.children(recursive=True)]
    return found


def total_cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += cpu_seconds(proc)
    return total


@contextlib.contextmanager
def profiled(bridge: BridgeProcess, directory: Path | None, name: str) -> Any:
    """py-spy (``pip install py-spy``; not a dependency) recording the bridge and this process (the gateway)
    while the block runs; each writes ``<name>-<who>.txt`` (collapsed stacks) when stopped."""
    if directory is None:
        yield
        return
    assert bridge.proc is not None
    spies = [
        py_spy(pid, directory / f"{name}-{who}.txt")
        for who, pid in (("bridge", bridge.proc.pid), ("gateway", os.getpid()))
    ]
    try:
        yield
    finally:
        stop_spies(spies)


async def through_bridge(
    cluster: Cluster,
    kube: KubeClient,
    gateway_url: str,
    broker: Any,
    name: str,
    n: int,
    batch: int,
    log_dir: Path,
    profile: Path | None = None,
) -> Run:
    """Records/s of the bridge process from its first acknowledged batch to the N-th message (start-up and
    connecting left out). With ``profile``, py-spy samples the bridge process and this one (the gateway) while
    the bridge runs, as collapsed stacks in that directory."""
    trigger = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "function": FUNCTION,
            "queue": {
                **broker.source(name),
                "batchSize": batch,
                "maxBatchingWindowSeconds": 1 if batch > 10 else 0,
                "maxConcurrency": CONCURRENCY,
            },
        },
    }
    await kube.create(resource_path("kubelambda.io/v1alpha1", "triggers", namespace=NS), trigger)
    # Port 0: the bridge binds a free port itself, read from its listening socket (a port picked here beforehand
    # was once taken by another process of the shared machine before the bridge bound it).
    bridge = BridgeProcess(
        cluster,
        NS,
        name,
        gateway_url=gateway_url,
        log_dir=log_dir,
        KUBELAMBDA_BRIDGE_PORT="0",
        KUBELAMBDA_BRIDGE_STATUS_INTERVAL_SECONDS="5",
    )
    port: int | None = None
    first: tuple[float, float, float, float, float, float] | None = None
    me = psutil.Process()
    function = function_processes()
    async with aiohttp.ClientSession() as http:
        with bridge, profiled(bridge, profile, name):
            assert bridge.proc is not None
            process = psutil.Process(bridge.proc.pid)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                port = port or listening_port(process)
                counters = await bridge_counters(http, port) if port else None
                now = time.perf_counter()
                got = (counters or {}).get(METRICS[0])
                busy_s = (counters or {}).get(METRICS[1], 0.0)
                if got and first is None:
                    first = (now, got, cpu_seconds(process), cpu_seconds(me), total_cpu(function), busy_s)
                if got is not None and got >= n and first is not None:
                    if now == first[0]:
                        break
                    count = got - first[1]
                    return Run(
                        count / (now - first[0]),
                        1e6 * (cpu_seconds(process) - first[2]) / count,
                        1e6 * (cpu_seconds(me) - first[3]) / count,
                        1e6 * (total_cpu(function) - first[4]) / count,
                        (busy_s - first[5]) / (now - first[0]),
                    )
                if not bridge.alive():
                    break
                await asyncio.sleep(POLL_SECONDS if first is not None else FIRST_POLL_SECONDS)
    raise RuntimeError(f"the bridge did not deliver {n} messages:\n{bridge.log()[-3000:]}")


def print_table(
    n: int, function_mb: int, rounds: int, rows: dict[tuple[str, int], list[tuple[Run, Run]]]
) -> None:
    print(
        f"\nqueue bridges, {n} messages per run, maxConcurrency {CONCURRENCY}, no-op python3.11 function of"
        f" {function_mb} MB ({function_mb / MB_PER_VCPU:.2f} vCPU); median (range) of {rounds} rounds"
    )
    print(
        "| broker | batch | bridge end to end (rec/s) | client ceiling (rec/s) | bridge / ceiling "
        "| CPU µs/msg: bridge | gateway | function pod | ceiling's client | invocations in flight |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (kind, batch), runs in rows.items():
        ceilings, bridged = [c for c, _ in runs], [b for _, b in runs]
        print(
            f"| {kind} | {batch} | {spread([b.rate for b in bridged])} | {spread([c.rate for c in ceilings])} "
            f"| {spread([100 * b.rate / c.rate for c, b in runs], '{:.0f}%')} "
            f"| {statistics.median(b.cpu_us for b in bridged):.0f} "
            f"| {statistics.median(b.gateway_cpu_us for b in bridged):.0f} "
            f"| {statistics.median(b.function_cpu_us for b in bridged):.0f} "
            f"| {statistics.median(c.cpu_us for c in ceilings):.0f} "
            f"| {spread([b.in_flight for b in bridged], '{:.1f}')} |"
        )


async def main(
    n: int, batches: list[int], only: list[str], profile: Path | None, *, function_mb: int, rounds: int
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    cluster = start_cluster(tmp / "cluster")
    # Only the brokers asked for; started within the try, so that one failing to start stops the others too.
    servers: dict[str, Any] = {
        "rabbitmq": RabbitMQServer(tmp / "rabbitmq"),
        "nats": NatsServer(tmp / "nats"),
        "redis": RedisServer(tmp / "redis"),
        "sqs": SqsServer(tmp / "elasticmq"),
    }
    servers = {kind: server for kind, server in servers.items() if kind in only}
    clients: dict[str, Any] = {"rabbitmq": Rabbit, "nats": Nats, "redis": Redis, "sqs": Sqs}
    rows: dict[tuple[str, int], list[tuple[Run, Run]]] = {}
    try:
        await asyncio.gather(*(s.start() for s in servers.values()))
        brokers = {kind: clients[kind](server) for kind, server in servers.items()}
        async with KubeClient.from_kubeconfig(cluster.kubeconfig) as kube:
            await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": NS}})
            operator = await start_operator(cluster, kube, problem_retry_seconds=1.0)
            gateway, url = await start_gateway(cluster, kube, autoscale_interval_seconds=0.5)
            try:
                doc = python_function(
                    FUNCTION,
                    HANDLER,
                    timeoutSeconds=30,
                    memoryMB=function_mb,
                    concurrency={"perInstance": CONCURRENCY},
                    scaling={"minInstances": 1, "maxInstances": 1},
                )
                await deploy(cluster, gateway, NS, doc)
            finally:
                await operator.stop()  # the bridges run here, in-process; no bridge Deployments
            try:
                # Rounds outermost: the machine's load drifts over minutes, and each round sees every case.
                for round_ in range(rounds):
                    for batch in batches:
                        for kind, broker in brokers.items():
                            ceiling_q, bridge_q = (
                                f"{kind}-ceiling-{batch}-{round_}",
                                f"{kind}-bridge-{batch}-{round_}",
                            )
                            await broker.fill(ceiling_q, n)
                            me = psutil.Process()
                            cpu = cpu_seconds(me)
                            took = await broker.drain(ceiling_q, n, batch)
                            ceiling = Run(n / took, 1e6 * (cpu_seconds(me) - cpu) / n)
                            await broker.fill(bridge_q, n)
                            bridged = await through_bridge(
                                cluster, kube, url, broker, bridge_q, n, batch, tmp, profile
                            )
                            rows.setdefault((kind, batch), []).append((ceiling, bridged))
                            print(
                                f"round {round_ + 1} {kind:9} batch {batch:3}: bridge {bridged.rate:6.0f} rec/s"
                                f" ({bridged.cpu_us:4.0f} µs CPU/msg, gateway {bridged.gateway_cpu_us:4.0f},"
                                f" function {bridged.function_cpu_us:4.0f}; {bridged.in_flight:.1f} invocations"
                                f" in flight)"
                                f"   ceiling {ceiling.rate:6.0f} rec/s ({ceiling.cpu_us:4.0f} µs CPU/msg)"
                                f"   {100 * bridged.rate / ceiling.rate:5.1f}%   {load_average()}",
                                flush=True,
                            )
                            print(f"    {busy(bridged, ceiling)}", flush=True)
                            if profile is not None:
                                shares = profile_breakdown(profile / f"{bridge_q}-bridge.txt")
                                print(
                                    "    bridge's samples: " + ", ".join(f"{k} {v:.0%}" for k, v in shares),
                                    flush=True,
                                )
            finally:
                await stop_gateway(gateway)
    finally:
        await asyncio.gather(*(s.stop() for s in servers.values()), return_exceptions=True)
        cluster.stop()
        print_table(n, function_mb, rounds, rows)  # what was measured, also when a later case failed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run (default 10000)")
    parser.add_argument(
        "--broker", action="append", choices=BROKERS, help="brokers (default: rabbitmq, nats, redis, sqs)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write py-spy profiles (collapsed stacks) of each bridge run to this directory",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"the Triggers' maxConcurrency and the function's perInstance (default {CONCURRENCY}); at 128 MB"
        " 32 invocations at once did not hold (its pod failed mid-invocation)",
    )
    add_bridge_bench_options(parser)
    args = parser.parse_args()
    CONCURRENCY = args.concurrency
    asyncio.run(
        main(
            args.messages,
            args.batch or [100, 10],
            args.broker or BROKERS,
            args.profile,
            function_mb=args.function_mb,
            rounds=args.rounds,
        )
    )
