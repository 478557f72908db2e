"""Many Functions present (issue 24, item 1's second half): the operator's and the gateway's memory (RSS), and
the gateway's routing cost per warm call (CPU microseconds of the gateway process, from /proc, and latency),
first with 10 Functions present, then at each count of ``--functions`` (1,000, 3,000 and 10,000 by default), on
the same platform in the same run.

Every Function but the one called has ``minInstances: 0``: the operator reconciles each into its objects
(ConfigMap, Service, NetworkPolicy, a Deployment at 0 replicas) and a status, and the gateway knows each, but
no pod runs for them. At each count the run waits until every Function's status is written (a watch of the
Functions counts them), or ``--timeout`` seconds, then measures; it prints how long the reconciles took, the
Functions reconciled per second, and per new Function the API requests of every client and the CPU of each
process of the platform. The gateway learns every Function from its watch as soon as it is created, reconciled
or not.

    .venv/bin/python bench/functions_many.py --functions 1000,3000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from typing import Any

import aiohttp
import psutil

from _common import inline_function, pct, platform, post_load
from gateway_cpu import NS, component_pid, cpu_seconds, warm_pod
from kubelambda.kube import ApiError, KubeClient, list_and_watch, resource_path
from kubelambda.operator._pace import backoff_seconds, is_transient
from operator_scale import WriteKey, component_cpu, cpu_delta, label, scrape_writes, write_deltas

FN_API = "kubelambda.io/v1alpha1"
# Calls at once to the one instance (perInstance 1): more wait for its worker, and on a loaded machine past the
# gateway's 2 s slot wait (429), which says nothing of the routing.
CONNECTIONS = 1


def function(name: str, *, min_instances: int = 0) -> dict[str, Any]:
    return inline_function(name, NS, scaling={"minInstances": min_instances, "maxInstances": 1})


async def create_functions(kube: KubeClient, first: int, last: int) -> None:
    """Functions ``fn-<first>`` .. ``fn-<last - 1>``, 20 creates at a time."""
    path = resource_path(FN_API, "functions", namespace=NS)
    todo = iter(range(first, last))

    async def create(name: str) -> None:
        # An API server too loaded to answer a create in time (seen at load 138) is asked again; a create that
        # was stored after all answers 409.
        for attempt in range(5):
            try:
                await kube.create(path, function(name))
                return
            except ApiError as e:
                if e.status == 409:
                    return
                if not is_transient(e) or attempt == 4:
                    raise
            except (TimeoutError, aiohttp.ClientError):
                if attempt == 4:
                    raise
            await asyncio.sleep(backoff_seconds(attempt))

    async def worker() -> None:
        for i in todo:
            await create(f"fn-{i:05d}")

    await asyncio.gather(*(worker() for _ in range(20)))


def reconciled(body: dict[str, Any]) -> bool:
    return bool((body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"])


class Reconciled:
    """Which Functions of :data:`NS` have a status for their generation, kept by a watch: polling lists of every
    Function (10,000 every 10 s) cost the API server more than the operator's own writes, and grew with the
    square of the count (each poll longer, more polls while the operator waits behind them)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.done: set[str] = set()
        self._changed = asyncio.Condition()

    async def _on_list(self, items: list[dict[str, Any]]) -> None:
        self.done = {f["metadata"]["name"] for f in items if reconciled(f)}
        await self._notify()

    async def _on_event(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if kind != "DELETED" and reconciled(body):
            self.done.add(name)
        else:
            self.done.discard(name)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def follow(self) -> None:
        await list_and_watch(
            self.kube, resource_path(FN_API, "functions", namespace=NS), on_list=self._on_list,
            on_event=self._on_event,
        )  # fmt: skip

    async def wait(self, n: int, timeout: float) -> tuple[int, float]:
        """Waits until ``n`` Functions have a status for their generation, or ``timeout`` s: (how many do, the
        seconds it took)."""
        started = time.monotonic()
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.done) >= n), timeout)
        return len(self.done), time.monotonic() - started


async def routing_cost(
    http: aiohttp.ClientSession, url: str, gateway: int, requests: int, rounds: int
) -> tuple[float, float, float]:
    """(gateway CPU us per call net of its idle burn, p50 ms, p99 ms), medians over ``rounds``."""
    await post_load(http, url, 200, CONNECTIONS)
    cpu, latencies = [], []
    for _ in range(rounds):
        before, started = cpu_seconds(gateway), time.perf_counter()
        await asyncio.sleep(2)
        idle = (cpu_seconds(gateway) - before) / (time.perf_counter() - started)
        before, started = cpu_seconds(gateway), time.perf_counter()
        _, lat = await post_load(http, url, requests, CONNECTIONS)
        spent = time.perf_counter() - started
        cpu.append(1e6 * (cpu_seconds(gateway) - before - idle * spent) / requests)
        latencies.extend(lat)
    return pct(cpu, 0.5), pct(latencies, 0.5), pct(latencies, 0.99)


