"""No runtime substitution on the local node: a runtime runs on an interpreter of its version, or its pod waits with
reason RuntimeUnavailable; `dev serve --substitute-runtimes` runs it on another version and says so (log, REPORT).

The runtime used is one of the table's that this machine lacks (on Debian bookworm: python3.12/3.13, nodejs22,
java21, ruby3.3); the test fails, not skips, on a machine that has them all.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kltest import Cluster, start_cluster, wait_for
from kubelambda.devcluster import _interpreters
from kubelambda.kube import KubeClient, resource_path
from kubelambda.runtimes.table import RUNTIMES, image

JSON = dict[str, Any]
HANDLER = "import sys\n\ndef handler(event, context):\n    return {'version': sys.version.split()[0]}\n"


def missing(family: str | None = None) -> str:
    """A runtime of the table (of ``family``) whose interpreter this machine does not have."""
    for name, rt in RUNTIMES.items():
        if rt.spec.programs and (family is None or rt.family == family):
            try:
                _interpreters.resolve(name)
            except _interpreters.RuntimeUnavailable:
                return name
    raise AssertionError(
        f"this machine has an interpreter for every {family or ''} runtime; pick another test"
    )


def runtime_pod(name: str, runtime: str) -> list[JSON]:
    """A ConfigMap with app.py and a pod of ``runtime``'s image serving it, as the operator would run it."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"app.py": HANDLER}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "function",
                        "image": image(runtime, "ghcr.io/kubelambda"),
                        "env": [
                            {"name": "KUBELAMBDA_RUNTIME_NAME", "value": runtime},
                            {"name": "KUBELAMBDA_HANDLER", "value": "app.handler"},
                        ],
                        "volumeMounts": [{"name": "code", "mountPath": "/var/task"}],
                    }
                ],
                "volumes": [{"name": "code", "configMap": {"name": name}}],
            },
        },
    ]


async def get_pod(kube: KubeClient, ns: str, name: str) -> JSON:
    return await kube.get(resource_path("v1", "pods", namespace=ns, name=name))


def waiting(pod: JSON) -> JSON:
    state: JSON = (pod.get("status", {}).get("containerStatuses") or [{}])[0].get("state", {})
    return state.get("waiting") or {}


async def test_a_runtime_without_its_interpreter_waits_with_the_reason(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    runtime = missing()
    cluster.apply(runtime_pod("fn", runtime), namespace)
    stuck = await wait_for(
        lambda: get_pod(kube, namespace, "fn"),
        lambda p: waiting(p).get("reason") == "RuntimeUnavailable",
        what="the RuntimeUnavailable waiting reason",
    )
    assert stuck["status"]["phase"] == "Pending"
    message = waiting(stuck)["message"]
    assert f"runtime {runtime} needs" in message
    assert f"looked for {_interpreters.looked_for(runtime)}" in message
    assert "--substitute-runtimes" in message
    assert "RuntimeUnavailable" in cluster.kubectl("get", "pod", "fn", "-n", namespace).stdout


@pytest.fixture(scope="module")
def substituting() -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="kubelambda-subst-"))
    running = start_cluster(tmp, args=["--substitute-runtimes"])
    try:
        yield running
    finally:
        assert running.stop() == 0, f"logs in {tmp}"
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def subst_kube(substituting: Cluster) -> AsyncIterator[KubeClient]:
    async with KubeClient.from_kubeconfig(substituting.kubeconfig) as client:
        yield client


async def test_the_dev_opt_in_runs_another_version_and_says_which(
    substituting: Cluster, subst_kube: KubeClient
) -> None:
    runtime = missing("python")
    ns = f"t-{secrets.token_hex(4)}"
    await subst_kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
    await wait_for(
        lambda: subst_kube.get_or_none(resource_path("v1", "serviceaccounts", namespace=ns, name="default")),
        lambda sa: sa is not None,
        what="the default ServiceAccount",
    )
    substituting.apply(runtime_pod("fn", runtime), ns)
    running = await wait_for(
        lambda: get_pod(subst_kube, ns, "fn"),
        lambda p: p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"),
        what="the substituted runtime's pod running",
    )
    ran = _interpreters.resolve(runtime, substitute=True)

    def invoke() -> JSON:
        request = urllib.request.Request(f"http://{running['status']['podIP']}:8080/invoke", data=b"{}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body: JSON = json.loads(response.read())
            return body

    async def answer() -> JSON | None:
        try:
            return invoke()
        except OSError:
            return None  # the agent is not listening yet

    body = await wait_for(answer, lambda b: b is not None, what="an answer from the substituted runtime")
    assert body == {"version": ran.version}  # the interpreter that ran is the one the node said
    logs = await wait_for(
        lambda: _logs(substituting, ns),
        lambda text: "REPORT RequestId" in text,
        what="the REPORT line",
    )
    said = f"{runtime} on {ran.describe()}"
    assert f"RUNTIME SUBSTITUTED (dev opt-in): {said}" in logs
    report = next(line for line in logs.splitlines() if line.startswith("REPORT RequestId"))
    assert f"\tRuntime Substitute: {said}\t" in report
    await subst_kube.delete(resource_path("v1", "namespaces", name=ns))


async def _logs(cluster: Cluster, ns: str) -> str:
    return cluster.kubectl("logs", "fn", "-n", ns).stdout
