"""Log shipping's cost (docs/logs.md): the same agent with shipping on beside off, in the same run.

    .venv/bin/python bench/logs_bench.py [--requests 1000] [--rounds 15] [--burst 20000 100000] [--before AGENT]

- Warm invocations of a Python handler that prints one line (4 records an invocation with START, END, REPORT),
  one worker, one connection, closed loop: p50/p99 through an agent shipping to a real nats-server (JetStream,
  file storage, the namespace's stream as the operator makes it) beside an agent with shipping off, interleaved
  in rounds (the order alternating each round) so that a noisy neighbour hurts both alike. The figure is the
  median over the rounds of each round's p50 (and of each round's on/off ratio), not one pooled p50 that a
  single noisy round could move.
- Log records per second through one agent before drops begin: the handler prints at a paced rate for a few
  seconds, rate after rate (doubling); the highest rate whose records were all stored, none dropped.
- One invocation prints N lines as fast as Python can; how fast the agent's pipe took them with shipping off
  (the baseline) and on, how many the store acknowledged per second until the queue was empty, and how many
  were dropped (the bounded queue, 8,192 records, full).
- ``--before AGENT``: a third target, another agent binary shipping (e.g. main's, to show a change's effect
  beside this tree's agent in the same run; ``make bench-logs BEFORE=path``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

from _common import pct
from agent_bench import Target, agent_target, load
from kltest.agentmetrics import agent_metrics  # importable once agent_bench put tests/ on the path
from kubelambda import logstore
from kubelambda.devcluster.servers import NatsServer
from kubelambda.runtimes import runtime_images_dir

NAMESPACE = "bench"
HANDLER = """import sys
import time

LINE = "line {} of a burst of {}, padded to about one hundred bytes like a typical log line......\\n"


