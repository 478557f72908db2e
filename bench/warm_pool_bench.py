"""Benchmark of warm pools (issue 11; docs/warm-pools.md). Figures, never assertions.

On the local cluster (`kubelambda dev serve`, whose gateway keeps python3.11 and nodejs20 pools), for
Python and Node.js, in the same run and interleaved so the machine's noise hits both alike:

- cold start from zero to first response of a function that may use the pool (``scaling.warmPool: true``),
- the same for a function that opts out (``warmPool: false``: scale from zero, a new pod),
- a warm invoke of a function with a ready instance (the baseline),

N runs each, p50 / p95. "From zero" means no instance of the function and no pool pod specialised for it; the
pool itself is at its steady state (a free pod waiting). Target: pool p50 <= 100 ms, and <= 3 x the warm p50 plus
the handler's own Init Duration.

Run: ``make bench-warm-pool`` (or ``.venv/bin/python bench/warm_pool_bench.py --runs 20``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from kubelambda.kube import KubeClient, resource_path

sys.path.insert(0, str(Path(__file__).parent))
from _common import pct, platform, wait

NS = "bench"
POOL_NS = "kubelambda-warm-pool"  # where the gateway keeps its pools (docs/warm-pools.md)
WARM_CALLS = 200  # warm invokes in all, spread evenly over the runs
RUNTIMES = {
    "python3.11": ("app.handler", {"app.py": "def handler(event, context):\n    return event\n"}),
    "nodejs20": ("index.handler", {"index.mjs": "export const handler = async (event) => event;\n"}),
}


def short(runtime: str) -> str:
    return runtime.replace(".", "")


def function(name: str, runtime: str, scaling: dict[str, Any]) -> dict[str, Any]:
    handler, files = RUNTIMES[runtime]
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"runtime": runtime, "handler": handler, "code": {"inline": files}, "scaling": scaling},
    }


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def pods(kube: KubeClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    listing = await kube.list(
        resource_path("v1", "pods", namespace=namespace), params={"labelSelector": selector}
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


async def at_zero(kube: KubeClient, name: str, runtime: str) -> bool:
    """No instance of ``name`` and no pool pod serving it; the pool of ``runtime`` ready and waiting."""
    own = await pods(kube, NS, f"kubelambda.io/function={name}")
    pooled = [
        p
        for p in await pods(kube, POOL_NS, f"kubelambda.io/function={name}")
        if p["metadata"].get("deletionTimestamp") is None
    ]
    # The pool at its steady state: every pod of it ready (no replacement still starting its runtime).
    pool = await pods(kube, POOL_NS, f"kubelambda.io/pool={runtime}")
    return not own and not pooled and bool(pool) and all(ready(p) for p in pool)


async def invoke(http: aiohttp.ClientSession, gateway: str, name: str) -> tuple[float, bool, float | None]:
    """One invoke: milliseconds, whether a pool pod answered, the runtime's Init Duration (ms) if reported."""
    started = time.perf_counter()
    async with http.post(
        f"{gateway}/2015-03-31/functions/{NS}/{name}/invocations",
        data=b'{"x": 1}',
        headers={"X-Amz-Log-Type": "Tail"},
    ) as resp:
        await resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert resp.status == 200, resp.status
        assert "X-Amz-Function-Error" not in resp.headers, resp.headers
        log = base64.b64decode(resp.headers.get("X-Amz-Log-Result", "")).decode()
        match = re.search(r"Init Duration: ([0-9.]+) ms", log)
        return elapsed, "X-Kubelambda-Warm-Pool" in resp.headers, float(match.group(1)) if match else None


