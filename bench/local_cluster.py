"""Benchmarks of the local cluster (issue: foundation). Figures, never assertions.

1. Start to healthy, with cached binaries: the whole local cluster (etcd, kube-apiserver,
   kube-controller-manager, kube-scheduler, local node, usable for pods) beside the envtest baseline
   (etcd + kube-apiserver only, what controller-runtime's envtest starts), both measured in this run.
2. Pod create → Ready on the local node over N pods, p50 / p95, with the breakdown
   (scheduled, process started, ready), beside the floor: spawning the same process directly.
3. Idle memory (RSS) of every component of the whole local cluster, beside the envtest baseline.

Run: ``make bench-cluster`` (or ``.venv/bin/python bench/local_cluster.py --pods 50``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from _common import pct
from kubelambda.devcluster import ControlPlane, DevState
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._images import container_argv
from kubelambda.kube import KubeClient, resource_path


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = float("nan")
    return out


async def envtest_baseline(idle_seconds: float) -> tuple[float, dict[str, float]]:
    binaries = ensure_binaries(quiet=True)
    with tempfile.TemporaryDirectory(prefix="kl-bench-envtest-") as tmp:
        plane = ControlPlane(Path(tmp), binaries)
        plane._prepare()  # certificates are a one-time cost in both cases: not timed
        started = time.monotonic()
        await plane.start(controllers=False)
        elapsed = time.monotonic() - started
        await asyncio.sleep(idle_seconds)
        memory = rss_mb(plane.pids())
        await plane.stop()
    return elapsed, memory


def start_full(state_dir: Path) -> tuple[subprocess.Popen[bytes], float, DevState]:
    # Certificates first (as on every start after the first), so both figures time the same work.
    ControlPlane(state_dir, ensure_binaries(quiet=True))._prepare()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelambda", "dev", "serve", "--state-dir", str(state_dir)],
        stdout=(state_dir / "serve.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    while True:
        state = DevState.read(state_dir)
        if state is not None and state.state == "running" and state.pid == proc.pid:
            return proc, time.monotonic() - started, state
        if proc.poll() is not None:
            raise RuntimeError((state_dir / "serve.log").read_text()[-3000:])
        time.sleep(0.02)


async def pod_latencies(kubeconfig: Path, count: int) -> list[dict[str, float]]:
    ns = "bench"
    results = []
    async with KubeClient.from_kubeconfig(kubeconfig) as kube:
        await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
        while (  # noqa: ASYNC110 - polling the API server for the controller-manager's work
            await kube.get_or_none(resource_path("v1", "serviceaccounts", namespace=ns, name="default"))
            is None
        ):
            await asyncio.sleep(0.05)
        for i in range(count):
            name = f"p{i}"
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
                },
            }
            marks: dict[str, float] = {}
            started = time.monotonic()
            created = await kube.create(resource_path("v1", "pods", namespace=ns), body)
            version = created["metadata"]["resourceVersion"]
            async for event in kube.watch(
                resource_path("v1", "pods", namespace=ns),
                params={"fieldSelector": f"metadata.name={name}"},
                resource_version=version,
            ):
                pod = event.object
                now = time.monotonic() - started
                if pod["spec"].get("nodeName"):
                    marks.setdefault("scheduled", now)
                statuses = pod.get("status", {}).get("containerStatuses", [])
                if statuses and "running" in statuses[0].get("state", {}):
                    marks.setdefault("started", now)
                conditions = pod.get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    marks["ready"] = now
                    break
            results.append(marks)
        await kube.delete(resource_path("v1", "namespaces", name=ns))
    return results


def spawn_floor(count: int) -> list[float]:
    """The floor of 'process started': the same busybox command spawned directly, no Kubernetes."""
    argv = container_argv("busybox", ["sleep", "3600"], None)
    times = []
    for _ in range(count):
        started = time.monotonic()
        proc = subprocess.Popen(argv)
        times.append(time.monotonic() - started)
        proc.kill()
        proc.wait()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    ensure_binaries()

    print("== 1. start to healthy (cached binaries)")
    envtest_seconds, envtest_memory = await envtest_baseline(args.idle_seconds)
    with tempfile.TemporaryDirectory(prefix="kl-bench-") as tmp:
        proc, full_seconds, state = start_full(Path(tmp))
        try:
            print(
                f"  kubelambda local cluster (5 components + node, usable)   {full_seconds:6.2f} s   target <= 15 s"
            )
            print(f"  baseline: envtest-style etcd + kube-apiserver only       {envtest_seconds:6.2f} s")

            print(f"\n== 2. pod create -> Ready on the local node, {args.pods} pods one after another")
            marks = await pod_latencies(Path(state.kubeconfig), args.pods)
            for key in ("scheduled", "started", "ready"):
                values = [m[key] * 1000 for m in marks if key in m]
                print(
                    f"  {key:<10} p50 {pct(values, 0.5):7.1f} ms   p95 {pct(values, 0.95):7.1f} ms   (n={len(values)})"
                )
            floor = [t * 1000 for t in spawn_floor(args.pods)]
            print(
                f"  floor: spawning the same process directly  p50 {pct(floor, 0.5):7.1f} ms   p95 {pct(floor, 0.95):7.1f} ms"
            )
            print("  target: ready p50 <= 1000 ms")

            print(f"\n== 3. idle memory (RSS after {args.idle_seconds:g} s idle, no pods)")
            await asyncio.sleep(args.idle_seconds)
            memory = rss_mb(state.components)
            for name, mb in sorted(memory.items()):
                print(f"  {name:<26} {mb:7.1f} MB")
            print(f"  {'total':<26} {sum(memory.values()):7.1f} MB")
            print(
                f"  baseline: envtest-style etcd + kube-apiserver  {sum(envtest_memory.values()):7.1f} MB "
                f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(envtest_memory.items()))})"
            )
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
