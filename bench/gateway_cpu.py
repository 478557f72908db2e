"""The gateway's cost per warm invoke in CPU time, machine-independent-ish: CPU microseconds per call of the
gateway process (user + system, from /proc), beside, in the same run and interleaved round by round:

- a floor proxy: a minimal reverse proxy on the same event loop and HTTP stack (uvloop, aiohttp server + one
  pooled aiohttp client session, same Python), doing nothing but forwarding the body to the same agent's ``/invoke``
  and the answer back: what any Python proxy on this stack must pay (the gateway forwards over our own client,
  kubelambda.plainhttp, not aiohttp's: it can go below this floor);
- the instance itself: its agent process and its runtime process, per call, from the same calls.

Latency and throughput of the three paths (gateway, floor proxy, agent directly) come from the same load.

``--payload-kb N``: each call carries a batch of DynamoDB stream records of about N KB (100 records ≈ 55 KB, about
what a database or stream bridge sends at batch 100) and the function answers ``{"batchItemFailures": []}``, as a
bridge's function does: the cost of the bytes on the way in (body read, checks, forwarding).

Run: ``make bench-gateway-cpu`` (or ``.venv/bin/python bench/gateway_cpu.py --requests 3000``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from _common import gateway_process, pct, platform, post_load, wait, wait_answering, warm_function
from kubelambda.agentauth import bearer, function_token
from kubelambda.kube import KubeClient, resource_path

NS = "bench-cpu"
BEFORE, AFTER = "gateway before", "gateway after"  # --before: the same gateway process at two commits
# The no-op echoes its event; a batch of records is answered as a bridge's function answers it (--payload-kb).
HANDLER = (
    "def handler(event, context):\n    return {'batchItemFailures': []} if 'Records' in event else event\n"
)
SMALL_EVENT = b'{"x": 1}'


def stream_batch(kb: int) -> bytes:
    """A DynamoDB Streams event of about ``kb`` KB (records in the shape the PostgreSQL bridge delivers,
    NEW_IMAGE view): 100 records are about 55 KB."""
    records = []
    while True:
        i = len(records)
        records.append(
            {
                "eventID": f"{i:032x}",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1764979200 + i,
                    "Keys": {"id": {"N": str(i)}},
                    "NewImage": {
                        "id": {"N": str(i)},
                        "customer": {"S": f"customer-{i % 97}"},
                        "status": {"S": "shipped"},
                        "total": {"N": f"{i * 3.17:.2f}"},
                    },
                    "SequenceNumber": f"{i:021d}",
                    "SizeBytes": 72,
                    "StreamViewType": "NEW_IMAGE",
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:demo:table/orders/stream/2026-12-06T00:00:00.000",
            }
        )
        body = json.dumps({"Records": records}).encode()
        if len(body) >= kb * 1024:
            return body


FLOOR_PROXY = """
import sys
import aiohttp
import uvloop
from aiohttp import web

target = sys.argv[2]
headers = {"Content-Type": "application/json", "Authorization": sys.argv[3]}  # the agent answers the gateway only

async def session(app):
    app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["http"].close()

async def forward(request):
    body = await request.read()
    async with request.app["http"].post(target, data=body, headers=headers) as resp:
        answer = await resp.read()
        return web.Response(status=resp.status, body=answer, content_type="application/json")