def handler(event, context):
    event = event or {}
    n = event.get("lines", 1)
    write = sys.stdout.write
    rate = event.get("rate")
    if not rate:
        for i in range(n):
            write(LINE.format(i, n))
        sys.stdout.flush()
        return None
    # n lines at rate lines a second: a slice every 10 ms
    t0 = time.monotonic()
    i = 0
    while i < n:
        for _ in range(min(max(1, rate // 100), n - i)):
            write(LINE.format(i, n))
            i += 1
        sys.stdout.flush()
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return time.monotonic() - t0
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(t: Target) -> dict[str, float]:
    return agent_metrics(t.host, t.port, "kubelambda_agent_log_records_")


def invoke_lines(t: Target, lines: int, rate: int | None = None) -> tuple[float, bytes]:
    """Seconds one invocation printing ``lines`` lines (at ``rate`` a second) took as the caller saw it, and
    its answer."""
    conn = http.client.HTTPConnection(t.host, t.port, timeout=300)
    try:
        t0 = time.perf_counter()
        conn.request(
            "POST",
            t.path,
            body=json.dumps({"lines": lines, "rate": rate}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{t.name} answered {resp.status}")
        return time.perf_counter() - t0, body
    finally:
        conn.close()


def settled(t: Target, before: dict[str, float] | None = None, lines: int = 0) -> dict[str, float]:
    """The agent's log metrics once ``lines`` records more than ``before`` were stored or dropped (the pipe may
    still hold some when the invocation answers), its queue is empty and what it sent is acknowledged."""
    deadline = time.monotonic() + 60
    while True:
        now = metrics(t)
        done = sum(
            now[k] - (before or {}).get(k, 0.0)
            for k in (
                "kubelambda_agent_log_records_stored_total",
                "kubelambda_agent_log_records_dropped_total",
            )
        )
        if (
            done >= lines
            and now["kubelambda_agent_log_records_buffered"] == 0
            and now["kubelambda_agent_log_records_inflight"] == 0
        ):
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"{t.name}: records still queued after 60 s: {now}")
        time.sleep(0.02)


def before_drops(t: Target, seconds: float, start_rate: int, max_rate: int) -> list[str]:
    """Paced rates, doubling from ``start_rate``, until records are dropped (or ``max_rate``); one row each."""
    rows = []
    rate = start_rate
    while rate <= max_rate:
        before = metrics(t)
        _, body = invoke_lines(t, int(rate * seconds), rate)
        took = float(body)
        now = settled(t, before, int(rate * seconds))
        stored = (
            now["kubelambda_agent_log_records_stored_total"]
            - before["kubelambda_agent_log_records_stored_total"]
        )
        dropped = (
            now["kubelambda_agent_log_records_dropped_total"]
            - before["kubelambda_agent_log_records_dropped_total"]
        )
        achieved = int(rate * seconds) / took
        rows.append(f"{t.name:24} {rate:>10} {achieved:>12.0f} {int(stored):>10} {int(dropped):>10}")
        if dropped or achieved < rate * 0.9:  # drops began, or Python cannot print faster
            break
        rate *= 2
    return rows


def burst(t: Target, lines: int, shipping: bool) -> str:
    before = metrics(t) if shipping else {}
    t0 = time.perf_counter()
    took, _ = invoke_lines(t, lines)
    if not shipping:
        return f"{t.name:24} {lines:>8} {lines / took:>14.0f} {'-':>12} {'-':>10}"
    now = settled(t, before, lines)
    stored = (
        now["kubelambda_agent_log_records_stored_total"] - before["kubelambda_agent_log_records_stored_total"]
    )
    dropped = (
        now["kubelambda_agent_log_records_dropped_total"]
        - before["kubelambda_agent_log_records_dropped_total"]
    )
    return f"{t.name:24} {lines:>8} {lines / took:>14.0f} {stored / (time.perf_counter() - t0):>12.0f} {int(dropped):>10}"


async def make_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await logstore.ensure_stream(nc, NAMESPACE, logstore.Retention(max_age_seconds=3600))
    finally:
        await nc.close()


def main() -> int:
    return asyncio.run(run())


async def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per target per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--burst", type=int, nargs="*", default=[20000, 100000], help="lines of one invocation"
    )
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="how long each paced rate prints")
    parser.add_argument("--max-rate", type=int, default=640000, help="the highest paced rate tried, lines/s")
    parser.add_argument(
        "--split-cpus",
        action="store_true",
        help="nats-server on the last CPU, the agents, their runtimes and this client on the others (as with NATS "
        "on another node: what a function's own cores pay for shipping)",
    )
    parser.add_argument("--before", type=Path, help="another agent binary, shipping, as a third target")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="logs-bench-"))
    code = workdir / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    client = [sys.executable, str(runtime_images_dir() / "python" / "bootstrap.py"), "app.handler"]
    server = NatsServer(workdir / "nats")
    cpus = sorted(os.sched_getaffinity(0))
    if args.split_cpus:
        if len(cpus) < 2:
            parser.error("--split-cpus needs two CPUs at least")
        os.sched_setaffinity(0, cpus[-1:])  # nats-server (started now) inherits it
    await server.start()
    if args.split_cpus:
        os.sched_setaffinity(0, cpus[:-1])  # the agents and their runtimes (started later) inherit this
    rows: list[str] = []
    try:
        await make_stream(server.url)
        off = agent_target("agent, shipping off", code, client, base_env)
        on = agent_target("agent, shipping on", code, client, base_env)
        targets = [off, on]
        if args.before is not None:
            targets.append(agent_target("before, shipping on", code, client, base_env, agent=args.before))
        for t in targets[1:]:
            t.env.update(
                KUBELAMBDA_LOG_NATS_URL=server.url,
                KUBELAMBDA_FUNCTION_NAMESPACE=NAMESPACE,
                KUBELAMBDA_POD_NAME="bench",
            )
        try:
            for t in targets:
                t.start()
                load(t, args.warmup)
                t.latencies.clear()
                t.seconds = 0.0
            cpu = {t.name: 0.0 for t in targets}
            nats_cpu = {t.name: 0.0 for t in targets}
            rounds: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}  # (p50, p99) a round
            nats_pid = server.procs[0].pid
            for r in range(args.rounds):
                for t in targets if r % 2 == 0 else targets[::-1]:
                    assert t.proc is not None
                    agent0, nats0 = cpu_seconds(t.proc.pid), cpu_seconds(nats_pid)
                    first = len(t.latencies)
                    load(t, args.requests)
                    cpu[t.name] += cpu_seconds(t.proc.pid) - agent0
                    nats_cpu[t.name] += cpu_seconds(nats_pid) - nats0
                    mine = t.latencies[first:]
                    rounds[t.name].append((pct(mine, 0.5), pct(mine, 0.99)))
            shipped = settled(on)  # this tree's agent
            for lines in args.burst:
                rows.append(burst(off, lines, shipping=False))
                rows.extend(burst(t, lines, shipping=True) for t in targets[1:])
            paced = []
            for t in targets[1:]:
                paced += before_drops(t, args.paced_seconds, 5000, args.max_rate)
        finally:
            for t in targets:
                t.stop()
    finally:
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.split_cpus:
        print(
            f"nats-server on CPU {cpus[-1]}; agents, runtimes and the client on CPU {','.join(map(str, cpus[:-1]))}"
        )
    print(
        f"warm invocations, Python handler printing 1 line, 1 worker, 1 connection, {args.rounds} rounds x "
        f"{args.requests}; p50/p99: the median of the rounds' (pooled in brackets)"
    )
    print(
        f"{'target':24} {'req/s':>8} {'p50 ms':>16} {'p99 ms':>16} {'agent CPU us/inv':>17} {'NATS CPU us/inv':>16}"
    )
    for t in targets:
        n = len(t.latencies)
        p50 = statistics.median(p for p, _ in rounds[t.name])
        p99 = statistics.median(p for _, p in rounds[t.name])
        print(
            f"{t.name:24} {n / t.seconds:8.0f} {p50 * 1e3:7.3f} ({pct(t.latencies, 0.5) * 1e3:6.3f}) "
            f"{p99 * 1e3:7.3f} ({pct(t.latencies, 0.99) * 1e3:6.3f}) "
            f"{cpu[t.name] / n * 1e6:17.1f} {nats_cpu[t.name] / n * 1e6:16.1f}"
        )
    for t in targets[1:]:
        ratios50 = [on[0] / off[0] for on, off in zip(rounds[t.name], rounds[targets[0].name], strict=True)]
        ratios99 = [on[1] / off[1] for on, off in zip(rounds[t.name], rounds[targets[0].name], strict=True)]
        print(
            f"{t.name} vs off, median of the rounds' ratios: p50 {(statistics.median(ratios50) - 1) * 100:+.1f} % "
            f"(rounds from {(min(ratios50) - 1) * 100:+.1f} to {(max(ratios50) - 1) * 100:+.1f} %), "
            f"p99 {(statistics.median(ratios99) - 1) * 100:+.1f} %"
        )
    print(
        f"records during the warm rounds: stored {shipped['kubelambda_agent_log_records_stored_total']:.0f}, "
        f"dropped {shipped['kubelambda_agent_log_records_dropped_total']:.0f}"
    )
    print(
        f"\nlogs written per second through one agent before drops begin: paced for {args.paced_seconds:g} s a rate"
    )
    print(f"{'target':24} {'lines/s':>10} {'printed/s':>12} {'stored':>10} {'dropped':>10}")
    for row in paced:
        print(row)
    print("\none invocation printing N lines as fast as it can")
    print(f"{'target':24} {'lines':>8} {'printed/s':>14} {'stored/s':>12} {'dropped':>10}")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
