"""Log shipping's cost (docs/logs.md): the same agent with shipping on beside off, in the same run.

    .venv/bin/python bench/logs_bench.py [--requests 2000] [--rounds 3] [--burst 20000 100000] [--before AGENT]

- Warm invocations of a Python handler that prints one line (4 records an invocation with START, END, REPORT),
  one worker, one connection, closed loop: p50/p99 through an agent shipping to a real nats-server (JetStream,
  file storage, the namespace's stream as the operator makes it) beside an agent with shipping off, interleaved
  in rounds so that a noisy neighbour hurts both alike.
- Log records per second through one agent: one invocation prints N lines as fast as Python can; how fast the
  agent's pipe took them with shipping off (the baseline) and on, how many the store acknowledged per second
  until the queue was empty, and how many were dropped (the bounded queue, 8,192 records, full).
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
import sys
import tempfile
import time
from pathlib import Path

import nats

from _common import pct
from agent_bench import Target, agent_target, load
from kubelambda import logstore
from kubelambda.devcluster.servers import NatsServer
from kubelambda.runtimes import runtime_images_dir

NAMESPACE = "bench"
HANDLER = """import sys


def handler(event, context):
    n = (event or {}).get("lines", 1)
    write = sys.stdout.write
    for i in range(n):
        write(f"line {i} of a burst of {n}, padded to about one hundred bytes like a typical log line......\\n")
    sys.stdout.flush()
    return None
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(t: Target) -> dict[str, float]:
    conn = http.client.HTTPConnection(t.host, t.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("kubelambda_agent_log_records_")
    }


def invoke_lines(t: Target, lines: int) -> float:
    """Seconds one invocation printing ``lines`` lines took, as the caller saw it."""
    conn = http.client.HTTPConnection(t.host, t.port, timeout=300)
    try:
        t0 = time.perf_counter()
        conn.request(
            "POST", t.path, body=json.dumps({"lines": lines}), headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{t.name} answered {resp.status}")
        return time.perf_counter() - t0
    finally:
        conn.close()


def burst(t: Target, lines: int, shipping: bool) -> str:
    before = metrics(t) if shipping else {}
    t0 = time.perf_counter()
    took = invoke_lines(t, lines)
    if not shipping:
        return f"{t.name:24} {lines:>8} {lines / took:>14.0f} {'-':>12} {'-':>10}"
    while True:  # until the queue is empty and everything sent is acknowledged (or counted as dropped)
        now = metrics(t)
        if (
            now["kubelambda_agent_log_records_buffered"] == 0
            and now["kubelambda_agent_log_records_inflight"] == 0
        ):
            break
        time.sleep(0.02)
    stored = (
        now["kubelambda_agent_log_records_stored_total"] - before["kubelambda_agent_log_records_stored_total"]
    )
    dropped = (
        now["kubelambda_agent_log_records_dropped_total"]
        - before["kubelambda_agent_log_records_dropped_total"]
    )
    settled = time.perf_counter() - t0
    return f"{t.name:24} {lines:>8} {lines / took:>14.0f} {stored / settled:>12.0f} {int(dropped):>10}"


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
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--burst", type=int, nargs="*", default=[20000, 100000], help="lines of one invocation"
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
    await server.start()
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
            nats_pid = server.procs[0].pid
            for _ in range(args.rounds):
                for t in targets:
                    assert t.proc is not None
                    agent0, nats0 = cpu_seconds(t.proc.pid), cpu_seconds(nats_pid)
                    load(t, args.requests)
                    cpu[t.name] += cpu_seconds(t.proc.pid) - agent0
                    nats_cpu[t.name] += cpu_seconds(nats_pid) - nats0
            shipped = metrics(on)  # this tree's agent
            for lines in args.burst:
                rows.append(burst(off, lines, shipping=False))
                rows.extend(burst(t, lines, shipping=True) for t in targets[1:])
        finally:
            for t in targets:
                t.stop()
    finally:
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"warm invocations, Python handler printing 1 line, 1 worker, 1 connection, {args.rounds}x{args.requests}"
    )
    print(
        f"{'target':24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'agent CPU us/inv':>17} {'NATS CPU us/inv':>16}"
    )
    for t in targets:
        n = len(t.latencies)
        print(
            f"{t.name:24} {n / t.seconds:8.0f} {pct(t.latencies, 0.5) * 1e3:8.3f} "
            f"{pct(t.latencies, 0.99) * 1e3:8.3f} {cpu[t.name] / n * 1e6:17.1f} {nats_cpu[t.name] / n * 1e6:16.1f}"
        )
    p50_off, p99_off = pct(off.latencies, 0.5), pct(off.latencies, 0.99)
    for t in targets[1:]:
        p50_on, p99_on = pct(t.latencies, 0.5), pct(t.latencies, 0.99)
        print(
            f"{t.name} vs off: p50 {(p50_on / p50_off - 1) * 100:+.1f} %, p99 {(p99_on / p99_off - 1) * 100:+.1f} %"
        )
    print(
        f"records during the warm rounds: stored {shipped['kubelambda_agent_log_records_stored_total']:.0f}, "
        f"dropped {shipped['kubelambda_agent_log_records_dropped_total']:.0f}"
    )
    print("\none invocation printing N lines as fast as it can")
    print(f"{'target':24} {'lines':>8} {'printed/s':>14} {'stored/s':>12} {'dropped':>10}")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
