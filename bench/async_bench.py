"""Benchmarks of Event (asynchronous) invocations (issue 7). Figures, never assertions.

1. Accepted Event invocations per second: N concurrent HTTP clients (keep-alive, loopback) POST Events to a
   gateway process; an answer counts once it is a 202, which the gateway sends only after JetStream's publish
   acknowledgement. Beside it, in the same run, the baselines: JetStream publish-with-ack from N concurrent
   publishers of the same client library (nats-py's ``js.publish``, and ``EventQueue.publish``, what the
   gateway calls) to a stream of the same kind on the same nats-server, with the same payload and headers.
   Each row also shows the cores and CPU microseconds per event that the gateway, nats-server and the client
   (this process) used: on a shared machine the rate follows the CPU the processes get, the cost does not.
   ``--profile PATH`` writes py-spy raw profiles of the accepting and of the working gateway.
   Target: >= 3,000 accepted events/s.
2. End to end to a no-op function: the gateway with its in-process worker (the default) takes a closed-loop
   load of Events and works them off; throughput is events / (first POST .. stream empty), and the queue's
   oldest event age is sampled every 0.5 s from the stream during the run (what
   ``kubelambda_async_queue_oldest_age_seconds`` reports).

The platform is the local cluster (`kubelambda dev serve`) for the Function; nats-server and the gateway
processes are the benchmark's own, so their settings are known. Run: ``make bench-async`` (or
``.venv/bin/python bench/async_bench.py --events 6000 --clients 32``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from _common import create_namespace, pct, start_cluster, stop_cluster, wait
from kubelambda.asyncworker.queue import ENQUEUED_AT, EVENT_PREFIX, EventQueue, QueuedEvent
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path

NS = "bench"
STREAM = "KUBELAMBDA_ASYNC"
PAYLOAD = b'{"x": 1}'
HANDLER = "def handler(event, context):\n    return None\n"


class GatewayProcess:
    """``kubelambda gateway`` as its own process (as deployed), on a free loopback port."""

    def __init__(self, kubeconfig: Path, nats_url: str, log: Path, **extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")},
            "KUBELAMBDA_GATEWAY_KUBECONFIG": str(kubeconfig),
            "KUBELAMBDA_GATEWAY_HOST": "127.0.0.1",
            "KUBELAMBDA_GATEWAY_PORT": str(self.port),
            "KUBELAMBDA_GATEWAY_NATS_URL": nats_url,
            # This bench measures the Event path, not who may call (bench/auth_bench.py does): auth explicitly off.
            "KUBELAMBDA_GATEWAY_AUTH_MODE": "none",
            **extra,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubelambda", "gateway"],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    async def ready(self, http: aiohttp.ClientSession, name: str) -> None:
        async def dry_run() -> int:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with http.post(
                    f"{self.url}/2015-03-31/functions/{name}/invocations",
                    data=b"{}",
                    headers={"X-Amz-Invocation-Type": "DryRun"},
                ) as resp:
                    return resp.status
            except aiohttp.ClientConnectionError:
                return 0

        await wait(dry_run, lambda s: s == 204, f"the gateway process at {self.url} to see {name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def closed_loop(clients: int, total: int, one: Any) -> tuple[float, list[float]]:
    """``clients`` loops share ``total`` calls of ``one()``; returns calls/s and per-call latencies (ms)."""
    latencies: list[float] = []
    work = iter(range(total))

    async def client() -> None:
        for _ in work:
            started = time.perf_counter()
            await one()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return total / (time.perf_counter() - started), latencies


async def stream_messages(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def oldest_age(js: Any) -> float:
    """Age of the oldest event still in the queue (0 when empty), as the worker's metrics read it."""
    info = await js.stream_info(STREAM)
    if not info.state.messages:
        return 0.0
    try:
        first = await js.get_msg(STREAM, info.state.first_seq)
    except Exception:  # acknowledged (removed) between the two calls
        return 0.0
    return max(time.time() - float((first.headers or {})[ENQUEUED_AT]), 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Cores used by each named process between start and stop (which side is the bound)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.started = time.perf_counter()
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def stop(self, *, per: int = 0) -> str:
        """Cores used by each process; with ``per``, also its CPU microseconds per item."""
        elapsed = time.perf_counter() - self.started
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return ", ".join(
            f"{name} {used[name] / elapsed:.2f}"
            + (f" ({1e6 * used[name] / per:.0f} us/event)" if per else "")
            for name in self.pids
        )


class Profiler:
    """``py-spy record`` on a process while a section runs (``--profile``); py-spy comes from PyPI."""

    def __init__(self, pid: int, out: Path | None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if out is not None:
            py_spy = shutil.which("py-spy") or "py-spy"
            self.proc = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.proc.wait(60)


async def accept_rate(
    http: aiohttp.ClientSession,
    js: Any,
    gateway: GatewayProcess,
    *,
    clients: int,
    events: int,
    rounds: int,
    profile: Path | None,
    nats_pid: int,
) -> None:
    invoke = f"{gateway.url}/2015-03-31/functions/{NS}/noop/invocations"
    headers = {"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}

    async def post() -> None:
        async with http.post(invoke, data=PAYLOAD, headers=headers) as resp:
            await resp.read()
            assert resp.status == 202, (resp.status, await resp.text())

    await js.add_stream(
        StreamConfig(
            name="BENCH_BASELINE",
            subjects=["bench.baseline.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    seq = iter(range(10**9))

    async def publish() -> None:
        # The same message the gateway stores: subject, payload and headers (Nats-Msg-Id included, so the
        # server's duplicate check costs the same).
        event = QueuedEvent(
            namespace=NS,
            function="noop",
            request_id=f"baseline-{next(seq)}",
            payload=PAYLOAD,
            enqueued_at=time.time(),
        )
        await js.publish(
            f"bench.baseline.{NS}.noop", PAYLOAD, stream="BENCH_BASELINE", headers=event.headers()
        )

    queue = EventQueue(js._nc, stream=STREAM)

    async def publish_lean() -> None:
        # What the gateway does per event minus HTTP: EventQueue.publish, into the events' stream under a
        # namespace of its own (purged afterwards: no worker runs during this section).
        event = QueuedEvent(
            namespace="baseline",
            function="noop",
            request_id=f"lean-{next(seq)}",
            payload=PAYLOAD,
            enqueued_at=time.time(),
        )
        await queue.publish(event)

    before = await stream_messages(js, STREAM)
    paths = {"gateway 202": post, "nats-py js.publish": publish, "EventQueue.publish": publish_lean}
    for one in paths.values():
        await closed_loop(clients, 300, one)  # warm every path up
    rows: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in paths}
    pids = {"gateway": gateway.proc.pid, "nats-server": nats_pid, "client": os.getpid()}
    cores: dict[str, str] = {}
    for _ in range(rounds):  # interleaved: the machine's noise hits every path alike
        for name, one in paths.items():
            profiler = Profiler(gateway.proc.pid, profile if name == "gateway 202" else None)
            share = CpuShare(pids)
            rows[name].append(await closed_loop(clients, events, one))
            cores[name] = share.stop(per=events)
            profiler.stop()
    await js.purge_stream(STREAM, subject=f"{EVENT_PREFIX}.baseline.>")
    stored = await stream_messages(js, STREAM) - before
    print(f"== 1. accepted Event invocations, {clients} concurrent clients, {rounds} x {events} events each")
    summary = {}
    for name, results in rows.items():
        rate = pct([r for r, _ in results], 0.5)
        lat = [v for _, ls in results for v in ls]
        summary[name] = rate
        print(
            f"  {name:<19} {rate:8.0f} /s   p50 {pct(lat, 0.5):6.2f} ms   p99 {pct(lat, 0.99):6.2f} ms"
            f"   cores used (last round): {cores[name]}"
        )
    print(
        f"  the gateway accepts at {100 * summary['gateway 202'] / summary['nats-py js.publish']:.0f}% of the raw "
        f"JetStream publish-ack rate (target >= 3000 /s); {stored} events stored for "
        f"{(rounds * events) + 300} accepted"
    )
    await js.delete_stream("BENCH_BASELINE")


async def end_to_end(
    http: aiohttp.ClientSession,
    js: Any,
    gateway: GatewayProcess,
    *,
    clients: int,
    events: int,
    profile: Path | None,
) -> None:
    invoke = f"{gateway.url}/2015-03-31/functions/{NS}/noop/invocations"
    headers = {"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}
    # What was queued while no worker ran (section 1) is worked off first: the drain rate.
    backlog = await stream_messages(js, STREAM)
    profiler = Profiler(gateway.proc.pid, profile)
    share = CpuShare({"gateway": gateway.proc.pid})
    started = time.perf_counter()
    await wait(lambda: stream_messages(js, STREAM), lambda n: n == 0, "the backlog drained", timeout=600)
    drain = time.perf_counter() - started
    drain_cores = share.stop()
    profiler.stop()

    async def post() -> None:
        async with http.post(invoke, data=PAYLOAD, headers=headers) as resp:
            await resp.read()
            assert resp.status == 202, (resp.status, await resp.text())

    ages: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            ages.append(await oldest_age(js))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    accept, _ = await closed_loop(clients, events, post)
    accepted_in = time.perf_counter() - started
    await wait(lambda: stream_messages(js, STREAM), lambda n: n == 0, "the load worked off", timeout=600)
    total = time.perf_counter() - started
    done.set()
    await sampler
    print(
        "\n== 2. end to end to a no-op python3.11 function (gateway with its in-process worker, default settings)"
    )
    print(
        f"  backlog of {backlog} events worked off in {drain:.1f} s: {backlog / drain:8.0f} events/s"
        f"   cores used: {drain_cores}"
    )
    print(
        f"  {events} events from {clients} clients: accepted at {accept:.0f} /s in {accepted_in:.1f} s, all "
        f"done after {total:.1f} s: {events / total:8.0f} events/s end to end"
    )
    print(
        f"  queue oldest event age during the run: p50 {pct(ages, 0.5):.1f} s, max {max(ages, default=0):.1f} s "
        f"({len(ages)} samples)"
    )
    async with http.get(f"{gateway.url}/metrics") as resp:
        exported = await resp.text()
    counted = {
        what: sum(
            float(line.rpartition(" ")[2])
            for line in exported.splitlines()
            if line.startswith(f"kubelambda_async_{what}_total{{")
        )
        for what in ("requeues", "retries", "events_dropped")
    }
    print(
        f"  requeued after a throttle or platform error: {counted['requeues']:.0f}, retried: "
        f"{counted['retries']:.0f}, dropped: {counted['events_dropped']:.0f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000, help="events per round and for the e2e run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=2, help="maxInstances of the no-op function")
    parser.add_argument(
        "--profile", type=Path, help="py-spy raw profile of the accepting gateway (last round) written here"
    )
    args = parser.parse_args()
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-async-") as tmp:
        root = Path(tmp)
        proc, state = start_cluster(root)
        gateway: GatewayProcess | None = None
        nats_server = NatsServer(root / "bench-nats")
        try:
            await nats_server.start()
            async with (
                KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            ):
                await create_namespace(kube, NS)
                fn = {
                    "apiVersion": "kubelambda.io/v1alpha1",
                    "kind": "Function",
                    "metadata": {"name": "noop", "namespace": NS},
                    "spec": {
                        "runtime": "python3.11",
                        "handler": "app.handler",
                        "code": {"inline": {"app.py": HANDLER}},
                        "concurrency": {"perInstance": 8},
                        "scaling": {"minInstances": 1, "maxInstances": args.instances},
                        "async": {"maxRetries": 0},
                    },
                }
                await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), fn)
                kubeconfig = root / "gateway.kubeconfig"
                # Section 1: a gateway without a worker, so nothing else competes for the two cores.
                gateway = GatewayProcess(
                    kubeconfig,
                    nats_server.url,
                    root / "gateway-accept.log",
                    KUBELAMBDA_GATEWAY_ASYNC_WORKER="false",
                )
                await gateway.ready(http, f"{NS}/noop")
                nc = await nats.connect(nats_server.url)
                try:
                    js = nc.jetstream(timeout=10)
                    await accept_rate(
                        http,
                        js,
                        gateway,
                        clients=args.clients,
                        events=args.events,
                        rounds=args.rounds,
                        profile=args.profile,
                        nats_pid=nats_server.procs[0].pid,
                    )
                    gateway.stop()
                    gateway = GatewayProcess(kubeconfig, nats_server.url, root / "gateway-e2e.log")
                    await gateway.ready(http, f"{NS}/noop")
                    await end_to_end(
                        http,
                        js,
                        gateway,
                        clients=args.clients,
                        events=args.events,
                        profile=args.profile.with_suffix(".e2e.raw") if args.profile else None,
                    )
                finally:
                    await nc.close()
        except BaseException:
            for log in (root / "gateway-accept.log", root / "gateway-e2e.log"):
                if log.exists():
                    print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            if gateway is not None:
                gateway.stop()
            await nats_server.stop()
            stop_cluster(proc, root)


if __name__ == "__main__":
    import uvloop  # the gateway runs on uvloop too: the client must not be the slower side

    uvloop.run(main())
