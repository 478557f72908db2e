"""The Function reconciler against the real local control plane, run as its own ServiceAccount.

The operator runs in-process (``kubelambda.operator.run``) with a token of the ServiceAccount bound to the
ClusterRole in hack/operator-rbac.yaml, so a permission missing there fails these tests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from kltest import Cluster, wait_for
from kltest.platform import REPO, SYSTEM_NS, RunningOperator, start_operator
from kubelambda import metrics
from kubelambda.devcluster import _interpreters
from kubelambda.gateway.activator import write_scale
from kubelambda.kube import ApiError, KubeClient, resource_path

pytestmark = pytest.mark.integration

FN_API = "kubelambda.io/v1alpha1"
JSON = dict[str, Any]
OWNED = {
    "deployment": ("apps/v1", "deployments", "{}"),
    "service": ("v1", "services", "{}"),
    "ingress policy": ("networking.k8s.io/v1", "networkpolicies", "{}"),
}


def example(runtime: str) -> JSON:
    doc: JSON = yaml.safe_load((REPO / "examples" / f"hello-{runtime}" / "function.yaml").read_text())
    return doc


def fn_path(ns: str, name: str, *, status: bool = False) -> str:
    return resource_path(
        FN_API, "functions", namespace=ns, name=name, subresource="status" if status else None
    )


@pytest.fixture(scope="module")
async def operator(cluster: Cluster, kube: KubeClient) -> AsyncIterator[RunningOperator]:
    running = await start_operator(cluster, kube, problem_retry_seconds=1.0)
    yield running
    await running.stop()


async def status_of(kube: KubeClient, ns: str, name: str) -> JSON:
    return dict((await kube.get(fn_path(ns, name))).get("status") or {})


def ready(status: JSON) -> JSON | None:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


async def wait_reconciled(kube: KubeClient, ns: str, name: str, *, timeout: float = 30) -> JSON:
    async def probe() -> JSON:
        return await kube.get(fn_path(ns, name))

    fn = await wait_for(
        probe,
        lambda f: (f.get("status") or {}).get("observedGeneration") == f["metadata"]["generation"],
        what=f"Function {ns}/{name} reconciled",
        timeout=timeout,
    )
    return dict(fn["status"])


async def apply_fn(cluster: Cluster, ns: str, doc: JSON) -> None:
    cluster.apply(doc, ns)


async def ready_for(
    kube: KubeClient, ns: str, name: str, reason: str, *, what: str, timeout: float = 30
) -> JSON:
    """Waits until Function ``ns/name``'s Ready condition gives ``reason``; returns its status."""
    status: JSON = await wait_for(
        lambda: status_of(kube, ns, name),
        lambda s: (ready(s) or {}).get("reason") == reason,
        what=what,
        timeout=timeout,
    )
    return status


async def apply_one_instance(cluster: Cluster, ns: str, runtime: str) -> str:
    """Applies ``runtime``'s example Function with one instance kept up; returns its name."""
    doc = example(runtime)
    doc["spec"]["scaling"] = {"minInstances": 1}
    await apply_fn(cluster, ns, doc)
    return str(doc["metadata"]["name"])


