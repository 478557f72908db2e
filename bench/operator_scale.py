"""1,000 Functions applied at once: time until every Deployment exists and every status is written, the
operator's peak RSS, and API requests per Function — beside the floor measured in the same run: the same
Functions created and the same objects (ConfigMap, Service, Role, RoleBinding, NetworkPolicy, Deployment, owned by
their Function) applied directly by one client (no operator, no watch, no status, no Event).

    .venv/bin/python bench/operator_scale.py --functions 1000 [--profile operator.svg]

``--profile`` records the operator with py-spy (``pip install py-spy``) for the whole operator phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.operator._owned import object_path
from kubelambda.operator._pace import retrying
from kubelambda.resources import (
    FunctionObject,
    make_code_configmap,
    make_deployment,
    make_ingress_policy,
    make_scale_role,
    make_scale_role_binding,
    make_service,
)
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from kltest import start_cluster  # noqa: E402
from kltest.platform import install_ownership_policy  # noqa: E402

FN_API = "kubelambda.io/v1alpha1"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
READ_VERBS = {"GET"}  # of one object (the benchmark's own polling is LIST; the operator's watches are WATCH)
JSON = dict[str, Any]
LIMIT_SECONDS = 1800  # for the operator's phase (1,000 Functions took 392 s at load 23-48)


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


WriteKey = tuple[str, str, str, str]  # (verb, resource, subresource, code)
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>.*)\} (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# What the operator writes for a Function: its status, the objects it owns, and its Events. The local cluster's
# controllers also write the status of Deployments and ReplicaSets; those are not the operator's.
OWNED = (
    "functions",
    "configmaps",
    "deployments",
    "services",
    "networkpolicies",
    "roles",
    "rolebindings",
    "events",
)


def parse_write_totals(text: str, verbs: frozenset[str] | set[str] = WRITE_VERBS) -> dict[WriteKey, float]:
    """The samples of ``apiserver_request_total`` in a /metrics scrape for ``verbs`` (writes by default), summed
    by (verb, resource, subresource, code) over the labels left out (group, version, scope, component,
    dry_run)."""
    out: dict[WriteKey, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if labels.get("verb") not in verbs:
            continue
        key = (
            labels["verb"],
            labels.get("resource", ""),
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        out[key] = out.get(key, 0.0) + float(m["value"])
    return out


def write_deltas(before: dict[WriteKey, float], after: dict[WriteKey, float]) -> dict[WriteKey, float]:
    """Every write answered between two scrapes, by (verb, resource, subresource, code), whatever the code:
    a write answered 409 or 422 is still a request the API server had to handle."""
    deltas = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: delta for key, delta in deltas.items() if delta > 0}


def attributed_writes(deltas: dict[WriteKey, float], *, own_creates: bool = True) -> dict[WriteKey, float]:
    """The writes of ``deltas`` to what the operator (or the floor's client) writes: ``OWNED`` resources, not
    the controllers' Deployment/ReplicaSet status, and not the benchmark's own Function creates
    (``own_creates``)."""
    out: dict[WriteKey, float] = {}
    for key, delta in deltas.items():
        verb, resource, sub, _code = key
        if resource not in OWNED or (resource in ("deployments", "replicasets") and sub == "status"):
            continue
        if own_creates and resource == "functions" and verb == "POST" and not sub:
            continue
        out[key] = delta
    return out


def label(key: WriteKey) -> str:
    verb, resource, sub, code = key
    return f"{verb} {resource}{'/' + sub if sub else ''} {code}"


async def scrape_writes(
    kube: KubeClient, verbs: frozenset[str] | set[str] = WRITE_VERBS | READ_VERBS
) -> dict[WriteKey, float]:
    """The requests of ``verbs`` counted so far (writes and single-object reads, GET, by default)."""
    response = await kube._http().get(kube.server + "/metrics")  # plain text, not JSON
    return parse_write_totals(await response.text(), verbs)


async def gather_limited(coros: list[Any], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")


def component_cpu(root: int, extra: dict[str, int] | None = None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each control-plane process under ``root`` (the ``dev serve``
    process), and by the processes of ``extra`` (name → pid)."""
    out: dict[str, float] = {}
    procs = {p.name(): p for p in psutil.Process(root).children(recursive=True) if p.name() in COMPONENTS}
    procs.update({name: psutil.Process(pid) for name, pid in (extra or {}).items()})
    for name, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[name] = times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


async def count(kube: KubeClient, path: str, predicate: Any = None) -> int:
    items = (await kube.list(path, params={"limit": "5000"}))["items"]
    return sum(1 for i in items if predicate is None or predicate(i))


async def count_objects(kube: KubeClient, path: str) -> int:
    """How many objects ``path`` lists, from a list of one and the API server's ``remainingItemCount``: the
    bench's polling must not cost the API server a list of every Deployment twice a second (the floor has no
    such polling)."""
    page = await kube.list(path, params={"limit": "1"})
    return len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)