app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_post("/invoke", forward)
# On the gateway's event loop (uvloop, kubelambda/cli/platform.py): the same loop and HTTP stack.
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=uvloop.new_event_loop())
"""


# Runs a Python program (``-m module`` or ``-c code``, then its arguments) under cProfile, switched on by the first
# SIGUSR1 and off (written to $KL_BENCH_PROFILE) by the second: the calls of exactly the measured requests.
PROFILED = """
import cProfile, gc, json, os, runpy, signal, sys, time
profile, on, collections = cProfile.Profile(), [], {}
def collected(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
    elif on:
        count, spent = collections.get(info["generation"], (0, 0.0))
        collections[info["generation"]] = (count + 1, spent + time.perf_counter() - started[0])
gc.callbacks.append(collected)
def toggle(*_):
    out = os.environ["KL_BENCH_PROFILE"]
    if on:
        profile.disable()
        on.clear()
        profile.dump_stats(out + ".tmp")
        with open(out + ".gc", "w") as f:
            json.dump({"collections": collections, "objects": len(gc.get_objects())}, f)
        os.replace(out + ".tmp", out)
    else:
        collections.clear()
        on.append(1)
        profile.enable()
signal.signal(signal.SIGUSR1, toggle)
mode, what, *rest = sys.argv[1:]
if mode == "-m":
    sys.argv = [what, *rest]
    runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(what, "<floor>", "exec"), {"__name__": "__main__"})
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def descendants(root: int) -> list[int]:
    """Every process under ``root`` (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(ppid_of(int(entry.name)), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def component_pid(root: int, component: str) -> int:
    """The process of ``kubelambda <component>`` (gateway, operator) under the local cluster ``root``."""
    want = [b"kubelambda", component.encode()]
    for pid in descendants(root):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[-3:-1] == want or args[-2:] == want:
            return pid
    raise RuntimeError(f"no {component} process under the local cluster")


def gateway_pid(root: int) -> int:
    return component_pid(root, "gateway")


def instance_pids(root: int, pod_ip: str) -> tuple[int, list[int]]:
    """(agent pid, runtime pids) of the pod with ``pod_ip``: its processes carry KUBELAMBDA_POD_IP; the agent
    is the one whose parent is not one of them."""
    mine = []
    for pid in descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"KUBELAMBDA_POD_IP={pod_ip}".encode() in env:
            mine.append(pid)
    agents = [p for p in mine if ppid_of(p) not in mine]
    if len(agents) != 1:
        raise RuntimeError(f"expected one agent process for pod {pod_ip}, found {agents} among {mine}")
    runtime = descendants(agents[0])
    if not runtime:
        raise RuntimeError(f"no runtime process under the agent {agents[0]} of pod {pod_ip}")
    return agents[0], runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def warm_pod(kube: KubeClient) -> dict[str, Any]:
    def ready(pods: list[dict[str, Any]]) -> bool:
        return bool(pods) and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pods[0].get("status", {}).get("conditions", [])
        )

    async def pods() -> list[dict[str, Any]]:
        listing = await kube.list(
            resource_path("v1", "pods", namespace=NS), params={"labelSelector": "kubelambda.io/function=noop"}
        )
        items: list[dict[str, Any]] = listing["items"]
        return items

    return (await wait(pods, ready, "the function's instance ready", 180))[0]  # type: ignore[no-any-return]


async def measure(
    http: aiohttp.ClientSession,
    urls: dict[str, str],
    pids: dict[str, list[int]],
    requests: int,
    connections: int,
    headers: dict[str, dict[str, str]],
    rounds: int = 3,
    body: bytes = SMALL_EVENT,
) -> None:
    """``headers``: per path, what its requests send over the session's (the developer's token); ``body``: each
    call's event."""
    for path, url in urls.items():
        await post_load(http, url, 300, connections, body=body, headers=(headers.get(path, {}),))  # warm up
    cpu: dict[tuple[str, str], list[float]] = {}  # (path, process) → CPU µs per call, one per round
    load: dict[str, list[tuple[float, list[float]]]] = {path: [] for path in urls}
    idle: dict[str, list[float]] = {name: [] for name in pids}
    for _ in range(rounds):
        # What each process burns with no calls at all (watches, samplers), per second, this round.
        before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
        started = time.perf_counter()
        await asyncio.sleep(2)
        spent = time.perf_counter() - started
        for name, ps in pids.items():
            idle[name].append(1e6 * (sum(cpu_seconds(p) for p in ps) - before[name]) / spent)
        for path, url in urls.items():
            before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
            started = time.perf_counter()
            load[path].append(
                await post_load(http, url, requests, connections, body=body, headers=(headers.get(path, {}),))
            )
            spent = time.perf_counter() - started
            for name, ps in pids.items():
                used = sum(cpu_seconds(p) for p in ps) - before[name]
                # Net of the process's idle burn over the same time (measured just before, this round).
                net = 1e6 * used - idle[name][-1] * spent
                cpu.setdefault((path, name), []).append(net / requests)
    event = "a no-op Python function" if body == SMALL_EVENT else f"a function taking {len(body)} B events"
    print(
        f"\n== warm invokes of {event}, {connections} connections, {rounds} interleaved rounds"
        f" x {requests} calls per path (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"  {'path':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}   CPU us per call, net of idle (median of rounds)"
    )
    names = list(pids)
    print(f"  {'':<24}{'':>27}   " + "".join(f"{n:>14}" for n in names))
    for path in urls:
        rps = pct([r for r, _ in load[path]], 0.5)
        lat = [v for _, ls in load[path] for v in ls]
        row = "".join(f"{pct(cpu[(path, n)], 0.5):>14.0f}" for n in names)
        print(f"  {path:<24}{rps:>9.0f}{pct(lat, 0.5):>9.2f}{pct(lat, 0.99):>9.2f}   {row}")
    print(f"  {'idle, us per second':<24}{'':>27}   " + "".join(f"{pct(idle[n], 0.5):>14.0f}" for n in names))
    gw = pct(cpu[("gateway", "gateway")], 0.5)
    floor = pct(cpu[("floor proxy", "floor proxy")], 0.5)
    agent = pct(cpu[("agent directly", "agent")], 0.5)
    print(
        f"\n  the gateway: {gw:.0f} us per call beside the floor proxy's {floor:.0f} us"
        f" ({gw / floor:.2f}x; ours: {gw - floor:+.0f} us), and the agent's {agent:.0f} us"
    )
    if (BEFORE, BEFORE) in cpu:
        old, new = pct(cpu[(BEFORE, BEFORE)], 0.5), pct(cpu[(AFTER, AFTER)], 0.5)
        print(
            f"  {BEFORE}: {old:.0f} us per call, {AFTER}: {new:.0f} us ({new - old:+.0f} us;"
            f" over the floor: {old - floor:+.0f} -> {new - floor:+.0f} us; same run, rounds interleaved)"
        )
    print(
        "  (CPU of a process during a path's calls less its idle rate over the same time, divided by the calls;"
    )
    print(
        "   a process a path does not use shows about 0. CPU time, unlike latency, barely depends on the load)"
    )


