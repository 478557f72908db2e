"""Functions on real containers: a hello of every runtime image built here, through the chart's gateway (boto3),
scale to zero and back, the kernel's OOM killer → Lambda's out-of-memory error, timeouts, an Event invoke retried."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.e2e import example, function_pods, invoke, python, ready, report
from kubelambda.kube import KubeClient

# Runtime → (example, what its hello answers contain). Java's examples need a code image built with Maven (not here).
HELLOS = {
    "python3.11": "hello-python3.11",
    "python3.13": "hello-python3.13",
    "nodejs20": "hello-nodejs20",
    "ruby3.3": "hello-ruby3.3",
    "provided": "hello-provided",
}


@pytest.mark.parametrize("runtime", sorted(HELLOS))
async def test_hello_of_each_runtime_image_runs_in_a_container(
    runtime: str, cluster: Cluster, kube: KubeClient, client: Any, namespace: str
) -> None:
    doc = example(HELLOS[runtime])
    cluster.apply(doc, namespace)
    name = doc["metadata"]["name"]
    await ready(cluster, namespace, name)
    answer = await asyncio.to_thread(invoke, client, f"{namespace}/{name}", {"name": "e2e"})
    assert "FunctionError" not in answer, answer["body"]
    assert "e2e" in json.dumps(answer["body"]) or "Hello" in json.dumps(answer["body"]), answer["body"]
    assert report(answer["log"])["Memory Size"] == f"{doc['spec']['memoryMB']} MB"
    # A real container of the kubelet, not a process of the process node.
    [pod] = [p for p in await function_pods(kube, namespace) if p["status"].get("phase") == "Running"]
    [status] = pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://"), status


async def test_scale_to_zero_and_back(
    cluster: Cluster, kube: KubeClient, client: Any, namespace: str
) -> None:
    doc = python(
        "idle",
        "def handler(event, context):\n    return {'ok': True}\n",
        scaling={"scaleToZeroAfterSeconds": 5, "warmPool": False},
    )
    cluster.apply(doc, namespace)
    await ready(cluster, namespace, "idle")
    first = await asyncio.to_thread(invoke, client, f"{namespace}/idle")
    assert first["body"] == {"ok": True}
    await wait_for(
        lambda: function_pods(kube, namespace),
        lambda pods: not pods,
        what="the Function's pods to go (scale to zero)",
        timeout=180,
    )
    started = time.monotonic()
    again = await asyncio.to_thread(invoke, client, f"{namespace}/idle")
    assert again["body"] == {"ok": True}, again["body"]
    print(f"cold start from zero on the container node: {time.monotonic() - started:.2f} s")


HOG = """
held = []


def handler(event, context):
    held.clear()
    for _ in range(event["mb"]):
        held.append(bytearray(1 << 20))
    return {"held": len(held) // event["mb"]}
"""


async def test_memory_limit_kills_with_lambdas_out_of_memory_error(
    cluster: Cluster, client: Any, namespace: str
) -> None:
    cluster.apply(python("hog", HOG, memoryMB=128, timeoutSeconds=60), namespace)
    await ready(cluster, namespace, "hog")
    ok = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 40})
    assert ok["body"] == {"held": 1}, ok["body"]
    oom = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 400})
    print(oom["log"])
    assert oom["FunctionError"] == "Unhandled"
    assert oom["body"]["errorType"] == "Runtime.OutOfMemory", oom["body"]
    killed = report(oom["log"])
    assert killed["Max Memory Used"] == "128 MB", killed
    assert killed["Error Type"] == "Runtime.OutOfMemory"
    again = await asyncio.to_thread(invoke, client, f"{namespace}/hog", {"mb": 1})
    assert again["body"] == {"held": 1}, again["body"]


async def test_timeout(cluster: Cluster, client: Any, namespace: str) -> None:
    code = "import time\n\n\ndef handler(event, context):\n    time.sleep(event['s'])\n    return 'done'\n"
    cluster.apply(python("slow", code, timeoutSeconds=2), namespace)
    await ready(cluster, namespace, "slow")
    answer = await asyncio.to_thread(invoke, client, f"{namespace}/slow", {"s": 10})
    assert answer["FunctionError"] == "Unhandled"
    assert "Task timed out after 2" in answer["body"]["errorMessage"], answer["body"]
    fine = await asyncio.to_thread(invoke, client, f"{namespace}/slow", {"s": 0})
    assert fine["body"] == "done", fine["body"]


FLAKY = """
import os


def handler(event, context):
    marker = "/tmp/attempted-" + event["id"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    print("RETRIED-OK " + event["id"])
    return "ok"
"""


async def test_event_invoke_is_retried_after_a_function_error(
    cluster: Cluster, client: Any, namespace: str
) -> None:
    cluster.apply(
        python("flaky", FLAKY, **{"async": {"maxRetries": 1}}, scaling={"minInstances": 1}), namespace
    )
    await ready(cluster, namespace, "flaky")
    accepted = await asyncio.to_thread(
        client.invoke, FunctionName=f"{namespace}/flaky", InvocationType="Event", Payload=b'{"id": "e2e1"}'
    )
    assert accepted["StatusCode"] == 202

    def logs() -> str:
        return cluster.kubectl(
            "logs", "-n", namespace, "-l", "kubelambda.io/function=flaky", "--tail=-1"
        ).stdout

    await wait_for(
        lambda: asyncio.to_thread(logs),
        lambda out: "RETRIED-OK e2e1" in out,
        what="the retried Event invocation to succeed (its log line)",
        timeout=180,
    )