ALL_VERBS = frozenset({"GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE"})


def print_costs(requests: dict[WriteKey, float], cpu: dict[str, float], new: int) -> None:
    """Per new Function: the API requests of every client (the most frequent ones by verb, resource and code),
    and the CPU of each process of the platform, while they were created and reconciled."""
    total = sum(requests.values())
    top = ", ".join(
        f"{label(k)} {v / new:.2f}" for k, v in sorted(requests.items(), key=lambda kv: -kv[1])[:8]
    )
    print(f"  per new Function: {total / new:.1f} API requests ({top})")
    spent = ", ".join(
        f"{name} {1000 * s / new:.1f}" for name, s in sorted(cpu.items(), key=lambda kv: -kv[1])
    )
    print(f"  per new Function, CPU ms: {spent}", flush=True)


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def counts(text: str) -> list[int]:
    """``--functions``: ascending counts, each more than 10 (the first row's)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--functions {text!r}: not comma-separated integers") from None
    if any(v <= 10 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"--functions {text!r}: counts must rise, each above 10")
    return values


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--functions", type=counts, default=[1000, 3000, 10_000], help="counts to measure at, e.g. 1000,3000"
    )
    parser.add_argument("--requests", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds to wait at each count for the reconciles, then measure anyway",
    )
    args = parser.parse_args()
    # (Functions present, reconciled, seconds to create the new ones, seconds waited, operator MB, gateway MB,
    # gateway CPU us/call, p50 ms, p99 ms)
    rows: list[tuple[int, int, float, float, float, float, float, float, float]] = []
    async with platform("many", NS) as p:
        kube, http = p.kube, p.http
        counter = Reconciled(kube)
        following = asyncio.create_task(counter.follow())
        await kube.create(resource_path(FN_API, "functions", namespace=NS), function("noop", min_instances=1))
        await warm_pod(kube)
        await create_functions(kube, 0, 9)
        if (await counter.wait(10, 600))[0] < 10:
            raise TimeoutError("the first 10 Functions were not reconciled within 600 s")
        gateway, operator = component_pid(p.proc.pid, "gateway"), component_pid(p.proc.pid, "operator")
        processes = {"operator": operator, "gateway": gateway}
        url = f"{p.gateway}/2015-03-31/functions/{NS}/noop/invocations"
        cost = await routing_cost(http, url, gateway, args.requests, args.rounds)
        rows.append((10, 10, 0.0, 0.0, rss_mb(operator), rss_mb(gateway), *cost))
        present = 10
        for n in args.functions:
            before = await scrape_writes(kube, verbs=ALL_VERBS), component_cpu(p.proc.pid, processes)
            started = time.monotonic()
            await create_functions(kube, present - 1, n - 1)
            created, new, present = time.monotonic() - started, n - present, n
            # All reconciled, or what the operator did by the deadline (the gateway knows every Function at once).
            done, waited = await counter.wait(n, args.timeout)
            memory = rss_mb(operator), rss_mb(gateway)  # before the calls, so that a failing call keeps them
            requests = write_deltas(before[0], await scrape_writes(kube, verbs=ALL_VERBS))
            spent = cpu_delta(before[1], component_cpu(p.proc.pid, processes))
            print(f"{n} Functions present, {done} reconciled: operator RSS {memory[0]:.0f} MB, "
                  f"gateway RSS {memory[1]:.0f} MB; {new} created in {created:.0f} s, reconciled "
                  f"{waited:.0f} s later: {(done - present + new) / (created + waited):.1f} Functions/s "
                  f"(load {os.getloadavg()[0]:.0f})", flush=True)  # fmt: skip
            print_costs(requests, spent, new)
            cost = await routing_cost(http, url, gateway, args.requests, args.rounds)
            rows.append((n, done, created, waited, *memory, *cost))
        following.cancel()
    print(
        f"\nFunctions present vs the operator's and gateway's RSS and the gateway's cost per warm call "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; --timeout {args.timeout:.0f} s)"
    )
    print(f"\n  {'Functions':>10}{'reconciled':>11}{'created in s':>13}{'waited s':>9}{'operator MB':>12}"
          f"{'gateway MB':>11}{'gw CPU us/call':>15}{'p50 ms':>8}{'p99 ms':>8}")  # fmt: skip
    for n, done, created, waited, op, gw, cpu, p50, p99 in rows:
        print(f"  {n:>10}{done:>11}{created:>13.0f}{waited:>9.0f}{op:>12.0f}{gw:>11.0f}{cpu:>15.0f}"
              f"{p50:>8.2f}{p99:>8.2f}")  # fmt: skip
    for row in rows[1:]:
        print(f"  routing cost with {row[0]} vs 10 Functions: {row[6] / rows[0][6]:.2f}x CPU per call"
              " (target: does not grow)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
