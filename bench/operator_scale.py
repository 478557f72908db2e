"""1,000 Functions applied at once: time until every Deployment exists and every status is written, the
operator's peak RSS, and API writes per Function — beside the floor measured in the same run: the same
objects applied directly by one client (no operator, no watch, no status).

    .venv/bin/python bench/operator_scale.py --functions 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources import (
    FunctionObject,
    make_code_configmap,
    make_deployment,
    make_ingress_policy,
    make_service,
)
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from kltest import start_cluster  # noqa: E402

FN_API = "kubelambda.io/v1alpha1"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
JSON = dict[str, Any]


def function(name: str) -> JSON:
    return {
        "apiVersion": FN_API,
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "runtime": "python3.12",
            "handler": "app.handler",
            "code": {"inline": {"app.py": f"def handler(event, context):\n    return {name!r}\n"}},
            "environment": {"GREETING": "hello"},
        },
    }


async def writes_by_resource(kube: KubeClient) -> dict[tuple[str, str, str, str], float]:
    """apiserver_request_total for writes, by (verb, resource, subresource, code)."""
    text = await kube._http().get(kube.server + "/metrics")  # plain text, not JSON
    body = await text.text()
    out: dict[tuple[str, str, str, str], float] = {}
    for line in body.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(item.split("=", 1) for item in labels_text.split('",') if "=" in item)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") in WRITE_VERBS:
            key = (
                labels["verb"],
                labels.get("resource", ""),
                labels.get("subresource", ""),
                labels.get("code", ""),
            )
            out[key] = out.get(key, 0.0) + float(value)
    return out


def operator_writes(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    """Writes only the operator makes: the Function status, and the objects it owns (not their status)."""
    totals: dict[str, float] = {}
    for key, value in after.items():
        verb, resource, sub, code = key
        delta = value - before.get(key, 0.0)
        if delta <= 0 or code.startswith("4"):
            continue
        if resource == "functions" and verb == "POST":
            continue  # the benchmark's own creates
        if resource in ("deployments", "replicasets") and sub == "status":
            continue
        if resource in ("functions", "configmaps", "deployments", "services", "networkpolicies", "events"):
            totals[f"{resource}{'/' + sub if sub else ''}"] = totals.get(resource, 0.0) + delta
    return totals


async def gather_limited(coros: list[Any], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


async def count(kube: KubeClient, path: str, predicate: Any = None) -> int:
    items = (await kube.list(path, params={"limit": "5000"}))["items"]
    return sum(1 for i in items if predicate is None or predicate(i))


async def run_operator_bench(kube: KubeClient, kubeconfig: Path, n: int) -> JSON:
    ns = "bench-operator"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
    env = {**os.environ, "KUBELAMBDA_KUBECONFIG": str(kubeconfig)}
    log = (kubeconfig.parent / "operator.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelambda", "operator", env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    peak = 0.0
    try:
        ps = psutil.Process(proc.pid)
        before = await writes_by_resource(kube)
        started = time.monotonic()
        await gather_limited(
            [
                kube.create(resource_path(FN_API, "functions", namespace=ns), function(f"fn-{i:04d}"))
                for i in range(n)
            ],
            limit=20,
        )
        created = time.monotonic() - started
        deployments = statuses = 0
        while time.monotonic() - started < 600:
            peak = max(peak, ps.memory_info().rss / 2**20)
            deployments = await count(kube, resource_path("apps/v1", "deployments", namespace=ns))
            if deployments >= n:
                statuses = await count(
                    kube,
                    resource_path(FN_API, "functions", namespace=ns),
                    lambda f: (
                        (f.get("status") or {}).get("observedGeneration") == f["metadata"]["generation"]
                    ),
                )
                if statuses >= n:
                    break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        # Let trailing writes (Deployment watch refreshes) land before counting.
        for _ in range(10):
            peak = max(peak, ps.memory_info().rss / 2**20)
            await asyncio.sleep(0.5)
        after = await writes_by_resource(kube)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    writes = operator_writes(before, after)
    return {
        "created": created,
        "elapsed": elapsed,
        "deployments": deployments,
        "statuses": statuses,
        "peak_rss_mb": peak,
        "writes": writes,
    }


async def run_floor(kube: KubeClient, n: int) -> float:
    """The same objects applied directly (ConfigMap, Service, NetworkPolicy, Deployment), 20 at a time."""
    ns = "bench-floor"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
    settings = OperatorSettings()
    paths = {"ConfigMap": ("v1", "configmaps"), "Service": ("v1", "services"),
             "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"), "Deployment": ("apps/v1", "deployments")}  # fmt: skip

    async def one(i: int) -> None:
        fn = FunctionObject(f"fn-{i:04d}", ns, f"00000000-0000-0000-0000-{i:012d}", 1,
                            FunctionSpec.model_validate(function("x")["spec"]))  # fmt: skip
        objs = [make_code_configmap(fn), make_service(fn), make_ingress_policy(fn, system_namespace="kl"),
                make_deployment(fn, image="img", settings=settings, replicas=0)]  # fmt: skip
        for obj in objs:
            assert obj is not None
            obj["metadata"].pop("ownerReferences")
            api, plural = paths[obj["kind"]]
            path = resource_path(api, plural, namespace=ns, name=obj["metadata"]["name"])
            await kube.apply(path, obj, field_manager=FIELD_MANAGER)

    started = time.monotonic()
    await gather_limited([one(i) for i in range(n)], limit=20)
    return time.monotonic() - started


async def main_async(n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="kubelambda-bench-op-") as tmp:
        cluster = start_cluster(Path(tmp))
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "crd/functions.kubelambda.io")
            async with KubeClient.from_kubeconfig(cluster.kubeconfig) as kube:
                result = await run_operator_bench(kube, cluster.kubeconfig, n)
                floor = await run_floor(kube, n)
        finally:
            cluster.stop()
    writes = result["writes"]
    total = sum(v for k, v in writes.items() if not k.startswith("events"))
    print(f"\n{n} Functions applied at once on the local cluster (2-core machine)\n")
    print(f"{'figure':<46}{'kubelambda operator':>22}{'floor: direct apply':>22}")
    print(f"{'all Deployments exist + every status written':<46}{result['elapsed']:>20.1f} s{floor:>20.1f} s")
    print(f"{'  (creating the Functions took)':<46}{result['created']:>20.1f} s")
    print(f"{'Deployments / statuses seen':<46}{result['deployments']:>15} / {result['statuses']}")
    print(f"{'operator peak RSS':<46}{result['peak_rss_mb']:>19.0f} MB")
    print(f"{'API writes per Function (excluding Events)':<46}{total / n:>22.2f}{4:>22.2f}")
    for key, value in sorted(writes.items()):
        print(f"{'  ' + key:<46}{value / n:>22.2f}")
    print("\ntargets: <= 60 s, <= 200 MB, writes <= owned objects (4) + 1 status write")
    return 0 if result["deployments"] >= n and result["statuses"] >= n else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--functions", type=int, default=1000)
    args = parser.parse_args()
    return asyncio.run(main_async(args.functions))


if __name__ == "__main__":
    raise SystemExit(main())