@pytest.mark.parametrize(
    "runtime",
    ["python3.11", "python3.12", "python3.13", "nodejs20", "nodejs22", "java21", "go", "ruby3.3", "provided"],
)
async def test_each_example_creates_its_objects(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str, runtime: str
) -> None:
    doc = example(runtime)
    name = doc["metadata"]["name"]
    await apply_fn(cluster, namespace, doc)
    status = await wait_reconciled(kube, namespace, name)
    fn = await kube.get(fn_path(namespace, name))
    uid = fn["metadata"]["uid"]
    assert ready(status) == {**ready(status), "status": "True", "reason": "ScaledToZero"}  # type: ignore[dict-item]
    assert status["instances"] == {"desired": 0, "ready": 0}
    assert status["invokeUrl"].endswith(f"/2015-03-31/functions/{namespace}/{name}/invocations")
    assert len(status["codeSha256"]) == 64

    owned = [
        resource_path("apps/v1", "deployments", namespace=namespace, name=name),
        resource_path("v1", "services", namespace=namespace, name=name),
        resource_path("networking.k8s.io/v1", "networkpolicies", namespace=namespace, name=name),
    ]
    if "inline" in doc["spec"]["code"]:
        owned.append(resource_path("v1", "configmaps", namespace=namespace, name=f"{name}-code"))
    for path in owned:
        obj = await kube.get(path)
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Function", name, uid, True), (
            path
        )
    deployment = await kube.get(owned[0])
    assert deployment["spec"]["replicas"] == 0  # minInstances, created in one write

    table = cluster.kubectl("get", "fn", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header == ["NAME", "RUNTIME", "VERSION-OF", "VERSION", "READY", "INSTANCES", "AGE"]
    # Cells by the header's column starts: a Function that is not a published version has empty VERSION cells.
    starts = [m.start() for m in re.finditer(r"\S+", table[0])] + [len(max(table, key=len)) + 1]
    row = {h: table[1][a:b].strip() for h, a, b in zip(header, starts, starts[1:], strict=False)}
    assert [row[h] for h in ("NAME", "RUNTIME", "VERSION-OF", "VERSION", "READY", "INSTANCES")] == [
        name,
        runtime,
        "",
        "",
        "True",
        "0",
    ]
    events = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    assert any(
        e["reason"] == "Created" and f"Deployment {namespace}/{name}" in e["message"] for e in events["items"]
    )


async def test_python_function_runs_and_answers(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    name = await apply_one_instance(cluster, namespace, "python3.11")
    status = await ready_for(
        kube, namespace, name, "InstancesReady", what="the function's first instance ready", timeout=120
    )
    assert status["instances"] == {"desired": 1, "ready": 1}
    pods = await kube.list(
        resource_path("v1", "pods", namespace=namespace),
        params={"labelSelector": f"kubelambda.io/function={name}"},
    )
    ip = pods["items"][0]["status"]["podIP"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{ip}:8080/invoke", json={"name": "kubelambda"}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["message"] == "Hello, kubelambda!"


async def test_a_runtime_this_node_cannot_run_makes_the_function_say_why(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    def lacking(runtime: str) -> bool:
        try:
            _interpreters.resolve(runtime)
        except _interpreters.RuntimeUnavailable:
            return True
        return False

    runtime = next(r for r in ("python3.13", "nodejs22", "ruby3.3", "python3.12") if lacking(r))
    name = await apply_one_instance(cluster, namespace, runtime)
    status = await ready_for(
        kube,
        namespace,
        name,
        "RuntimeUnavailable",
        what="Ready=False with the pod's RuntimeUnavailable reason",
        timeout=60,
    )
    condition = ready(status) or {}
    assert condition["status"] == "False"
    assert f"runtime {runtime} needs" in condition["message"]
    assert condition["message"].startswith("pod ")
    listed = cluster.kubectl("get", "fn", name, "-n", namespace, "-o", "wide").stdout
    assert "RuntimeUnavailable" in listed


async def deployment_of(kube: KubeClient, ns: str, name: str) -> JSON:
    return await kube.get(resource_path("apps/v1", "deployments", namespace=ns, name=name))


def env_of(deployment: JSON) -> dict[str, str]:
    return {
        e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }


async def test_memory_env_and_code_changes_update_the_deployment_once_each(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    doc = example("python3.11")
    name = doc["metadata"]["name"]
    await apply_fn(cluster, namespace, doc)
    await wait_reconciled(kube, namespace, name)
    before = await deployment_of(kube, namespace, name)
    generation = before["metadata"]["generation"]

    changes = [
        ("memory", lambda d: d["spec"].__setitem__("memoryMB", 512)),
        ("env", lambda d: d["spec"]["environment"].__setitem__("GREETING", "Hi")),
        (
            "code",
            lambda d: d["spec"]["code"]["inline"].__setitem__("app.py", "def handler(e, c):\n    return 2\n"),
        ),
    ]
    for what, change in changes:
        doc = copy.deepcopy(doc)
        change(doc)
        await apply_fn(cluster, namespace, doc)
        await wait_reconciled(kube, namespace, name)
        after = await deployment_of(kube, namespace, name)
        assert after["metadata"]["generation"] == generation + 1, (
            f"{what}: the Deployment changed more than once"
        )
        generation += 1
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["resources"]["limits"]["cpu"] == "290m"  # 512 / 1769 vCPU, rounded up
    assert env_of(after)["GREETING"] == "Hi"
    code = await kube.get(resource_path("v1", "configmaps", namespace=namespace, name=f"{name}-code"))
    assert code["data"]["app.py"].endswith("return 2\n")
    annotations = after["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubelambda.io/code-sha256"] == (await status_of(kube, namespace, name))["codeSha256"]
    assert after["spec"]["replicas"] == 0, "an update must not touch replicas"

    # The autoscaler's scale write takes replicas from the operator; an update after it keeps its value.
    await write_scale(kube, namespace, name, 1)
    doc = copy.deepcopy(doc)
    doc["spec"]["environment"]["GREETING"] = "Hey"
    await apply_fn(cluster, namespace, doc)
    await wait_reconciled(kube, namespace, name)
    after = await deployment_of(kube, namespace, name)
    assert env_of(after)["GREETING"] == "Hey"
    assert after["spec"]["replicas"] == 1, "an update must keep the autoscaler's scale"
    managers = {(m["manager"], m["operation"]): m for m in after["metadata"]["managedFields"]}
    assert "f:replicas" not in json.dumps(managers[("kubelambda-operator", "Apply")]["fieldsV1"])
    assert "f:replicas" in json.dumps(managers[("kubelambda-autoscaler", "Update")]["fieldsV1"])


async def owned_versions(kube: KubeClient, ns: str) -> dict[str, str]:
    out = {}
    for api, plural in (
        ("apps/v1", "deployments"),
        ("v1", "services"),
        ("v1", "configmaps"),
        ("networking.k8s.io/v1", "networkpolicies"),
    ):
        for item in (await kube.list(resource_path(api, plural, namespace=ns)))["items"]:
            if item["metadata"].get("ownerReferences"):
                out[f"{plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def reconciles_done() -> float:
    return sum(
        s.value for m in metrics.OPERATOR_RECONCILES.collect() for s in m.samples if s.name.endswith("_total")
    )


def owned_writes() -> float:
    """The operator's writes of objects it owns (its status patches of Functions and Triggers left out)."""
    return sum(
        s.value
        for m in metrics.OPERATOR_API_WRITES.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["resource"] not in ("Function", "Trigger")
    )


async def test_restarting_the_operator_changes_nothing(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    for runtime in ("python3.11", "nodejs22"):
        doc = example(runtime)
        doc["spec"]["network"] = {
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}]
        }
        await apply_fn(cluster, namespace, doc)
        await wait_reconciled(kube, namespace, doc["metadata"]["name"])

    def settled(deployments: JSON) -> bool:
        # The deployment controller writes status twice after a rollout (NewReplicaSetCreated, then
        # NewReplicaSetAvailable); those writes are not the operator's, so the snapshot waits for them.
        return all(
            d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"]
            and any(
                c["type"] == "Progressing" and c.get("reason") == "NewReplicaSetAvailable"
                for c in d.get("status", {}).get("conditions") or []
            )
            for d in deployments["items"]
        )

    await wait_for(
        lambda: kube.list(resource_path("apps/v1", "deployments", namespace=namespace)),
        settled,
        what="the Deployments' rollouts settled",
        timeout=60,
    )
    before = await owned_versions(kube, namespace)
    assert len(before) == 2 * 5, before  # ConfigMap, Deployment, Service, 2 NetworkPolicies each
    functions_before = {
        f["metadata"]["name"]: f["metadata"]["resourceVersion"]
        for f in (await kube.list(resource_path(FN_API, "functions", namespace=namespace)))["items"]
    }

    await operator.stop()
    # The restarted operator watches this namespace only, so "it has resumed every Function it serves" is
    # exactly 2 reconciles (Functions of earlier tests in namespaces being deleted come and go meanwhile).
    scoped = RunningOperator(operator.login, operator.settings.model_copy(update={"namespaces": [namespace]}))
    done, writes = reconciles_done(), owned_writes()
    await scoped.start()
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=reconciles_done()),
            lambda n: n >= done + 2,
            what="the 2 Functions resumed",
            timeout=60,
        )
        assert await owned_versions(kube, namespace) == before
        # Not even a write that changes nothing: what is observed already holds all the resume would apply.
        assert owned_writes() == writes
        functions_after = {
            f["metadata"]["name"]: f["metadata"]["resourceVersion"]
            for f in (await kube.list(resource_path(FN_API, "functions", namespace=namespace)))["items"]
        }
        assert functions_after == functions_before
    finally:
        await scoped.stop()
        await operator.start()


async def test_an_operator_started_with_more_functions_than_workers_reconciles_them_all(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    """kopf holds each object's worker until every object listed at start is indexed; with kopf's worker limit
    below the number listed, the workers over it never started and the operator deadlocked (issue 24)."""
    await operator.stop()
    scoped = RunningOperator(
        operator.login,
        operator.settings.model_copy(update={"namespaces": [namespace], "reconcile_workers": 2}),
    )
    names = []
    try:
        for i in range(5):
            doc = example("python3.12")
            doc["metadata"]["name"] = f"many-{i}"
            names.append(doc["metadata"]["name"])
            await apply_fn(cluster, namespace, doc)
        await scoped.start()
        for name in names:
            await wait_reconciled(kube, namespace, name, timeout=60)
    finally:
        await scoped.stop()
        await operator.start()


async def test_deleting_a_function_removes_what_it_owned(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    doc = example("nodejs20")
    doc["spec"]["network"] = {"egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}
    name = doc["metadata"]["name"]
    await apply_fn(cluster, namespace, doc)
    await wait_reconciled(kube, namespace, name)
    assert len(await owned_versions(kube, namespace)) == 5
    await kube.delete(fn_path(namespace, name))
    await wait_for(
        lambda: owned_versions(kube, namespace),
        lambda left: not left,
        what="garbage collection of the Function's objects",
        timeout=60,
    )


async def test_removing_network_removes_the_egress_policy(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    doc = example("python3.13")
    name = doc["metadata"]["name"]
    doc["spec"]["network"] = {
        "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}],
        "allowDNS": False,
    }
    await apply_fn(cluster, namespace, doc)
    await wait_reconciled(kube, namespace, name)
    policy = await kube.get(
        resource_path("networking.k8s.io/v1", "networkpolicies", namespace=namespace, name=f"{name}-egress")
    )
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]
    del doc["spec"]["network"]
    await apply_fn(cluster, namespace, doc)
    await wait_reconciled(kube, namespace, name)
    assert "networkpolicies/" + f"{name}-egress" not in await owned_versions(kube, namespace)


async def test_inline_code_over_the_configmap_limit_is_reported_not_crashlooped(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    doc = example("python3.11")
    name = doc["metadata"]["name"]
    doc["spec"]["code"]["inline"]["big.py"] = "# " + "x" * (1024 * 1024 + 10) + "\n"
    await kube.create(resource_path(FN_API, "functions", namespace=namespace), doc)
    status = await wait_reconciled(kube, namespace, name)
    condition = ready(status)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "CodeTooLarge")
    assert "1048576" in condition["message"]
    assert (
        await kube.get_or_none(resource_path("apps/v1", "deployments", namespace=namespace, name=name))
        is None
    )
    table = cluster.kubectl("get", "fn", name, "-n", namespace, "-o", "wide").stdout
    assert "CodeTooLarge" in table


async def test_missing_execution_role_is_reported_until_it_exists(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    doc = example("python3.11")
    name = doc["metadata"]["name"]
    doc["spec"]["serviceAccountName"] = "reader"
    await apply_fn(cluster, namespace, doc)
    status = await wait_reconciled(kube, namespace, name)
    assert (ready(status) or {}).get("reason") == "ServiceAccountMissing"
    await kube.create(
        resource_path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": "reader"}}
    )
    await ready_for(kube, namespace, name, "ScaledToZero", what="Ready once the ServiceAccount exists")
    pod_spec = (await deployment_of(kube, namespace, name))["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "reader"
    assert pod_spec["automountServiceAccountToken"] is True


async def test_the_operator_identity_is_its_service_account_and_no_more(
    operator: RunningOperator, kube: KubeClient, namespace: str
) -> None:
    async with operator.login.client() as as_operator:
        review = await as_operator.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert (
            review["status"]["userInfo"]["username"]
            == f"system:serviceaccount:{SYSTEM_NS}:kubelambda-operator"
        )
        with pytest.raises(ApiError) as refused:
            await as_operator.list(resource_path("v1", "secrets", namespace=namespace))
        assert refused.value.status == 403


async def test_an_object_the_api_server_refuses_is_reported_and_retried(
    operator: RunningOperator, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    """A refused apply (here a quota that allows no Service: 403) is Ready=False ApplyFailed with the API
    server's words, not a reconcile given up for good; once the cause is gone, the retry makes it Ready."""
    quota = resource_path("v1", "resourcequotas", namespace=namespace)
    await kube.create(quota, {"metadata": {"name": "no-services"}, "spec": {"hard": {"services": "0"}}})
    doc = example("python3.11")
    name = doc["metadata"]["name"]
    await apply_fn(cluster, namespace, doc)
    status = await ready_for(kube, namespace, name, "ApplyFailed", what="the refusal on the Function")
    condition = ready(status) or {}
    assert condition["status"] == "False"
    assert f"Service {namespace}/{name}" in condition["message"], condition
    assert "403" in condition["message"], condition
    assert "no-services" in condition["message"], condition
    await kube.delete(resource_path("v1", "resourcequotas", namespace=namespace, name="no-services"))
    await ready_for(kube, namespace, name, "ScaledToZero", what="Ready once the quota is gone", timeout=60)
