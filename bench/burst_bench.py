"""Bursts from zero on the local cluster. Figures, never assertions.

1. ``--calls`` concurrent first calls to one function at zero (perInstance 1, maxInstances = calls, no warm pool,
   a handler that sleeps ``--sleep`` seconds so that the calls overlap): time until every call is answered, the
   answers by status (none may be lost; 5xx and 429 are counted), and the instances the autoscaler asked for and
   got over time (from the Deployment's spec.replicas and ready replicas, sampled every 0.25 s), as instances
   per second — printed beside Lambda's documented scaling rate (1,000 execution environments per 10 s per
   function) and beside the plain scale-up of the same pods in the same run: the function's own pod template in
   a Deployment of its own, scaled 0 → calls by one write, time until all are ready.
2. ``--functions`` different functions at zero woken by one call each, at once: time until all are answered.

Run: ``make bench-burst`` (or ``.venv/bin/python bench/burst_bench.py --calls 200 --functions 100``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from _common import pct, platform, wait
from kubelambda.kube import KubeClient, resource_path

NS = "bench-burst"
FN_API = "kubelambda.io/v1alpha1"
LAMBDA_RATE = 1000 / 10  # environments per second per function (AWS Lambda's documented scaling rate)
PLAIN_LABEL = "bench.kubelambda.io/plain"


def function(name: str, *, max_instances: int, sleep: float) -> dict[str, Any]:
    return {
        "apiVersion": FN_API,
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "timeoutSeconds": 60,
            "code": {
                "inline": {
                    "app.py": f"import time\n\ndef handler(event, context):\n    time.sleep({sleep})\n    return event\n"
                }
            },
            "scaling": {"minInstances": 0, "maxInstances": max_instances, "warmPool": False},
            "concurrency": {"perInstance": 1},
        },
    }


async def ready_function(kube: KubeClient, name: str) -> None:
    await wait(
        lambda: kube.get(resource_path(FN_API, "functions", namespace=NS, name=name)),
        lambda f: any(
            c["type"] == "Ready" and c["status"] == "True" for c in f.get("status", {}).get("conditions", [])
        ),
        f"Function {name} Ready",
        300,
        tolerate_errors=True,  # an API request timing out at load 40+ is "not yet"
    )


async def call(http: aiohttp.ClientSession, url: str, started: float) -> tuple[int, float, bool]:
    try:
        async with http.post(url, data=b"{}", timeout=aiohttp.ClientTimeout(total=300)) as resp:
            await resp.read()
            return (
                resp.status,
                time.monotonic() - started,
                resp.headers.get("X-Kubelambda-Cold-Start") == "true",
            )
    except (aiohttp.ClientError, TimeoutError):
        return 0, time.monotonic() - started, False


async def sample_deployment(
    kube: KubeClient, name: str, started: float, out: list[tuple[float, int, int]]
) -> None:
    path = resource_path("apps/v1", "deployments", namespace=NS, name=name)
    while True:
        try:
            dep = await kube.get(path)
        except (aiohttp.ClientError, TimeoutError):  # the API server at load 40+: the next sample
            continue
        out.append(
            (
                time.monotonic() - started,
                int(dep["spec"].get("replicas", 0)),
                int(dep.get("status", {}).get("readyReplicas", 0)),
            )
        )
        await asyncio.sleep(0.25)


def first_reaching(samples: list[tuple[float, int, int]], index: int, level: int) -> float:
    return next((s[0] for s in samples if s[index] >= level), float("nan"))


async def plain_scale_up(kube: KubeClient, n: int) -> tuple[float, float]:
    """The burst function's pod template in a Deployment of its own, scaled 0 → n by one write: (seconds
    until the first pod is ready, seconds until all n are ready)."""
    dep = await kube.get(resource_path("apps/v1", "deployments", namespace=NS, name="burst"))
    template = dep["spec"]["template"]
    template["metadata"] = {"labels": {PLAIN_LABEL: "plain"}}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "plain", "namespace": NS},
        "spec": {"replicas": 0, "selector": {"matchLabels": {PLAIN_LABEL: "plain"}}, "template": template},
    }
    await kube.create(resource_path("apps/v1", "deployments", namespace=NS), body)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    await kube.patch(
        resource_path("apps/v1", "deployments", namespace=NS, name="plain", subresource="scale"),
        {"spec": {"replicas": n}},
    )
    sampler = asyncio.create_task(sample_deployment(kube, "plain", started, samples))
    try:
        await wait(
            lambda: asyncio.sleep(0, samples[-1][2] if samples else 0), lambda r: r >= n, "plain ready", 600
        )
    finally:
        sampler.cancel()
    return first_reaching(samples, 2, 1), first_reaching(samples, 2, n)


def decision_trace(gateway_log: Path, name: str, since: float) -> list[str]:
    """The scale writes the gateway logged for ``name`` from ``since`` (wall clock) on: the activator's first one
    and every autoscaler decision that changed the Deployment's scale, with its reason (panic or stable)."""
    lines = []
    for line in gateway_log.read_text(errors="replace").splitlines():
        if f"Scaled Deployment {NS}/{name} " not in line and f"Scaled {NS}/{name} " not in line:
            continue
        at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # logging's asctime, local
        if at >= since - 1:
            lines.append(f"+{at - since:5.1f} s  {line.split(': ', 1)[1]}")
    return lines


