"""Memory and CPU limits on the process node, enforced by real cgroups (the node runs as root here).

Each container gets a cgroup with its ``resources.limits``; the kernel's OOM killer ends a container that
allocates past its memory limit (``OOMKilled``, as on a kubelet), and a Function's runtime killed that way
answers Lambda's out-of-memory error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kltest import Cluster, manifests, wait_for
from kltest.platform import (
    RunningOperator,
    deploy,
    lambda_client,
    python_function,
    start_gateway,
    start_operator,
    stop_gateway,
)
from kubelambda.devcluster import DevState
from kubelambda.gateway.app import Gateway
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.deployment import cpu_limit_millicores

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
MiB = 2**20


def parents(cluster: Cluster) -> dict[str, Path]:
    """The node's cgroup parents per controller, as it recorded them."""
    record = json.loads((cluster.state_dir / "cgroups.json").read_text())
    return {c: Path(p) for c, p in record["parents"].items()}


def container_cgroup(cluster: Cluster, pod_uid: str, container: str, controller: str) -> Path:
    return parents(cluster)[controller] / f"pod{pod_uid}" / container


def pod(name: str, script: str, *, limits: JSON, restart: str = "Never") -> JSON:
    return manifests.pod(
        name,
        ["python3", "-c", script],
        restart=restart,
        image="python",
        grace=1,
        container={"resources": {"limits": limits}},
    )


async def get_pod(kube: KubeClient, ns: str, name: str) -> JSON:
    return await kube.get(resource_path("v1", "pods", namespace=ns, name=name))


def state_of(p: JSON) -> JSON:
    statuses = p.get("status", {}).get("containerStatuses") or [{}]
    state: JSON = statuses[0].get("state", {})
    return state


async def test_the_node_says_limits_are_enforced(cluster: Cluster) -> None:
    state = DevState.read(cluster.state_dir)
    assert state is not None
    assert state.limits.startswith("enforced (cgroup v"), state.limits
    assert all(p.is_dir() for p in parents(cluster).values())