WARMUP_NS = "bench-operator-warmup"


async def wait_operator_ready(kube: KubeClient, proc: asyncio.subprocess.Process, timeout: float) -> float:
    """Seconds until the operator wrote the status of one Function (``warmup`` in :data:`WARMUP_NS`) created
    once it started: from then on it reconciles as it does at work."""
    started = time.monotonic()
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": WARMUP_NS}})
    path = resource_path(FN_API, "functions", namespace=WARMUP_NS)
    await kube.create(path, function("warmup"))
    while time.monotonic() - started < timeout:
        if proc.returncode is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode} before it was ready")
        fn = await kube.get(f"{path}/warmup")
        if (fn.get("status") or {}).get("observedGeneration") == fn["metadata"]["generation"]:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the operator did not reconcile one Function within {timeout:.0f} s of its start")


async def start_profile(pid: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy recording ``pid`` into ``out`` (collapsed stacks for ``.txt``, else a flame graph) until SIGINT."""
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    spy = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(spy), "record", "--nonblocking", "--rate", "50", "--format", fmt, "-o", str(out), "-p", str(pid),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def run_operator_bench(
    kube: KubeClient,
    kubeconfig: Path,
    n: int,
    root: int,
    profile: Path | None = None,
    in_flight: int | None = None,
) -> JSON:
    ns = "bench-operator"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
    env = {**os.environ, "KUBELAMBDA_KUBECONFIG": str(kubeconfig)}
    if in_flight is not None:
        env["KUBELAMBDA_API_REQUESTS_IN_FLIGHT"] = str(in_flight)
    log = (kubeconfig.parent / "operator.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelambda", "operator", env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    peak = 0.0
    spy = None
    try:
        ps = psutil.Process(proc.pid)
        # As an operator runs before Functions are applied, not started by them: its start (imports, kopf's first
        # lists, its look at the ownership policy) is not timed, as the floor's client is running before it too.
        ready = await wait_operator_ready(kube, proc, LIMIT_SECONDS)
        spy = None if profile is None else await start_profile(proc.pid, profile)
        before = await scrape_writes(kube)
        cpu_before = component_cpu(root, {"operator": proc.pid})
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
        while time.monotonic() - started < LIMIT_SECONDS:
            if proc.returncode is not None:
                log.flush()
                tail = (kubeconfig.parent / "operator.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the operator exited with {proc.returncode}:\n{tail}")
            peak = max(peak, ps.memory_info().rss / 2**20)
            deployments = await count_objects(kube, resource_path("apps/v1", "deployments", namespace=ns))
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
        cpu = cpu_delta(cpu_before, component_cpu(root, {"operator": proc.pid}))
        if deployments < n or statuses < n:
            log.flush()
            tail = (kubeconfig.parent / "operator.log").read_text(errors="replace")[-4000:]
            print(
                f"the operator did not finish within {LIMIT_SECONDS} s; the end of its log:\n{tail}",
                file=sys.stderr,
            )
        # Let trailing writes (Deployment watch refreshes) land before counting.
        for _ in range(10):
            peak = max(peak, ps.memory_info().rss / 2**20)
            await asyncio.sleep(0.5)
        after = await scrape_writes(kube)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), 60)
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    writes = attributed_writes(write_deltas(before, after))
    return {
        "load": os.getloadavg()[0],
        "ready": ready,
        "created": created,
        "elapsed": elapsed,
        "deployments": deployments,
        "statuses": statuses,
        "peak_rss_mb": peak,
        "writes": writes,
        "cpu": cpu,
    }


async def run_floor(
    kube: KubeClient, n: int, root: int
) -> tuple[float, dict[WriteKey, float], dict[str, float]]:
    """What the operator phase makes, by one client without the operator, 20 Functions at a time: each Function
    created, then the objects the operator makes of it with its default settings (ConfigMap, Service, Role,
    RoleBinding, NetworkPolicy, Deployment, each owned by the Function as the operator's are, so the garbage
    collector tracks them as it does the operator's) applied one after the other. The time it took, the requests
    the API server counted for it and the CPU it cost (after the operator has stopped)."""
    ns = "bench-floor"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
    settings = OperatorSettings()

    async def create(i: int) -> JSON:
        path = resource_path(FN_API, "functions", namespace=ns)
        try:
            return await kube.create(path, function(f"fn-{i:04d}"))
        except ApiError as e:
            if e.status != 409:  # stored after all by an attempt that timed out
                raise
            return await kube.get(f"{path}/fn-{i:04d}")

    async def one(i: int) -> None:
        # A request the API server is too busy for is asked again, as the operator does (_pace.retrying).
        body = await retrying(lambda: create(i), overloaded=lambda: None)
        fn = FunctionObject.from_body(body)
        binding = make_scale_role_binding(fn, gateway_account=settings.gateway_service_account,
                                          system_namespace=settings.system_namespace)  # fmt: skip
        objs = [make_code_configmap(fn), make_service(fn), make_scale_role(fn), binding,
                make_ingress_policy(fn, system_namespace=settings.system_namespace),
                make_deployment(fn, image="img", settings=settings, replicas=0)]  # fmt: skip
        for obj in objs:
            assert obj is not None
            await retrying(partial(kube.apply, object_path(obj), obj, field_manager=FIELD_MANAGER),
                           overloaded=lambda: None)  # fmt: skip

    before = await scrape_writes(kube)
    cpu_before = component_cpu(root, {"bench (the floor's client)": os.getpid()})
    started = time.monotonic()
    await gather_limited([one(i) for i in range(n)], limit=20)
    elapsed = time.monotonic() - started
    cpu = cpu_delta(cpu_before, component_cpu(root, {"bench (the floor's client)": os.getpid()}))
    return elapsed, attributed_writes(write_deltas(before, await scrape_writes(kube))), cpu


async def main_async(
    n: int, profile: Path | None = None, *, in_flight: int | None = None, ownership_policy: bool = True
) -> int:
    with tempfile.TemporaryDirectory(prefix="kubelambda-bench-op-") as tmp:
        cluster = start_cluster(Path(tmp))
        assert cluster.proc is not None
        root = cluster.proc.pid
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "crd/functions.kubelambda.io")
            async with KubeClient.from_kubeconfig(cluster.kubeconfig) as kube:
                if ownership_policy:  # as the chart and dev up install it: the operator applies without reads
                    await install_ownership_policy(cluster, kube)
                result = await run_operator_bench(kube, cluster.kubeconfig, n, root, profile, in_flight)
                floor, floor_requests, floor_cpu = await run_floor(kube, n, root)
                floor_load = os.getloadavg()[0]
        finally:
            cluster.stop()
    requests: dict[WriteKey, float] = result["writes"]
    writes = {k: v for k, v in requests.items() if k[0] != "GET"}
    floor_writes = {k: v for k, v in floor_requests.items() if k[0] != "GET"}
    total = sum(v for k, v in writes.items() if k[1] != "events")
    floor_total = sum(v for k, v in floor_writes.items() if k[1] != "events")
    reads = sum(v for k, v in requests.items() if k[0] == "GET")
    floor_reads = sum(v for k, v in floor_requests.items() if k[0] == "GET")
    rejected = sum(v for k, v in writes.items() if k[1] != "events" and not k[3].startswith("2"))
    cores = os.cpu_count()
    print(f"\n{n} Functions applied at once on the local cluster ({cores} cores by os.cpu_count(), "
          f"load average {os.getloadavg()[0]:.1f} at the end)")  # fmt: skip
    print(f"operator: api_requests_in_flight {in_flight or OperatorSettings().api_requests_in_flight}, "
          f"ownership policy {'installed' if ownership_policy else 'not installed (reads first)'}\n")  # fmt: skip
    print(f"{'figure':<46}{'kubelambda operator':>22}{'floor: direct apply':>22}")
    print(f"{'all Deployments exist + every status written':<46}{result['elapsed']:>20.1f} s{floor:>20.1f} s")
    print(f"{'  operator / floor':<46}{result['elapsed'] / floor:>21.2f}x")
    print(f"{'  (creating the Functions took)':<46}{result['created']:>20.1f} s")
    print(f"{'  (operator start to one status, not timed)':<46}{result['ready']:>20.1f} s")
    print(f"{'load average (1 min) at the end of each phase':<46}{result['load']:>22.1f}{floor_load:>22.1f}")
    print(f"{'Deployments / statuses seen':<46}{result['deployments']:>15} / {result['statuses']}")
    cpu: dict[str, float] = result["cpu"]
    print(f"{'CPU seconds during the phase, by process:':<46}")
    for name in sorted(set(cpu) | set(floor_cpu), key=lambda k: -max(cpu.get(k, 0.0), floor_cpu.get(k, 0.0))):
        print(f"{'  ' + name:<46}{cpu.get(name, 0.0):>20.1f} s{floor_cpu.get(name, 0.0):>20.1f} s")
    print(f"{'  all of these':<46}{sum(cpu.values()):>20.1f} s{sum(floor_cpu.values()):>20.1f} s")
    print(f"{'operator peak RSS':<46}{result['peak_rss_mb']:>19.0f} MB")
    print(f"{'API writes per Function (excluding Events)':<46}{total / n:>22.2f}{floor_total / n:>22.2f}")
    print(f"{'  of which answered other than 2xx':<46}{rejected / n:>22.2f}")
    print(f"{'single-object reads (GET) per Function':<46}{reads / n:>22.2f}{floor_reads / n:>22.2f}")
    print(
        "\nevery request counted by apiserver_request_total, per Function (verb resource[/subresource] code):"
    )
    for key in sorted(set(requests) | set(floor_requests)):
        print(
            f"{'  ' + label(key):<46}{requests.get(key, 0.0) / n:>22.2f}"
            f"{floor_requests.get(key, 0.0) / n:>22.2f}"
        )
    print("\ntargets: <= 1.3x the floor's time, <= 200 MB, writes <= the floor's + 1 status write")
    return 0 if result["deployments"] >= n and result["statuses"] >= n else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument(
        "--profile", type=Path, help="py-spy output for the operator (.txt: collapsed stacks)"
    )
    parser.add_argument(
        "--in-flight", type=int, help="the operator's api_requests_in_flight (default: its own default)"
    )
    parser.add_argument(
        "--no-ownership-policy",
        action="store_true",
        help="without the ownership policy: the operator reads every object before applying it",
    )
    args = parser.parse_args()
    profile = args.profile.resolve() if args.profile else None
    return asyncio.run(
        main_async(
            args.functions, profile, in_flight=args.in_flight, ownership_policy=not args.no_ownership_policy
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