GROUPS = (
    "kubelambda",
    "aiohttp",
    "multidict",
    "yarl",
    "prometheus_client",
    "opentelemetry",
    "logging",
    "asyncio",
)


def group_of(filename: str) -> str:
    if filename == "~":
        return "builtins"
    return next((g for g in GROUPS if f"/{g}/" in filename), "other")


def call_counts(path: Path, calls: int) -> dict[str, tuple[float, float]]:
    """Per function ("module:line(name)"): (calls, own CPU us under the profiler) per invoke, from a cProfile dump."""
    out: dict[str, tuple[float, float]] = {}
    for (filename, line, name), (_, ncalls, tottime, _, _) in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
        where = "~" if filename == "~" else f"{group_of(filename)}/{Path(filename).name}:{line}"
        out[f"{where}({name})"] = (ncalls / calls, 1e6 * tottime / calls)
    return out


async def count_syscalls(
    http: aiohttp.ClientSession, url: str, pid: int, calls: int, connections: int, body: bytes
) -> dict[str, float]:
    """System calls per invoke of process ``pid`` (and its threads) over ``calls`` invokes (strace -c)."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = await asyncio.create_subprocess_exec("strace", "-c", "-f", "-p", str(pid), "-o", out.name)
        await asyncio.sleep(1)  # attached (strace says so on stderr only)
        await post_load(http, url, calls, connections, body=body)
        tracer.send_signal(signal.SIGINT)
        await tracer.wait()
        counts = {}
        for line in Path(out.name).read_text().splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3]) / calls
        return counts


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``, by "name/tid" (Linux /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            out[f"{name}/{task.name}"] = cpu_seconds_of(task / "stat")
    return out


async def count_calls(
    http: aiohttp.ClientSession,
    targets: dict[str, tuple[str, int, Path]],
    calls: int,
    connections: int,
    dump_to: Path | None,
    body: bytes,
) -> None:
    """Python function calls per invoke (cProfile, deterministic: not load noise) of each profiled process
    (``targets``: name → (url, pid, dump file)), for ``calls`` warm invokes, grouped by package."""
    for url, _, _ in targets.values():
        await post_load(http, url, 300, connections, body=body)  # warm up, unprofiled
    counts, threads, collected = {}, {}, {}
    for name, (url, pid, out) in targets.items():
        before = thread_cpu(pid)
        os.kill(pid, signal.SIGUSR1)
        await post_load(http, url, calls, connections, body=body)
        os.kill(pid, signal.SIGUSR1)
        after = thread_cpu(pid)
        await wait(partial(asyncio.sleep, 0, out.exists), lambda exists: exists(), f"{name}'s profile", 30)
        counts[name] = call_counts(out, calls)
        threads[name] = {t: 1e6 * (cpu - before.get(t, 0.0)) / calls for t, cpu in after.items()}
        collected[name] = json.loads(out.with_suffix(".prof.gc").read_text())
        if dump_to is not None:
            shutil.copy(out, dump_to / out.name)
    names = list(counts)
    syscalls = {
        name: await count_syscalls(http, url, pid, calls, connections, body)
        for name, (url, pid, _) in targets.items()
    }
    print(f"\n== system calls per warm invoke (strace -c -f, {calls} calls, unprofiled)")
    for call in sorted(
        {c for per in syscalls.values() for c in per}, key=lambda c: -syscalls[names[0]].get(c, 0)
    ):
        print(f"  {call:<24}" + "".join(f"{syscalls[n].get(call, 0):>16.2f}" for n in names))
    print(f"  {'all':<24}" + "".join(f"{sum(syscalls[n].values()):>16.2f}" for n in names))
    print("\n== where the CPU goes (profiled, so inflated), per invoke")
    for name in names:
        busy = ", ".join(
            f"{t} {us:.0f} us" for t, us in sorted(threads[name].items(), key=lambda kv: -kv[1]) if us >= 1
        )
        gcs = ", ".join(
            f"gen{g} {c / calls:.2f} x {1e6 * sec / max(c, 1):.0f} us"
            for g, (c, sec) in sorted(collected[name]["collections"].items())
        )
        print(
            f"  {name}: threads: {busy}; collections: {gcs or 'none'} ({collected[name]['objects']} objects)"
        )
    print(
        f"\n== Python function calls per warm invoke (cProfile over {calls} calls, {connections} connections)"
    )
    print(f"  {'package':<20}" + "".join(f"{n:>16}" for n in names))
    for group in ("all", *GROUPS, "builtins", "other"):
        row = [
            sum(
                c
                for k, (c, _) in counts[n].items()
                if group == "all" or k.startswith(f"{group}/") or (group == "builtins" and k.startswith("~"))
            )
            for n in names
        ]
        print(f"  {group:<20}" + "".join(f"{v:>16.1f}" for v in row))
    first = counts[names[0]]
    print(f"\n  the {names[0]}'s 40 most called functions (calls per invoke; own us under the profiler)")
    for key, (c, us) in sorted(first.items(), key=lambda kv: -kv[1][0])[:40]:
        others = "".join(f"{counts[n].get(key, (0.0, 0.0))[0]:>8.1f}" for n in names[1:])
        print(f"  {c:>8.1f}{others} {us:>8.1f} us  {key}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy (raw, from PyPI) of the gateway to this file; with --count-calls: a folder for the cProfile dumps",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of another commit (a git worktree): two more gateway processes on the same cluster, with"
        " the same settings, one running that checkout's operator/ code and one this checkout's, measured in the"
        " same rounds (before/after a change in the same machine state)",
    )
    parser.add_argument(
        "--count-calls",
        type=int,
        metavar="N",
        help="instead of CPU time: Python function calls per invoke over N calls (cProfile) of a profiled gateway"
        " and floor proxy, by package, and the gateway's most called functions",
    )
    parser.add_argument(
        "--payload-kb",
        type=int,
        default=0,
        metavar="N",
        help="each call's event: a batch of DynamoDB stream records of about N KB (default: the no-op's small event)",
    )
    args = parser.parse_args()
    event = stream_batch(args.payload_kb) if args.payload_kb else SMALL_EVENT
    floor: asyncio.subprocess.Process | None = None
    extra: list[subprocess.Popen[bytes]] = []
    async with platform("gwcpu", NS) as p:
        proc, kube, http = p.proc, p.kube, p.http
        try:
            body = warm_function("noop", NS, HANDLER, per_instance=args.connections)
            await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), body)
            pod_ip = (await warm_pod(kube))["status"]["podIP"]
            port = free_port()
            # What the gateway shows the agent (docs/security.md): the function's token, from the platform's key.
            agent_auth = bearer(function_token((p.state_dir / "agent.key").read_text().strip(), NS, "noop"))
            floor = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOOR_PROXY, str(port), f"http://{pod_ip}:8080/invoke",
                agent_auth["Authorization"],
            )  # fmt: skip
            floor_url = f"http://127.0.0.1:{port}/invoke"

            async def floor_status() -> int:
                async with http.post(floor_url, data=b"{}") as resp:
                    return resp.status

            await wait(
                floor_status, lambda s: s == 200, "the floor proxy answering", 60, tolerate_errors=True
            )
            if args.count_calls:
                targets = {}
                # With --before: the gateway at that checkout too (first, so that its most called are listed).
                names = (BEFORE, "gateway", "floor proxy") if args.before else ("gateway", "floor proxy")
                for name in names:
                    out = p.state_dir / f"{name.replace(' ', '-')}.prof"
                    if name != "floor proxy":
                        code = (
                            {"PYTHONPATH": str(args.before.resolve() / "operator")} if name == BEFORE else {}
                        )
                        gw, url = gateway_process(
                            p.state_dir,
                            f"counted-{name.replace(' ', '-')}",
                            {"KL_BENCH_PROFILE": str(out), **code},
                            ("-c", PROFILED),
                        )
                        extra.append(gw)
                        url, pid = f"{url}/2015-03-31/functions/{NS}/noop/invocations", gw.pid
                    else:
                        fport = free_port()
                        counted = subprocess.Popen(  # noqa: ASYNC220 (killed with the others, in finally)
                            [sys.executable, "-c", PROFILED, "-c", FLOOR_PROXY, str(fport), f"http://{pod_ip}:8080/invoke", agent_auth["Authorization"]],
                            env={**os.environ, "KL_BENCH_PROFILE": str(out)},
                        )  # fmt: skip
                        extra.append(counted)
                        url, pid = f"http://127.0.0.1:{fport}/invoke", counted.pid
                    await wait_answering(http, url, f"the profiled {name} answering", body=b"{}", timeout=180)
                    targets[name] = (url, pid, out)
                await count_calls(http, targets, args.count_calls, args.connections, args.profile, event)
                return
            agent, runtime = instance_pids(proc.pid, pod_ip)
            pids = {
                "gateway": [gateway_pid(proc.pid)],
                "floor proxy": [floor.pid],
                "agent": [agent],
                "runtime": runtime,
            }
            urls = {
                "gateway": f"{p.gateway}/2015-03-31/functions/{NS}/noop/invocations",
                "floor proxy": floor_url,
                "agent directly": f"http://{pod_ip}:8080/invoke",
            }
            if args.before is not None:
                code = {BEFORE: {"PYTHONPATH": str(args.before.resolve() / "operator")}, AFTER: {}}
                for name, env in code.items():
                    gw, url = gateway_process(p.state_dir, name.replace(" ", "-"), env)
                    extra.append(gw)
                    pids[name] = [gw.pid]
                    urls[name] = f"{url}/2015-03-31/functions/{NS}/noop/invocations"
                    await wait_answering(http, urls[name], f"{name} answering", body=b"{}", timeout=180)
            spy = None
            if args.profile:
                spy = await asyncio.create_subprocess_exec(
                    "py-spy", "record", "--pid", str(pids["gateway"][0]), "--format", "raw",
                    "--rate", "200", "-o", str(args.profile),
                )  # fmt: skip
            await measure(
                http,
                urls,
                pids,
                args.requests,
                args.connections,
                {"agent directly": agent_auth},
                args.rounds,
                event,
            )
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                await spy.wait()
        finally:
            if floor is not None and floor.returncode is None:
                floor.terminate()
                await floor.wait()
            for gw in extra:
                gw.terminate()
                gw.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
