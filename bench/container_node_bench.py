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

Then, on the container node in the same run (``--no-extras`` leaves them out):

- warm-pool cold start: ``helm upgrade`` to one gateway replica and a python3.11 pool of one; ``--pool-runs``
  more Functions (``warmPool: true``), each invoked once from zero once a free pool pod is Ready: first byte, and
  how many the pool served (``X-Kubelambda-Warm-Pool``), beside the scale-from-zero figures above;
- memory (working set, the kubelet's ``stats/summary``): the platform's pods (operator, gateway, async worker,
  NATS) and one idle function pod per runtime image (each invoked once, then left alone), beside a bare
  ``python3`` process in a pod of the python3.11 image (the baseline: what the agent and runtime client add).

Run: ``make bench-container-node`` (root, Docker with ``make images``), or
``.venv/bin/python bench/container_node_bench.py --runs 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kubelambda.devcluster import DevState
from kubelambda.devcluster._binaries import ensure_binaries, repo_root
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
SYSTEM = "kubelambda-system"
POOL = "kubelambda.io/pool=python3.11"  # free pool pods (kubelambda.resources.warmpool)
# Runtime → example (examples/<name>/function.yaml): the images `make images` builds here (docs/runtimes.md).
IDLE = {
    "python3.11": "hello-python3.11",
    "python3.13": "hello-python3.13",
    "nodejs20": "hello-nodejs20",
    "ruby3.3": "hello-ruby3.3",
    "provided": "hello-provided",
}
MiB = 1024 * 1024


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


def ready(obj: dict[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def invoke(http: aiohttp.ClientSession, gateway: str, name: str) -> tuple[int, float, str | None]:
    """One invoke of ``NS/name``: HTTP status, ms to the answer, the pool pod that served it (if one did)."""
    started = time.perf_counter()
    async with http.post(f"{gateway}/2015-03-31/functions/{NS}/{name}/invocations", data=b"{}") as resp:
        await resp.read()
        return resp.status, (time.perf_counter() - started) * 1000, resp.headers.get("X-Kubelambda-Warm-Pool")


async def function_ready(kube: KubeClient, name: str) -> None:
    path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS, name=name)
    await wait(lambda: kube.get(path), ready, f"Function {name} Ready", 240)


def helm(state: DevState, *args: str) -> None:
    env = {**os.environ, "KUBECONFIG": state.kubeconfig}
    result = subprocess.run(
        [str(ensure_binaries(quiet=True).helm), *args], capture_output=True, text=True, env=env, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])}: {result.stderr[-2000:]}")


async def warm_pool(state: DevState, kube: KubeClient, headers: dict[str, str], runs: int) -> list[float]:
    """Cold starts served by the python3.11 pool (see the module's docstring): first byte in ms of each."""
    chart = str(repo_root() / "helm" / "kubelambda")
    await asyncio.to_thread(
        helm, state, "upgrade", "kubelambda", chart, "-n", SYSTEM, "--reuse-values",
        "--set", "gateway.replicas=1", "--set", "gateway.warmPools.sizes.python3\\.11=1", "--wait",
        "--timeout", "10m",
    )  # fmt: skip
    pods = resource_path("v1", "pods", namespace=SYSTEM)
    gateways = {"labelSelector": "app.kubernetes.io/component=gateway"}
    await wait(
        lambda: kube.list(pods, params=gateways), lambda p: len(p["items"]) == 1, "one gateway pod", 300
    )
    pool_pods = resource_path("v1", "pods", namespace="kubelambda-warm-pool")
    times, served = [], 0
    assert state.gateway_url
    async with aiohttp.ClientSession(headers=headers) as http:  # no connection to the replaced gateway pods
        for i in range(runs):
            name = f"pooled-{i}"
            await kube.create(
                resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS),
                inline_function(name, NS, memoryMB=256),
            )
            await function_ready(kube, name)
            await wait(
                lambda: kube.list(pool_pods, params={"labelSelector": POOL}),
                lambda p: any(
                    ready(pod) and not pod["metadata"].get("deletionTimestamp") for pod in p["items"]
                ),
                "a free python3.11 pool pod Ready",
                300,
            )
            status, ms, pool_pod = await invoke(http, state.gateway_url, name)
            if status != 200:
                print(f"  {name}: HTTP {status} after {ms:.0f} ms", flush=True)
                continue
            times.append(ms)
            served += pool_pod is not None
            print(f"  {name}: {ms:.0f} ms{' (pool pod)' if pool_pod else ''}", flush=True)
    print(f"warm pool: {served} of {runs} cold starts served by a pool pod", flush=True)
    return times


