"""Cold start from zero on the container node beside the process node, in the same run. Figures, never assertions.

For each node in turn (the process node first: ``kubelambda dev serve``; then the container node: ``dev serve
--node container``, kubelambda from its Helm chart, images already imported), N Functions (python3.11, inline code,
``warmPool: false``) are made at zero instances and each invoked once through the gateway: the invoke is a cold
start from zero. While it runs, the Function's pod is polled every 20 ms and the moment each step is first seen is
kept (so each figure is good to about 20 ms plus an API read):

- scheduled: the pod has a node;
- sandbox: the pod has an IP (the container node: the pod sandbox and its network namespace are up);
- container started: the container is ``running``;
- pod ready: the agent answers its readiness probe (its runtime's init follows on the first invoke);
- first byte: the invoke's answer; its REPORT's ``Init Duration`` is the runtime init.

Run: ``make bench-container-node`` (root, Docker with ``make images``), or
``.venv/bin/python bench/container_node_bench.py --runs 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from kubelambda.devcluster._containernode import cleanup_host
from kubelambda.kube import KubeClient, resource_path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    create_namespace,
    developer_headers,
    inline_function,
    pct,
    start_cluster,
    stop_cluster,
    wait,
)

NS = "bench"
STEPS = ("scheduled", "sandbox", "container started", "pod ready", "first byte")


def function(name: str) -> dict[str, Any]:
    return inline_function(name, NS, memoryMB=256, scaling={"warmPool": False})


def steps_seen(pod: dict[str, Any]) -> set[str]:
    status = pod.get("status", {})
    seen = set()
    if pod["spec"].get("nodeName"):
        seen.add("scheduled")
    if status.get("podIP"):
        seen.add("sandbox")
    if any("running" in c.get("state", {}) for c in status.get("containerStatuses", [])):
        seen.add("container started")
    if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])):
        seen.add("pod ready")
    return seen


async def one(kube: KubeClient, http: aiohttp.ClientSession, gateway: str, name: str) -> dict[str, float]:
    await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), function(name))

    async def is_ready() -> bool:
        fn = await kube.get(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS, name=name))
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in fn.get("status", {}).get("conditions", [])
        )

    await wait(is_ready, bool, f"Function {name} Ready", 240)
    times: dict[str, float] = {}
    started = time.perf_counter()
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            listing = await kube.list(
                resource_path("v1", "pods", namespace=NS),
                params={"labelSelector": f"kubelambda.io/function={name}"},
            )
            now = (time.perf_counter() - started) * 1000
            for pod in listing["items"]:
                for step in steps_seen(pod):
                    times.setdefault(step, now)
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    try:
        async with http.post(
            f"{gateway}/2015-03-31/functions/{NS}/{name}/invocations",
            data=b'{"x": 1}',
            headers={"X-Amz-Log-Type": "Tail"},
        ) as resp:
            body = await resp.read()
            times["first byte"] = (time.perf_counter() - started) * 1000
            log = base64.b64decode(resp.headers.get("X-Amz-Log-Result", "")).decode()
    finally:
        done.set()
        await poller
    if resp.status != 200:  # counted and shown, not measured
        print(f"  {name}: HTTP {resp.status} after {times['first byte']:.0f} ms: {body[:300]!r}", flush=True)
        return {}
    match = re.search(r"Init Duration: ([0-9.]+) ms", log)
    if match:
        times["runtime init"] = float(match.group(1))
    return times


async def measure(node: str, runs: int) -> list[dict[str, float]]:
    state_dir = Path(tempfile.mkdtemp(prefix=f"kubelambda-bench-{node}-"))
    # A container node imports its images first: up to 20 min on a cold cache.
    proc, state = await asyncio.to_thread(start_cluster, state_dir, "--node", node, timeout=1200)
    results = []
    try:
        assert state.gateway_url
        headers = await developer_headers(state)
        async with (
            KubeClient.from_kubeconfig(state.kubeconfig) as kube,
            aiohttp.ClientSession(headers=headers) as http,
        ):
            await create_namespace(kube, NS)
            for i in range(runs):
                results.append(await one(kube, http, state.gateway_url, f"cold-{i}"))
                if results[-1]:
                    print(f"  cold-{i}: {results[-1]['first byte']:.0f} ms", flush=True)
    finally:
        await asyncio.to_thread(stop_cluster, proc, state_dir)
        if node == "container":
            left = cleanup_host(state_dir)
            if left:
                print(f"warning: the container node left {left}", file=sys.stderr)
    return results


def table(results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{'step (ms from the invoke)':<28}" + "".join(f"{node + ' p50/p95':>26}" for node in results))
    for step in (*STEPS, "runtime init"):
        row = f"{step:<28}"
        for samples in results.values():
            values = [s[step] for s in samples if step in s]
            row += f"{f'{pct(values, 0.5):.0f} / {pct(values, 0.95):.0f} (n={len(values)})':>26}"
        print(row)
    print("failed invokes: " + ", ".join(f"{node} {sum(not s for s in r)}" for node, r in results.items()))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for node in ("process", "container"):
        print(f"==> {node} node: {args.runs} cold starts from zero", flush=True)
        results[node] = await measure(node, args.runs)
    table(results)


if __name__ == "__main__":
    asyncio.run(main())
