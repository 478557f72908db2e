"""Functions on real containers: a hello of every runtime image built here, through the chart's gateway (boto3),
scale to zero and back, the kernel's OOM killer → Lambda's out-of-memory error, CPU proportional to memory (the
container's CFS quota), timeouts, an Event invoke retried. Every test's namespace enforces Pod Security
``restricted`` (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.e2e import code_image, cpu_quota, example, function_pods, invoke, python, ready, report
from kubelambda.kube import KubeClient

# Runtime → example. java21 runs from a code image built here (test_java21_from_a_code_image).
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
    # 512 MB (290m CPU) rather than the examples' 128 MB (73m): at 128 MB, on a loaded 2-core machine, Node.js's
    # start took 12.4 s on kind, over Lambda's 10 s Init limit; this test is about the images, not sizing.
    doc = example(HELLOS[runtime], memoryMB=512)
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


SPIN = """
import time


def handler(event, context):
    started, cpu = time.monotonic(), time.process_time()
    total = 0
    for i in range(event["n"]):
        total += i * i
    return {"wall": time.monotonic() - started, "cpu": time.process_time() - cpu}
"""


async def test_cpu_is_proportional_to_memory(
    cluster: Cluster, kube: KubeClient, client: Any, namespace: str
) -> None:
    """Lambda's 1,769 MB = 1 vCPU: the operator's CPU limit becomes the container's CFS quota, which the kernel
    applies (a fixed loop, measured at both sizes, is printed; timing is not asserted)."""
    sizes = {"spin128": 128, "spin1769": 1769}
    for name, mb in sizes.items():
        cluster.apply(
            python(name, SPIN, memoryMB=mb, timeoutSeconds=120, scaling={"minInstances": 1}), namespace
        )
    for name in sizes:
        await ready(cluster, namespace, name)
    pods = {
        p["metadata"]["labels"]["kubelambda.io/function"]: p for p in await function_pods(kube, namespace)
    }
    for name, mb in sizes.items():
        millicores = math.ceil(mb * 1000 / 1769)
        [container] = pods[name]["spec"]["containers"]
        limit = container["resources"]["limits"]["cpu"]  # the API server writes 1000m as "1"
        assert (int(limit[:-1]) if limit.endswith("m") else int(limit) * 1000) == millicores, limit
        [status] = pods[name]["status"]["containerStatuses"]
        quota, period = cpu_quota(status["containerID"].removeprefix("containerd://"))
        assert (quota, period) == (millicores * period // 1000, period), (name, quota, period)
        spun = await asyncio.to_thread(invoke, client, f"{namespace}/{name}", {"n": 10_000_000})
        print(
            f"{name}: CPU limit {millicores}m, quota {quota}/{period} us; 1e7-step loop took "
            f"{spun['body']['wall']:.2f} s wall, {spun['body']['cpu']:.2f} s CPU"
        )


JAVA_HELLO = """\
package e2e;
import java.util.Map;
public class Hello {
  public static Map<String, Object> handle(Map<String, Object> event) {
    return Map.of("hello", event.get("name"), "java", System.getProperty("java.specification.version"));
  }
}
"""


@pytest.fixture(scope="module")
def java21_code_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A code image FROM the java21 runtime image (classes compiled here, no Maven), imported into the node."""
    work = tmp_path_factory.mktemp("java21")
    src = work / "Hello.java"
    src.write_text(JAVA_HELLO)
    # Debian bookworm's javac is 17's: class files of 17 run on the java21 runtime, which the answer reports.
    subprocess.run(["javac", "--release", "17", "-d", str(work / "task"), str(src)], check=True, timeout=300)
    src.unlink()
    return code_image(
        "hello-java21", work, "FROM ghcr.io/kubelambda/runtime-java:21\nCOPY task/ /var/task/\n"
    )


async def test_java21_from_a_code_image(
    cluster: Cluster, kube: KubeClient, client: Any, namespace: str, java21_code_image: str
) -> None:
    doc = example(
        "hello-java21", handler="e2e.Hello::handle", code={"image": java21_code_image}, memoryMB=512
    )
    doc["spec"]["timeoutSeconds"] = 30
    cluster.apply(doc, namespace)
    await ready(cluster, namespace, "hello-java21")
    answer = await asyncio.to_thread(invoke, client, f"{namespace}/hello-java21", {"name": "e2e"})
    assert "FunctionError" not in answer, answer["body"]
    assert answer["body"] == {"hello": "e2e", "java": "21"}, answer["body"]
    [pod] = [p for p in await function_pods(kube, namespace) if p["status"].get("phase") == "Running"]
    assert pod["spec"]["containers"][0]["image"] == java21_code_image