BARE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bare-python3", "namespace": NS},
    "spec": {
        "containers": [
            {
                "name": "bare",
                "image": "ghcr.io/kubelambda/runtime-python:3.11",
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import signal; signal.pause()"],
            }
        ]
    },
}


async def memory(state: DevState, kube: KubeClient, headers: dict[str, str]) -> dict[str, float]:
    """Working set in MiB: the platform's pods by component, one idle function pod per runtime, a bare python3."""
    assert state.gateway_url
    for runtime, example in IDLE.items():
        doc = copy.deepcopy(
            yaml.safe_load((repo_root() / "examples" / example / "function.yaml").read_text())
        )
        doc["metadata"] = {"name": f"idle-{runtime.replace('.', '')}", "namespace": NS}
        doc["spec"]["scaling"] = {"minInstances": 1, "warmPool": False}
        await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), doc)
    await kube.create(resource_path("v1", "pods", namespace=NS), BARE)
    async with aiohttp.ClientSession(headers=headers) as http:
        for runtime in IDLE:
            name = f"idle-{runtime.replace('.', '')}"
            await function_ready(kube, name)
            status, _, _ = await invoke(http, state.gateway_url, name)  # the runtime initialised, then idle
            print(f"  {name}: HTTP {status}", flush=True)
    wanted = {f"idle-{r.replace('.', '')}" for r in IDLE} | {"bare-python3"}

    def named(pod: dict[str, Any]) -> str | None:
        ref = pod["podRef"]
        if ref["namespace"] == SYSTEM:
            return "platform: " + ref["name"].split("-")[1]  # kubelambda-<component>-...
        if ref["namespace"] == NS:
            base = ref["name"] if ref["name"] == "bare-python3" else ref["name"].rsplit("-", 2)[0]
            return base if base in wanted else None
        return None

    summary_path = f"/api/v1/nodes/{state.node}/proxy/stats/summary"

    async def sample() -> dict[str, float]:
        summary = await kube.get(summary_path)
        found: dict[str, float] = {}
        for pod in summary.get("pods", []):
            key = named(pod)
            working_set = pod.get("memory", {}).get("workingSetBytes") or 0
            if key and working_set > 0:
                found[key] = found.get(key, 0) + working_set / MiB
        return found

    # The kubelet's stats follow its housekeeping (about 10 s; a new pod is first listed with a working set of 0):
    # wait until every pod has a figure above zero.
    return await wait(sample, lambda f: wanted <= f.keys(), "stats/summary for every pod measured", 180)


async def measure(
    node: str, runs: int, *, extras: bool = False, pool_runs: int = 0
) -> list[dict[str, float]]:
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
            if extras:
                print(f"==> {node} node: memory of the platform's pods and of idle function pods", flush=True)
                EXTRAS["memory"] = await memory(state, kube, headers)
                print(f"==> {node} node: {pool_runs} cold starts served by the warm pool", flush=True)
                EXTRAS["warm pool"] = await warm_pool(state, kube, headers, pool_runs)
    finally:
        await asyncio.to_thread(stop_cluster, proc, state_dir)
        if node == "container":
            left = cleanup_host(state_dir)
            if left:
                print(f"warning: the container node left {left}", file=sys.stderr)
    return results


EXTRAS: dict[str, Any] = {}


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
    parser.add_argument("--pool-runs", type=int, default=10, help="cold starts served by the warm pool")
    parser.add_argument("--no-extras", action="store_true", help="only the cold starts from zero")
    args = parser.parse_args()
    results = {}
    for node in ("process", "container"):
        print(f"==> {node} node: {args.runs} cold starts from zero", flush=True)
        extras = node == "container" and not args.no_extras
        results[node] = await measure(node, args.runs, extras=extras, pool_runs=args.pool_runs)
    table(results)
    if "warm pool" in EXTRAS:
        pool, scratch = EXTRAS["warm pool"], [s["first byte"] for s in results["container"] if s]
        print(
            f"\ncontainer node, first byte of a cold start p50/p95: warm pool {pct(pool, 0.5):.0f} / "
            f"{pct(pool, 0.95):.0f} ms (n={len(pool)}), from zero {pct(scratch, 0.5):.0f} / "
            f"{pct(scratch, 0.95):.0f} ms (n={len(scratch)})"
        )
    if "memory" in EXTRAS:
        print("\nworking set (MiB), container node:")
        for key, mib in sorted(EXTRAS["memory"].items()):
            print(f"  {key:<28}{mib:8.1f}")
        platform = sum(v for k, v in EXTRAS["memory"].items() if k.startswith("platform: "))
        print(f"  {'platform, all pods':<28}{platform:8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