async def test_a_pod_over_its_memory_limit_is_oom_killed(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    script = "b = bytearray(200 * 2**20)\nprint('allocated', flush=True)"
    cluster.apply(pod("hog", script, limits={"memory": "64Mi"}), namespace)
    done = await wait_for(
        lambda: get_pod(kube, namespace, "hog"),
        lambda p: "terminated" in state_of(p),
        what="pod hog to terminate",
        timeout=60,
    )
    terminated = state_of(done)["terminated"]
    assert terminated["reason"] == "OOMKilled", terminated
    assert terminated["exitCode"] == 137
    assert done["status"]["phase"] == "Failed"
    log = cluster.kubectl("logs", "-n", namespace, "hog").stdout
    assert "allocated" not in log


async def test_cpu_quota_memory_limit_stats_and_cleanup(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    # 40 MB held, then a CPU-bound loop: the quota of 100m must throttle it.
    script = "b = bytearray(40 * 2**20)\nwhile True:\n    pass"
    cluster.apply(pod("spin", script, limits={"memory": "96Mi", "cpu": "100m"}), namespace)
    running = await wait_for(
        lambda: get_pod(kube, namespace, "spin"),
        lambda p: "running" in state_of(p),
        what="pod spin to run",
        timeout=60,
    )
    uid = running["metadata"]["uid"]
    cpu = container_cgroup(cluster, uid, "main", "cpu")
    memory = container_cgroup(cluster, uid, "main", "memory")
    if (cpu / "cpu.max").exists():  # cgroup v2
        assert (cpu / "cpu.max").read_text().split() == ["10000", "100000"]
        assert int((memory / "memory.max").read_text()) == 96 * MiB
    else:
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 10_000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
        assert int((memory / "memory.limit_in_bytes").read_text()) == 96 * MiB

    def throttled() -> int:
        for line in (cpu / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0

    await wait_for(
        lambda: asyncio.to_thread(throttled), lambda n: n > 0, what="the CPU-bound loop to be throttled"
    )

    def summary_memory() -> JSON:
        out = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{cluster.state.node}/proxy/stats/summary")
        mine = [p for p in json.loads(out.stdout)["pods"] if p["podRef"]["uid"] == uid]
        memory_stats: JSON = mine[0]["containers"][0]["memory"] if mine and mine[0]["containers"] else {}
        return memory_stats

    # The Summary API reads the container's cgroup: the 40 MB it holds, within its 96 MiB limit.
    stats = await wait_for(
        lambda: asyncio.to_thread(summary_memory),
        lambda m: m.get("workingSetBytes", 0) >= 40 * MiB,
        what="the stats summary to show the pod's 40 MB",
    )
    assert stats["workingSetBytes"] <= 96 * MiB
    assert stats["usageBytes"] >= stats["workingSetBytes"]

    cluster.kubectl("delete", "pod", "spin", "-n", namespace, "--wait=true")
    await wait_for(
        lambda: asyncio.sleep(0, result=[p.exists() for p in (cpu.parent, memory.parent)]),
        lambda exist: not any(exist),
        what=f"the cgroups of pod {uid} to be removed",
    )


# ---- Functions: Lambda's out-of-memory error --------------------------------------------------------------

HANDLER = """
held = []


def handler(event, context):
    held.append(bytearray(event["mb"] * 2**20))
    return {"held": len(held)}
"""


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[tuple[Gateway, str]]:
    operator: RunningOperator = await start_operator(cluster, kube, problem_retry_seconds=1.0)
    gateway, url = await start_gateway(cluster, kube, slot_wait_seconds=1.0, autoscale_interval_seconds=0.5)
    try:
        yield gateway, url
    finally:
        await stop_gateway(gateway)
        await operator.stop()


def invoke(client: Any, name: str, payload: JSON) -> JSON:
    response: JSON = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), LogType="Tail")
    response["body"] = json.loads(response["Payload"].read() or b"null")
    response["log"] = base64.b64decode(response.get("LogResult", "")).decode()
    return response


def report(log: str) -> JSON:
    line = next(line for line in log.splitlines() if line.startswith("REPORT "))
    fields = dict(re.findall(r"([A-Za-z ]+): ([^\t]+)\t", line.removeprefix("REPORT ")))
    return {k.strip(): v for k, v in fields.items()}


async def test_a_function_over_its_memory_is_killed_with_lambdas_out_of_memory_error(
    platform: tuple[Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    gateway, url = platform
    doc = python_function("hog", HANDLER, memoryMB=128, timeoutSeconds=30)
    await deploy(cluster, gateway, namespace, doc)
    client = lambda_client(url)

    ok = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 60})
    assert "FunctionError" not in ok, ok["body"]
    assert ok["body"] == {"held": 1}
    used = report(ok["log"])
    assert used["Memory Size"] == "128 MB"
    assert 60 <= int(used["Max Memory Used"].removesuffix(" MB")) <= 128, used

    pods = await kube.get(resource_path("v1", "pods", namespace=namespace))
    [function_pod] = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    uid = function_pod["metadata"]["uid"]
    container = function_pod["spec"]["containers"][0]["name"]
    cpu = container_cgroup(cluster, uid, container, "cpu")
    quota = cpu_limit_millicores(128) * 100
    if (cpu / "cpu.max").exists():
        assert (cpu / "cpu.max").read_text().split() == [str(quota), "100000"]
    else:
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == quota

    oom = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 400})
    assert oom["FunctionError"] == "Unhandled"
    assert oom["body"]["errorType"] == "Runtime.OutOfMemory", oom["body"]
    assert oom["body"]["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
    print(ok["log"], oom["log"], sep="\n")  # shown with -s: the REPORT lines
    killed = report(oom["log"])
    assert killed["Max Memory Used"] == "128 MB", killed
    assert killed["Status"] == "error"
    assert killed["Error Type"] == "Runtime.OutOfMemory"

    # The agent starts a new runtime: the Function answers again, with its memory back to the start.
    again = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 1})
    assert again["body"] == {"held": 1}, again["body"]