async def one_function_burst(
    kube: KubeClient, http: aiohttp.ClientSession, gateway: str, calls: int, sleep: float, gateway_log: Path
) -> None:
    await kube.create(
        resource_path(FN_API, "functions", namespace=NS), function("burst", max_instances=calls, sleep=sleep)
    )
    await ready_function(kube, "burst")
    url = f"{gateway}/2015-03-31/functions/{NS}/burst/invocations"
    samples: list[tuple[float, int, int]] = []
    started, wall = time.monotonic(), time.time()
    sampler = asyncio.create_task(sample_deployment(kube, "burst", started, samples))
    results = await asyncio.gather(*(call(http, url, started) for _ in range(calls)))
    elapsed = time.monotonic() - started
    # The instances asked for keep starting after the calls are answered: sampled until they are all ready.
    with contextlib.suppress(TimeoutError):
        await wait(
            lambda: asyncio.sleep(0.25, samples[-1]), lambda s: s[2] >= s[1], "the instances asked for", 180
        )
    sampler.cancel()
    statuses = Counter(status for status, _, _ in results)
    latencies = [t * 1000 for _, t, _ in results]
    peak_asked = max(s[1] for s in samples)
    peak_ready = max(s[2] for s in samples)
    t_ready = first_reaching(samples, 2, peak_ready)
    t_first = first_reaching(samples, 2, 1)
    rate = (peak_ready - 1) / (t_ready - t_first) if peak_ready > 1 and t_ready > t_first else float("nan")
    print(
        f"\n== 1. {calls} concurrent first calls to one function at zero (perInstance 1, handler sleeps {sleep} s)"
    )
    print(
        f"  all answered after {elapsed:.1f} s; answers by status: {dict(sorted(statuses.items()))} (0 = no answer)"
    )
    print(
        f"  latency p50 {pct(latencies, 0.5):.0f} ms, p95 {pct(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms"
    )
    print(f"  cold-start answers: {sum(1 for _, _, c in results if c)}")
    print(f"  instances asked for (peak spec.replicas) {peak_asked}; ready at peak {peak_ready}")
    print(f"  first instance ready at {t_first:.1f} s; {peak_ready} ready at {t_ready:.1f} s")
    print("  the scale writes (activator, then the autoscaler's decisions), from the gateway's log:")
    for line in decision_trace(gateway_log, "burst", wall):
        print(f"    {line}")
    # The plain scale-up's pods need the node's room (each requests the function's memory): the burst's go first.
    await kube.patch(
        resource_path(FN_API, "functions", namespace=NS, name="burst"),
        {"spec": {"scaling": {"maxInstances": 1}}},
    )
    # (Pods still terminating keep their requests: the node has room for both sets, see main.)
    await wait(
        lambda: kube.list(
            resource_path("v1", "pods", namespace=NS),
            params={"labelSelector": "kubelambda.io/function=burst"},
        ),
        lambda pods: sum(1 for pod in pods["items"] if "deletionTimestamp" not in pod["metadata"]) <= 1,
        "the burst's instances asked away",
        600,
        tolerate_errors=True,
    )
    plain_first, plain_all = await plain_scale_up(kube, peak_ready)
    plain_rate = (peak_ready - 1) / (plain_all - plain_first) if plain_all > plain_first else float("nan")
    print(
        f"  {'instances per second (after the first)':<44}{'kubelambda':>14}{'plain Deployment':>18}{'Lambda':>10}"
    )
    print(f"  {'':<44}{rate:>14.1f}{plain_rate:>18.1f}{LAMBDA_RATE:>10.0f}")
    print(
        f"  (plain: the same pod template scaled 0 -> {peak_ready} by one write in the same run, once the burst's"
        f" instances are gone: first ready {plain_first:.1f} s, all ready {plain_all:.1f} s; Lambda: 1,000"
        " environments per 10 s per function)"
    )