async def bench_runtime(
    kube: KubeClient, http: aiohttp.ClientSession, gateway: str, runtime: str, runs: int
) -> dict[str, Any]:
    rt = short(runtime)
    cold = {"pool": f"pool-{rt}", "nopool": f"nopool-{rt}"}
    results: dict[str, list[float]] = {"pool": [], "nopool": []}
    inits: list[float] = []
    hits = 0
    warm_name = f"warm-{rt}"
    for _ in range(20):  # the warm instance's first calls (connections, imports) are not the baseline
        await invoke(http, gateway, warm_name)
    warm: list[float] = []
    per_run = max(1, WARM_CALLS // runs)
    before = await specialise_ms(http, gateway, runtime)
    for i in range(runs):
        for kind, name in cold.items():
            await wait(lambda n=name: at_zero(kube, n, runtime), bool, f"{name} at zero", timeout=180)
            elapsed, pooled, init = await invoke(http, gateway, name)
            results[kind].append(elapsed)
            if kind == "pool":
                hits += pooled
                if init is not None:
                    inits.append(init)
        # The baseline in the same round, right after the cold starts, so noise in the run hits both alike.
        warm += [(await invoke(http, gateway, warm_name))[0] for _ in range(per_run)]
        print(
            f"  {runtime} run {i + 1}/{runs}: pool {results['pool'][-1]:.0f} ms, "
            f"no pool {results['nopool'][-1]:.0f} ms, warm p50 {pct(warm[-per_run:], 0.5):.1f} ms",
            file=sys.stderr,
        )
    specialise = await specialise_ms(http, gateway, runtime)
    sums = (specialise[0] - before[0], specialise[1] - before[1])
    mean = sums[0] / sums[1] if sums[1] else 0.0
    return {"results": results, "warm": warm, "inits": inits, "hits": hits, "specialise": mean}


async def specialise_ms(http: aiohttp.ClientSession, gateway: str, runtime: str) -> tuple[float, int]:
    """The gateway's specialisation histogram for ``runtime``: (sum in ms, count)."""
    async with http.get(f"{gateway}/metrics") as resp:
        text = await resp.text()
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith(f'kubelambda_warm_pool_specialize_seconds_sum{{runtime="{runtime}"}}'):
            total = float(line.split()[-1]) * 1000
        elif line.startswith(f'kubelambda_warm_pool_specialize_seconds_count{{runtime="{runtime}"}}'):
            count = int(float(line.split()[-1]))
    return total, count


def report(runtime: str, runs: int, r: dict[str, Any]) -> None:
    pool, nopool, warm = r["results"]["pool"], r["results"]["nopool"], r["warm"]
    init = pct(r["inits"], 0.5) if r["inits"] else 0.0
    print(f"\n== {runtime}: cold start from zero to first response, {runs} runs each (no-op handler)")
    print(
        f"  with the warm pool      p50 {pct(pool, 0.5):7.1f} ms   p95 {pct(pool, 0.95):7.1f} ms   ", end=""
    )
    print(f"(served by a pool pod {r['hits']}/{runs})")
    print(
        f"    of which: claim + POST /specialize (code, env, handler import) mean {r['specialise']:.1f} ms; "
        f"the runtime's Init Duration p50 {init:.1f} ms"
    )
    print(f"  without (warmPool off)  p50 {pct(nopool, 0.5):7.1f} ms   p95 {pct(nopool, 0.95):7.1f} ms")
    print(
        f"  warm invoke (baseline)  p50 {pct(warm, 0.5):7.1f} ms   p95 {pct(warm, 0.95):7.1f} ms   "
        f"({len(warm)} calls, {len(warm) // runs} after each run's cold starts)"
    )
    bound = 3 * pct(warm, 0.5) + init
    print(
        f"  pool p50 {pct(pool, 0.5):.1f} ms vs targets: <= 100 ms, <= 3 x warm p50 + init = {bound:.1f} ms; "
        f"{pct(nopool, 0.5) / max(pct(pool, 0.5), 0.001):.0f}x faster than without"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    async with platform("wp", NS) as p:
        kube, http = p.kube, p.http
        path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS)
        for runtime in runtimes:
            rt = short(runtime)
            await kube.create(path, function(f"pool-{rt}", runtime, {"scaleToZeroAfterSeconds": 0}))
            await kube.create(
                path,
                function(f"nopool-{rt}", runtime, {"scaleToZeroAfterSeconds": 0, "warmPool": False}),
            )
            await kube.create(path, function(f"warm-{rt}", runtime, {"minInstances": 1, "maxInstances": 1}))
        for runtime in runtimes:
            name = f"warm-{short(runtime)}"
            await wait(
                lambda n=name: pods(kube, NS, f"kubelambda.io/function={n}"),
                lambda p: bool(p) and ready(p[0]),
                f"{name} instance ready",
                timeout=180,
            )
            for fn_name in (f"pool-{short(runtime)}", f"nopool-{short(runtime)}"):
                await wait(
                    lambda n=fn_name: kube.get(
                        resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS, name=n)
                    ),
                    lambda f: any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in f.get("status", {}).get("conditions", [])
                    ),
                    f"{fn_name} Ready",
                )
        results = {rt: await bench_runtime(kube, http, p.gateway, rt, args.runs) for rt in runtimes}
        for runtime, r in results.items():
            report(runtime, args.runs, r)


if __name__ == "__main__":
    asyncio.run(main())
