"""The chart's default of three gateway replicas on real containers (issue 18): all three Ready, one holds the
leader Lease, invokes through the gateway Service (its NodePort, kube-proxy spreading connections over the
replicas) are answered, and a Function's reserved concurrency holds across the replicas: with ``reserved: 2`` and
8 concurrent slow calls, at most 2 run at once in the function's pods (the function's own record of when each
call ran, on the host's clock that every container shares) and the surplus gets Lambda's 429 with the reserved
concurrency's reason."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kltest import Cluster
from kltest.e2e import invoke, python, ready
from kltest.platform import lambda_client

SYSTEM = "kubelambda-system"
GATEWAY = "app.kubernetes.io/component=gateway"
LEADER_LEASE = "kubelambda-gateway-leader"
CALLS = 8
RESERVED = 2

# Each call runs until the wall-clock time the test gives (every call it admitted is still running while the rest
# arrive) and returns when it ran, by the host's clock (containers share it), and in which pod.
SLOW = """\
import os
import time


def handler(event, context):
    start = time.time()
    time.sleep(max(0.0, event["until"] - start))
    return {"start": start, "end": time.time(), "pod": os.environ["HOSTNAME"]}
"""


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(600)
async def test_three_replicas_keep_reserved_concurrency_exact(cluster: Cluster, namespace: str) -> None:
    deployment = cluster.kubectl_json("get", "deployment", "-n", SYSTEM, "kubelambda-gateway")
    assert deployment["spec"]["replicas"] == 3, "the chart's default is three gateway replicas"
    assert deployment["status"].get("readyReplicas") == 3, deployment["status"]
    pods = cluster.kubectl_json("get", "pods", "-n", SYSTEM, "-l", GATEWAY)["items"]
    ips = {p["status"]["podIP"] for p in pods if p["status"].get("phase") == "Running"}
    assert len(ips) == 3, ips
    # The leader's identity is its URL (http://<pod IP>:<port>#<random>): one of the three replicas.
    lease = cluster.kubectl_json("get", "lease", "-n", SYSTEM, LEADER_LEASE)
    holder = lease["spec"].get("holderIdentity") or ""
    assert urllib.parse.urlsplit(holder).hostname in ips, (holder, ips)

    doc = python("slow", SLOW, timeoutSeconds=120, concurrency={"reserved": RESERVED})
    cluster.apply(doc, namespace)
    await ready(cluster, namespace, "slow")
    s = cluster.state
    # A client per caller: each its own connection, which kube-proxy sends to any of the replicas.
    clients = [
        lambda_client(s.gateway_url, s.aws_access_key_id, s.aws_secret_access_key) for _ in range(CALLS)
    ]
    start = threading.Barrier(CALLS)
    until = time.time() + 45  # set before the callers start; each admitted call runs until then

    def call(client: Any) -> dict[str, Any]:
        start.wait()
        try:
            answer = invoke(client, f"{namespace}/slow", {"until": until})
        except client.exceptions.TooManyRequestsException as e:
            return {"throttled": e.response.get("Reason"), "at": time.time()}
        return {"answer": answer, "at": time.time()}

    with ThreadPoolExecutor(CALLS) as pool:
        results = await asyncio.to_thread(lambda: list(pool.map(call, clients)))
    ran = [r["answer"] for r in results if "answer" in r]
    for answer in ran:
        assert "FunctionError" not in answer, answer["body"]
    reasons = [r["throttled"] for r in results if "throttled" in r]
    # Refused by the reserved concurrency, counted by the leader for all three replicas; or admitted, then no
    # instance of the function was free within the gateway's slot wait (a second instance still starting on this
    # loaded node): Lambda's 429 with the pool's reason, and its slot is given back.
    reserved = reasons.count("ReservedFunctionConcurrentInvocationLimitExceeded")
    busy = reasons.count("ConcurrentInvocationLimitExceeded")
    print(f"{len(ran)} ran, {reserved} refused by reserved concurrency, {busy} found no free instance")
    assert reserved + busy + len(ran) == CALLS, results
    # The surplus refused while the admitted calls still ran (before `until`)...
    assert all(r["at"] < until for r in results if "throttled" in r), (until, results)
    # ... by the limit: no more than RESERVED admitted at once (more only after an admitted call was given up).
    assert reserved >= CALLS - RESERVED - busy, results
    # The agents never had more than RESERVED: every call that ran was still running at `until`.
    assert 1 <= len(ran) <= RESERVED, results
    spans = [(a["body"]["start"], a["body"]["end"]) for a in ran]
    assert most_at_once(spans) == len(ran), spans