async def many_functions(kube: KubeClient, http: aiohttp.ClientSession, gateway: str, n: int) -> None:
    path = resource_path(FN_API, "functions", namespace=NS)
    names = [f"wake-{i:03d}" for i in range(n)]
    for name in names:
        await kube.create(path, function(name, max_instances=1, sleep=0))
    for name in names:
        await ready_function(kube, name)
    started = time.monotonic()
    results = await asyncio.gather(
        *(call(http, f"{gateway}/2015-03-31/functions/{NS}/{name}/invocations", started) for name in names)
    )
    elapsed = time.monotonic() - started
    statuses = Counter(status for status, _, _ in results)
    latencies = [t * 1000 for _, t, _ in results]
    print(f"\n== 2. {n} different functions at zero, one call each, at once")
    print(f"  all answered after {elapsed:.1f} s; answers by status: {dict(sorted(statuses.items()))}")
    print(f"  latency p50 {pct(latencies, 0.5):.0f} ms, p95 {pct(latencies, 0.95):.0f} ms")
    print(f"  functions woken per second: {n / elapsed:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=2.0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each part as soon as it is measured
    # Room on the node for every instance's memory request (128 MB each; a no-op instance uses ~30 MB): the
    # process node offers what the machine has, unless told more (docs/local-cluster.md).
    machine_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    # The burst's pods (some may still be terminating) and the plain Deployment's, and the platform's own (~3 GB).
    need_mb = 128 * max(2 * args.calls, args.functions) + 8192
    # Each instance requests 8m CPU (a tenth of its 128 MB share): 2 x 200 of them do not fit in 2 CPUs.
    need_cpus = -(-(2 * args.calls + 100) * 8 // 1000)
    serve_args = (
        "--node-memory-mb",
        str(max(machine_mb, need_mb)),
        "--node-cpus",
        str(max(os.cpu_count() or 1, need_cpus)),
    )
    async with platform("burst", NS, connections=0, serve_args=serve_args) as p:
        kube, http = p.kube, p.http
        if args.calls:
            gateway_log = p.state_dir / "logs" / "kubelambda-gateway.log"
            await one_function_burst(kube, http, p.gateway, args.calls, args.sleep, gateway_log)
        if args.functions:
            await many_functions(kube, http, p.gateway, args.functions)
        print(f"\n(load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)")


if __name__ == "__main__":
    asyncio.run(main())
