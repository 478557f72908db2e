"""Warm pools on the real local cluster: cold starts served by specialised generic pods (docs/warm-pools.md).

The gateway keeps a python3.11 pool of two pods in kubelambda-warm-pool; the operator and the gateway run as their
ServiceAccounts (hack/*-rbac.yaml), so the pool's RBAC is exercised too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.files import FileServer, serve_files
from kltest.platform import (
    POOL_NS,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
    running_platform,
)
from kltest.warmpool import free_pool_pods, pool_of, wait_free_pool_pods
from kubelambda import metrics
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.warmpool import ABANDONED_CLAIM_SECONDS
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.labels import FUNCTION_LABEL
from kubelambda.resources.warmpool import (
    CLAIMED_AT_ANNOTATION,
    CLAIMED_BY_ANNOTATION,
    POOL_LABEL,
    POOL_RUNTIME_LABEL,
)

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
POOL_SIZE = 2

HANDLER = """
import os

VERSION = {version!r}


def handler(event, context):
    return {{"version": VERSION, "function": context.function_name, "greeting": os.environ.get("GREETING"),
             "memory": context.memory_limit_in_mb, "taskRoot": os.environ.get("LAMBDA_TASK_ROOT")}}
"""

# Every pool pod that answered in this module, and the function it answered for: a pod never serves two.
SERVED_BY: dict[str, str] = {}


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(cluster, kube, warm_pool_sizes={"python3.11": POOL_SIZE}) as platform:
        await wait_free(platform.gateway, POOL_SIZE, timeout=90)
        yield platform


def free_pods(gateway: Gateway) -> list[str]:
    return sorted(p.name for p in free_pool_pods(gateway, "python3.11"))


async def wait_free(gateway: Gateway, n: int, *, timeout: float = 60) -> list[str]:
    """The names of the free python3.11 pool pods, once there are ``n`` (kltest's wait, which says what the pool
    held if it gives up)."""
    return sorted(p.name for p in await wait_free_pool_pods(gateway, "python3.11", n, timeout=timeout))


def function(name: str, version: str = "v1", **spec: Any) -> JSON:
    doc = python_function(name, HANDLER.format(version=version), **spec)
    doc["spec"]["memoryMB"] = 256
    return doc


async def invoke(url: str, name: str) -> tuple[JSON, dict[str, str]]:
    def call() -> tuple[JSON, dict[str, str]]:
        response = lambda_client(url).invoke(FunctionName=name, Payload=b"{}")
        assert response["StatusCode"] == 200
        assert "FunctionError" not in response, response["Payload"].read()
        return json.loads(response["Payload"].read()), response["ResponseMetadata"]["HTTPHeaders"]

    body, headers = await asyncio.to_thread(call)
    pod = headers.get("x-kubelambda-warm-pool")
    if pod is not None:
        owner = SERVED_BY.setdefault(pod, name)
        assert owner == name, f"pool pod {pod} served {owner} and then {name}"
    return body, headers


async def pod_or_none(kube: KubeClient, name: str) -> JSON | None:
    return await kube.get_or_none(resource_path("v1", "pods", namespace=POOL_NS, name=name))


async def test_first_invoke_from_zero_is_served_by_a_specialised_pool_pod_which_is_then_replaced_and_retired(
    env: Env,
) -> None:
    claims = metrics.WARM_POOL_CLAIMS.labels("python3.11")
    before = claims._value.get()
    await env.deploy(function("pooled"))
    body, headers = await invoke(env.url, f"{env.namespace}/pooled")
    pod = headers.get("x-kubelambda-warm-pool")
    assert pod is not None, f"not served by a pool pod: {headers}"
    assert headers["x-kubelambda-cold-start"] == "true"
    # The pool pod runs the function as its own pod would: name, environment, memory, task root.
    assert body.pop("taskRoot").endswith("/var/task")  # locally under the pod's root folder
    assert body == {"version": "v1", "function": "pooled", "greeting": "Hello", "memory": "256"}
    assert claims._value.get() == before + 1

    # In the background: the pod is labelled as the function's and leaves the pool, which replaces it.
    claimed = await wait_for(
        lambda: pod_or_none(env.kube, pod),
        lambda p: p is not None and p["metadata"]["labels"].get(FUNCTION_LABEL) == "pooled",
        what=f"pool pod {pod} labelled as the function's",
    )
    assert POOL_LABEL not in claimed["metadata"]["labels"]
    assert claimed["metadata"]["labels"][POOL_RUNTIME_LABEL] == "python3.11"
    free = await wait_free(env.gateway, POOL_SIZE, timeout=90)
    assert pod not in free

    # The regular scale-up happened too; once the function's own instance is ready, the pool pod is deleted.
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.ready_endpoints((env.namespace, "pooled"))),
        bool,
        what="the function's own instance ready",
        timeout=90,
    )
    await wait_for(
        lambda: pod_or_none(env.kube, pod),
        lambda p: p is None or p["metadata"].get("deletionTimestamp") is not None,
        what=f"the specialised pool pod {pod} retired",
        timeout=60,
    )
    body, headers = await invoke(env.url, f"{env.namespace}/pooled")
    assert body["version"] == "v1"
    assert "x-kubelambda-warm-pool" not in headers


async def test_a_code_change_never_runs_old_code_on_a_pool_pod(env: Env) -> None:
    await wait_free(env.gateway, POOL_SIZE, timeout=90)
    await env.deploy(function("changing", "v1"))
    body, headers = await invoke(env.url, f"{env.namespace}/changing")
    first = headers.get("x-kubelambda-warm-pool")
    assert first is not None
    assert body["version"] == "v1"

    env.apply(function("changing", "v2"))
    pool = pool_of(env.gateway)
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.functions.get((env.namespace, "changing"))),
        lambda fn: fn is not None and "v2" in (fn.spec.code.inline or {}).get("app.py", ""),
        what="the gateway to see the new code",
    )
    # The pod specialised with the old code gets no new request from now on, and is deleted.
    fn = env.gateway.registry.functions[(env.namespace, "changing")]
    assert all(pool.pod_at(e) != first for e in pool.endpoints(fn))
    await wait_for(
        lambda: pod_or_none(env.kube, first),
        lambda p: p is None or p["metadata"].get("deletionTimestamp") is not None,
        what=f"pool pod {first} (old code) retired",
        timeout=60,
    )
    # Whatever answers now (another pool pod or the function's own instance) runs the new code.
    versions = set()
    for _ in range(3):
        body, headers = await invoke(env.url, f"{env.namespace}/changing")
        assert headers.get("x-kubelambda-warm-pool") != first
        if headers.get("x-kubelambda-warm-pool") is not None:
            assert body["version"] == "v2", "a pool pod ran old code"
        versions.add(body["version"])
    await wait_for(
        lambda: invoke(env.url, f"{env.namespace}/changing"),
        lambda answer: answer[0]["version"] == "v2",
        what="the new code answering",
        timeout=90,
    )


async def test_two_functions_cold_at_once_get_two_pool_pods(env: Env) -> None:
    await wait_free(env.gateway, POOL_SIZE, timeout=90)
    await env.deploy(function("left"))
    await env.deploy(function("right"))
    (left, lh), (right, rh) = await asyncio.gather(
        invoke(env.url, f"{env.namespace}/left"), invoke(env.url, f"{env.namespace}/right")
    )
    assert (left["function"], right["function"]) == ("left", "right")
    assert lh.get("x-kubelambda-warm-pool") is not None
    assert rh.get("x-kubelambda-warm-pool") is not None
    assert lh["x-kubelambda-warm-pool"] != rh["x-kubelambda-warm-pool"]
    # And each keeps its own: a second call of each lands on its own pod (or its own instance), never the other's.
    for name in ("left", "right", "left", "right"):
        body, _ = await invoke(env.url, f"{env.namespace}/{name}")
        assert body["function"] == name


async def test_a_function_that_opts_out_takes_the_normal_path(env: Env) -> None:
    await wait_free(env.gateway, POOL_SIZE, timeout=90)
    claims = metrics.WARM_POOL_CLAIMS.labels("python3.11")
    before = claims._value.get()
    scale_ups = env.gateway.path.activator.scale_ups
    await env.deploy(
        function("optout", scaling={"warmPool": False, "scaleToZeroAfterSeconds": 60}),
    )
    body, headers = await invoke(env.url, f"{env.namespace}/optout")
    assert body["function"] == "optout"
    assert "x-kubelambda-warm-pool" not in headers
    assert headers["x-kubelambda-cold-start"] == "true"
    assert env.gateway.path.activator.scale_ups == scale_ups + 1
    assert claims._value.get() == before, "a pool pod was claimed for a function that opted out"


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return buf.getvalue()


@pytest.fixture(scope="module")
def zip_server() -> Iterator[FileServer]:
    with serve_files() as server:
        yield server


async def test_archive_code_is_fetched_and_verified_by_the_pool_pod(env: Env, zip_server: FileServer) -> None:
    await wait_free(env.gateway, POOL_SIZE, timeout=90)
    data = zipped({"app.py": HANDLER.format(version="zipped"), "lib/data.txt": "x"})
    zip_server.files["/fn.zip"] = data
    doc = function("zipped")
    doc["spec"]["code"] = {
        "archive": {"url": f"{zip_server.url}/fn.zip", "sha256": hashlib.sha256(data).hexdigest()}
    }
    await env.deploy(doc)
    body, headers = await invoke(env.url, f"{env.namespace}/zipped")
    assert headers.get("x-kubelambda-warm-pool") is not None
    assert body["version"] == "zipped"


async def test_an_init_error_on_a_pool_pod_answers_like_lambda(env: Env) -> None:
    await wait_free(env.gateway, POOL_SIZE, timeout=90)
    doc = python_function("broken", "raise RuntimeError('no config')\n")
    await env.deploy(doc)

    def call() -> tuple[JSON, JSON]:
        response = lambda_client(env.url).invoke(FunctionName=f"{env.namespace}/broken", Payload=b"{}")
        return response, json.loads(response["Payload"].read())

    response, body = await asyncio.to_thread(call)
    assert response["ResponseMetadata"]["HTTPHeaders"].get("x-kubelambda-warm-pool") is not None
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert "no config" in body["errorMessage"], body


@pytest.mark.parametrize("claimant", ["this gateway before a restart", "a gateway gone"])
async def test_a_pool_pod_claimed_by_a_gateway_that_stopped_before_relabelling_it_is_replaced(
    env: Env, claimant: str
) -> None:
    """A gateway that stops between its claim and the relabelling leaves a pod that its pool's ReplicaSet still
    counts and nobody will specialise: the gateway running now deletes it, the ReplicaSet replaces it, and the
    pool is whole again (before, only the pod's lifetime, 10 minutes by default, retired it)."""
    abandoned = metrics.WARM_POOL_RETIRED.labels("abandoned")
    before = abandoned._value.get()
    free = await wait_free(env.gateway, POOL_SIZE, timeout=90)
    victim = free[0]
    pool = pool_of(env.gateway)
    # What _claim writes: this gateway's identity (a restarted gateway has its predecessor's), or another's long ago.
    claimed_by, age = (
        (pool.identity, 0.0) if claimant.startswith("this") else ("gone-gw", ABANDONED_CLAIM_SECONDS + 5)
    )
    claimed_at = datetime.fromtimestamp(time.time() - age, UTC).isoformat(timespec="seconds")
    await env.kube.patch(
        resource_path("v1", "pods", namespace=POOL_NS, name=victim),
        {"metadata": {"annotations": {CLAIMED_BY_ANNOTATION: claimed_by, CLAIMED_AT_ANNOTATION: claimed_at}}},
    )
    await wait_for(
        lambda: pod_or_none(env.kube, victim),
        lambda p: p is None or p["metadata"].get("deletionTimestamp") is not None,
        what=f"the abandoned pool pod {victim} deleted",
        timeout=60,
    )

    # The API server marks the pod deleted before the gateway's DELETE call returns and counts it: wait for that.
    async def retired() -> float:
        return abandoned._value.get()

    await wait_for(
        retired, lambda n: n == before + 1, what="the pod counted as retired (abandoned)", timeout=30
    )
    again = await wait_free(env.gateway, POOL_SIZE, timeout=90)
    assert victim not in again
