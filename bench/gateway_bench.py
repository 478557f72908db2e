"""Benchmarks of the gateway (issue: gateway). Figures, never assertions.

1. Cold start from zero to first response on the local cluster, p50 / p95 over N runs, with the breakdown seen
   from a pod watch (pod created, scheduled, process started, ready) and the runtime's own Init Duration; beside
   the baseline measured in the same run, interleaved: the same pod (the Function's own pod template) in a plain
   Deployment of its own, scaled 0 -> 1 by a direct write of its scale and invoked on the pod once it is ready,
   without the gateway.
2. Warm throughput and p50 / p99 through the gateway beside calling the same instance's agent directly, in
   the same run, with the same client, connections and payload.

Run: ``make bench-gateway`` (or ``.venv/bin/python bench/gateway_bench.py --cold 20 --requests 3000``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import time
from typing import Any

import aiohttp

from _common import inline_function, pct, platform, post_load, wait
from kubelambda.kube import KubeClient, resource_path

NS = "bench"
HANDLER = "def handler(event, context):\n    return event\n"
PLAIN, PLAIN_LABEL = "plain-cold", "bench.kubelambda.io/baseline"


def fn(name: str, scaling: dict[str, Any]) -> dict[str, Any]:
    return inline_function(name, NS, scaling=scaling)


async def pods(kube: KubeClient, name: str) -> list[dict[str, Any]]:
    listing = await kube.list(
        resource_path("v1", "pods", namespace=NS), params={"labelSelector": f"kubelambda.io/function={name}"}
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


async def plain_pods(kube: KubeClient) -> list[dict[str, Any]]:
    listing = await kube.list(
        resource_path("v1", "pods", namespace=NS), params={"labelSelector": f"{PLAIN_LABEL}={PLAIN}"}
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


async def make_plain(kube: KubeClient) -> None:
    """The baseline's Deployment: the ``cold`` Function's pod template under labels the gateway and the operator
    do not select, 0 replicas."""
    dep = await kube.get(resource_path("apps/v1", "deployments", namespace=NS, name="cold"))
    template = dep["spec"]["template"]
    template["metadata"] = {"labels": {PLAIN_LABEL: PLAIN}}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": PLAIN, "namespace": NS},
        "spec": {"replicas": 0, "selector": {"matchLabels": {PLAIN_LABEL: PLAIN}}, "template": template},
    }
    await kube.create(resource_path("apps/v1", "deployments", namespace=NS), body)


async def scale_plain(kube: KubeClient, replicas: int) -> None:
    await kube.patch(
        resource_path("apps/v1", "deployments", namespace=NS, name=PLAIN, subresource="scale"),
        {"spec": {"replicas": replicas}},
    )


async def plain_cold_start(kube: KubeClient, http: aiohttp.ClientSession) -> dict[str, float]:
    """One baseline run: scale the plain Deployment to 1, watch its pod like ``watch_pod`` does, invoke the pod's
    agent directly once it is ready; returns the same marks (ms from the scale write)."""
    await wait(lambda: plain_pods(kube), lambda p: p == [], "plain Deployment at zero")
    seen: dict[str, float] = {}
    started = time.monotonic()
    await scale_plain(kube, 1)
    await watch_pod(kube, PLAIN, seen, started, lister=plain_pods)
    ip = (await plain_pods(kube))[0]["status"]["podIP"]
    async with http.post(f"http://{ip}:8080/invoke", data=b"{}") as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    seen["response"] = time.monotonic() - started
    await scale_plain(kube, 0)
    return {k: v * 1000 for k, v in seen.items()}


async def watch_pod(
    kube: KubeClient, name: str, seen: dict[str, float], started: float, lister: Any = None
) -> None:
    """Records when the function's first pod is created, scheduled, running and ready (seconds from start)."""
    while "ready" not in seen:
        for pod in await (lister(kube) if lister else pods(kube, name)):
            now = time.monotonic() - started
            seen.setdefault("created", now)
            if pod["spec"].get("nodeName"):
                seen.setdefault("scheduled", now)
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if statuses and "running" in statuses[0].get("state", {}):
                seen.setdefault("started", now)
            conditions = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                seen.setdefault("ready", now)
        await asyncio.sleep(0.01)


async def cold_starts(kube: KubeClient, http: aiohttp.ClientSession, gateway: str, runs: int) -> None:
    """Interleaved, run by run: the ``cold`` Function from zero through the gateway, then the baseline."""
    keys = ("created", "scheduled", "started", "ready", "response")
    marks: dict[str, list[float]] = {k: [] for k in keys}
    plain: dict[str, list[float]] = {k: [] for k in keys}
    inits: list[float] = []
    for _ in range(runs):
        await wait(lambda: pods(kube, "cold"), lambda p: p == [], "scaled to zero")
        seen: dict[str, float] = {}
        started = time.monotonic()

        watcher = asyncio.create_task(watch_pod(kube, "cold", seen, started))
        async with http.post(
            f"{gateway}/2015-03-31/functions/{NS}/cold/invocations",
            data=b"{}",
            headers={"X-Amz-Log-Type": "Tail"},
        ) as resp:
            await resp.read()
            seen["response"] = time.monotonic() - started
            log = base64.b64decode(resp.headers.get("X-Amz-Log-Result", "")).decode()
        await asyncio.wait_for(watcher, 30)
        match = re.search(r"Init Duration: ([0-9.]+) ms", log)
        if match:
            inits.append(float(match.group(1)))
        for key in marks:
            if key in seen:
                marks[key].append(seen[key] * 1000)
        for key, value in (await plain_cold_start(kube, http)).items():
            plain[key].append(value)
    print(f"== 1. cold start from zero to first response, {runs} runs (python3.11 no-op handler)")
    print(f"  {'':<42} {'through the gateway':>27}   {'baseline: plain Deployment':>27}")
    labels = {
        "created": "pod created (scale write + ReplicaSet)",
        "scheduled": "pod scheduled",
        "started": "agent process started",
        "ready": "instance ready (runtime initialised)",
        "response": "first response (the cold start)",
    }
    for key, label in labels.items():
        values, base = marks[key], plain[key]
        print(
            f"  {label:<42} p50 {pct(values, 0.5):7.0f} ms   p95 {pct(values, 0.95):7.0f} ms"
            f"   p50 {pct(base, 0.5):7.0f} ms   p95 {pct(base, 0.95):7.0f} ms"
        )
    if inits:
        print(f"  {'  of which runtime Init Duration':<42} p50 {pct(inits, 0.5):7.0f} ms")
    print(
        "  (baseline: the same pod template in a Deployment of its own, scaled 0 -> 1 by a direct scale write and\n"
        "   invoked on the pod once Ready, interleaved run by run; times from the scale write)"
    )
    overhead = pct(marks["response"], 0.5) - pct(plain["response"], 0.5)
    print(f"  the gateway's cold path adds p50 {overhead:+.0f} ms to the plain scale-up")
    print("  target: first response p50 <= 1000 ms")


async def warm(
    http: aiohttp.ClientSession, gateway: str, endpoint: str, requests: int, connections: int
) -> None:
    via_gateway = f"{gateway}/2015-03-31/functions/{NS}/warm/invocations"
    direct = f"http://{endpoint}/invoke"
    await post_load(http, via_gateway, 200, connections)  # warm both paths up
    await post_load(http, direct, 200, connections)
    rows: dict[str, list[tuple[float, list[float]]]] = {"gateway": [], "direct": []}
    for _ in range(3):  # interleaved rounds: the machine's noise hits both alike
        rows["gateway"].append(await post_load(http, via_gateway, requests, connections))
        rows["direct"].append(await post_load(http, direct, requests, connections))
    print(
        f"\n== 2. warm invocations, {connections} connections, 3 x {requests} requests each (perInstance {connections})"
    )
    summary = {}
    for name, results in rows.items():
        rps = pct([r for r, _ in results], 0.5)
        lat = [v for _, ls in results for v in ls]
        summary[name] = (rps, pct(lat, 0.5), pct(lat, 0.99))
        print(
            f"  {name:<8} {rps:8.0f} req/s   p50 {summary[name][1]:6.2f} ms   p99 {summary[name][2]:6.2f} ms"
        )
    g, d = summary["gateway"], summary["direct"]
    print(
        f"  gateway overhead p50 {g[1] - d[1]:+.2f} ms (target <= 1 ms); throughput {100 * g[0] / d[0]:.0f}% of direct (target >= 70%)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    async with platform("gw", NS) as p:
        kube, http = p.kube, p.http
        path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS)
        await kube.create(
            path, fn("cold", {"minInstances": 0, "scaleToZeroAfterSeconds": 0, "warmPool": False})
        )
        warm_fn = fn("warm", {"minInstances": 1, "maxInstances": 1})
        warm_fn["spec"]["concurrency"] = {"perInstance": args.connections}
        await kube.create(path, warm_fn)
        await wait(
            lambda: pods(kube, "warm"),
            lambda p: (
                p
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p[0].get("status", {}).get("conditions", [])
                )
            ),
            "warm instance",
        )
        await wait(
            lambda: kube.get(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS, name="cold")),
            lambda f: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in f.get("status", {}).get("conditions", [])
            ),
            "cold function Ready",
        )
        await make_plain(kube)
        await cold_starts(kube, http, p.gateway, args.cold)
        endpoint = (await pods(kube, "warm"))[0]["status"]["podIP"] + ":8080"
        await warm(http, p.gateway, endpoint, args.requests, args.connections)


if __name__ == "__main__":
    asyncio.run(main())
