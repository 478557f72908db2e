"""The Helm chart on the real local cluster: its renders pass a server-side dry-run, and `helm install` runs the
operator and the gateway from the chart's Deployments on the local node, as the chart's ServiceAccounts (the
local node runs the kubelambda image as `python -m kubelambda ...`). A Function is deployed and invoked through
the chart's gateway (by its pod IP: Service IPs are not routable here), synchronously and as an Event through a
real NATS JetStream; a schedule Trigger gets its bridge; the operator's log shows no refused request;
`helm uninstall` leaves only the CRDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kltest import Cluster, wait_for
from kltest.cluster import backend
from kltest.platform import lambda_client, python_function
from kubelambda.cli.accesskeys import create_key, delete_key
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubelambda"
# Documents a server-side dry-run cannot judge on a cluster that lacks their API: the kopf peering object (its
# CRD is in the same render, and only exists once really applied).
PEERING_KINDS = {"ClusterKopfPeering", "KopfPeering"}
# KUBELAMBDA_TEST_BACKEND=kind (`make e2e`): the release `make kind-up` installed (the images it built and loaded,
# the chart's NATS StatefulSet, the gateway on NodePort 30080 = localhost:30080) instead of installing one here.
KIND = backend() == "kind"
KIND_GATEWAY_URL = "http://localhost:30080"
# On the local cluster the release gets names of its own: the suite's other tests apply hack/*-rbac.yaml (the
# same ServiceAccounts and ClusterRoles as release "kubelambda" in kubelambda-system), and Helm refuses to take
# over objects it did not create. On kind, the release `make kind-up` installed.
RELEASE = "kubelambda" if KIND else "kubelambda-it"
SYSTEM_NS = "kubelambda-system" if KIND else "kubelambda-it"
# A namespace of the user's for the warm pools (gateway.warmPools.createNamespace=false): the uninstall hook deletes
# the gateway's pool objects there.
POOLS_NS = f"{RELEASE}-pools"

HANDLER = """
def handler(event, context):
    print("handled", context.aws_request_id)
    return {"echo": event, "function": context.function_name}
"""


class Helm:
    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.binary = ensure_binaries(quiet=True).helm
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    @contextlib.contextmanager
    def uninstalled_on_failure(self, release: str, namespace: str) -> Iterator[None]:
        """A release left behind by a failed test would keep its operators reconciling every namespace of the
        session's cluster, under the tests that follow: a failure uninstalls it (and still fails)."""
        try:
            yield
        except BaseException:
            subprocess.run(
                [
                    str(self.binary),
                    "uninstall",
                    release,
                    "--namespace",
                    namespace,
                    "--wait",
                    "--timeout",
                    "120s",
                ],
                capture_output=True,
                env=self.env,
                timeout=180,
            )
            raise


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer | None]:
    if KIND:
        yield None  # the chart's own NATS StatefulSet
        return
    async with NatsServer(tmp_path / "nats") as server:
        yield server


def refusals(log: str) -> list[str]:
    """Lines of a component's log about a request RBAC refused (403 Forbidden). A write into a namespace being
    deleted is refused with 403 too (the NamespaceLifecycle admission plugin, reason NamespaceTerminating): the
    release's operator watches every namespace, so other tests' namespaces going away produce those; they say
    nothing about the chart's RBAC."""
    return [
        ln
        for ln in log.splitlines()
        # Not a log timestamp's milliseconds (",403"): that false match failed the test once.
        if re.search(r"(?<![,.])\b403\b|forbidden", ln, re.IGNORECASE)
        and not re.search(r"because it is being terminated|NamespaceTerminating", ln)
    ]


async def ensure_namespace(kube: KubeClient, name: str) -> None:
    if await kube.get_or_none(resource_path("v1", "namespaces", name=name)) is None:
        await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": name}})


@pytest.mark.parametrize("values", [None, CHART / "ci" / "max-values.yaml"], ids=["default", "max"])
async def test_renders_pass_a_server_side_dry_run(
    cluster: Cluster, kube: KubeClient, tmp_path: Path, values: Path | None
) -> None:
    await ensure_namespace(kube, SYSTEM_NS)
    helm = Helm(cluster, tmp_path)
    rendered = helm(
        "template", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--include-crds",
        *(["-f", str(values)] if values else []),
    )  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] not in PEERING_KINDS]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    # Objects of the chart's other namespaces (the warm pools') need theirs to exist for a dry run; it goes again
    # after, so that `helm install` creates it as the release's.
    others = sorted(
        {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace", SYSTEM_NS) != SYSTEM_NS}
    )
    made = [ns for ns in others if await kube.get_or_none(resource_path("v1", "namespaces", name=ns)) is None]
    for ns in made:
        await ensure_namespace(kube, ns)
    try:
        out = cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", "-", input=body)
    finally:
        for ns in made:
            await kube.delete(resource_path("v1", "namespaces", name=ns))
        for ns in made:
            await wait_for(
                lambda ns=ns: kube.get_or_none(resource_path("v1", "namespaces", name=ns)),
                lambda found: found is None,
                what=f"namespace {ns} gone",
                timeout=60,
            )
    applied = [line for line in out.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(docs), out.stdout


async def pods(
    kube: KubeClient, component: str, *, release: str = RELEASE, ns: str = SYSTEM_NS
) -> list[JSON]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}"
    found = await kube.get(resource_path("v1", "pods", namespace=ns), params={"labelSelector": selector})
    return list(found["items"])


def ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def summary(items: list[JSON]) -> list[JSON]:
    return [{"name": p["metadata"]["name"], "status": p.get("status")} for p in items]


async def wait_ready(kube: KubeClient, component: str) -> JSON:
    found = await wait_for(
        lambda: pods(kube, component),
        lambda items: len(items) == 1 and ready(items[0]),
        what=f"the chart's {component} pod Ready",
        timeout=120,
    )
    return found[0]


async def test_install_invoke_uninstall(
    cluster: Cluster, kube: KubeClient, namespace: str, tmp_path: Path, nats_server: NatsServer | None
) -> None:
    helm = Helm(cluster, tmp_path)
    if KIND:
        await scenario(cluster, kube, namespace, gateway_url=KIND_GATEWAY_URL)
        return
    assert nats_server is not None
    values = {
        # One of each on a 2-core machine; NATS is the test's own server (the local node runs no nats image and
        # has no PersistentVolumes); the gateway's Service URL stays the operator's advertised default.
        # The local node runs every pod in the host's network namespace: each listens on its own pod IP.
        "bindPodIP": True,
        "gateway": {
            "replicas": 1,
            "httpRoutes": True,
            "warmPools": {"createNamespace": False, "namespace": POOLS_NS},
        },
        "async": {"natsUrl": nats_server.url},
        "nats": {"enabled": False},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    await ensure_namespace(kube, POOLS_NS)  # the user's, given with createNamespace=false
    try:
        helm(
            "install", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace", "-f",
            str(values_file),
        )  # fmt: skip
        with helm.uninstalled_on_failure(RELEASE, SYSTEM_NS):
            await install_invoke_uninstall(cluster, kube, namespace, helm)
    finally:
        await kube.delete(resource_path("v1", "namespaces", name=POOLS_NS))


async def install_invoke_uninstall(cluster: Cluster, kube: KubeClient, namespace: str, helm: Helm) -> None:
    manifest = helm("get", "manifest", RELEASE, "--namespace", SYSTEM_NS)
    installed = [d for d in yaml.safe_load_all(manifest) if d]

    operator_pod = await wait_ready(kube, "operator")
    gateway_pod = await wait_ready(kube, "gateway")
    assert operator_pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    assert gateway_pod["spec"]["serviceAccountName"] == f"{RELEASE}-gateway"
    # kopf's liveness endpoint (the chart's probes) on the operator's pod address.
    health = f"http://{operator_pod['status']['podIP']}:8081/healthz"
    async with aiohttp.ClientSession() as http, http.get(health) as resp:
        assert resp.status == 200, await resp.text()

    await scenario(cluster, kube, namespace, gateway_url=f"http://{gateway_pod['status']['podIP']}:8080")

    # What the platform makes at run time and the release does not own, which the chart's post-delete hook
    # deletes: an access key, and (warmPools.createNamespace=false) the gateway's pool objects in the pool
    # namespace; another party's Deployment there stays.
    key = await create_key(kube, namespace, "caller", system_namespace=SYSTEM_NS)
    pool = {"app.kubernetes.io/managed-by": "kubelambda-gateway", "kubelambda.io/pool-runtime": "python3.11"}
    pool_objects = [
        pool_deployment("warm-pool-python3-11", pool),
        pool_deployment("not-a-pool", {"app": "x"}),
    ]
    pool_objects += [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "warm-pool", "labels": pool},
            "spec": {"podSelector": {"matchLabels": pool}, "policyTypes": ["Ingress"]},
        },
        {  # a claimed pool pod: its ReplicaSet released it
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "claimed", "labels": pool},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": PAUSE}]},
        },
    ]
    cluster.apply(pool_objects, POOLS_NS)

    helm("uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", "--timeout", "120s")
    await assert_nothing_left(cluster, kube, installed)
    assert not cluster.kubectl(
        "get", "secrets", "-n", SYSTEM_NS, "-l", "kubelambda.io/access-key=true", "-o", "name"
    ).stdout, f"access key {key.access_key_id} survived the uninstall"
    pool_kinds = ("deployments", "networkpolicies", "pods")
    left = await wait_for(
        lambda: asyncio.to_thread(
            lambda: cluster.kubectl("get", ",".join(pool_kinds), "-n", POOLS_NS, "-o", "name").stdout.split()
        ),
        lambda names: not set(names) & POOL_OBJECTS,
        what="the gateway's pool objects deleted by the chart's post-delete hook",
        timeout=60,
    )
    assert "deployment.apps/not-a-pool" in left, left


PAUSE = "registry.k8s.io/pause:3.10"
POOL_OBJECTS = {
    "deployment.apps/warm-pool-python3-11",
    "networkpolicy.networking.k8s.io/warm-pool",
    "pod/claimed",
}


def pool_deployment(name: str, labels: dict[str, str]) -> JSON:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": PAUSE}]},
            },
        },
    }


async def scenario(cluster: Cluster, kube: KubeClient, namespace: str, *, gateway_url: str) -> None:
    """A Function and a Trigger through the chart's operator and gateway; no request of theirs refused."""
    operator_pod = await wait_ready(kube, "operator")
    gateway_pod = (await pods(kube, "gateway"))[0]

    # A Function, deployed with kubectl and reconciled by the chart's operator.
    cluster.apply(python_function("hello", HANDLER), namespace)
    fn_path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="hello")
    fn = await wait_for(
        lambda: kube.get(fn_path),
        lambda f: (
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (f.get("status") or {}).get("conditions") or []
            )
            or (f.get("status") or {}).get("invokeUrl") is not None
        ),
        what="the Function reconciled by the chart's operator",
        timeout=60,
    )
    assert fn["status"]["invokeUrl"].startswith(f"http://{RELEASE}-gateway.{SYSTEM_NS}.svc:8080/")

    # The chart's gateway checks who calls (auth.mode kubernetes, the default): a ServiceAccount bound to the
    # release's invoker ClusterRole, with an access key made as `kubelambda access-key create` makes it.
    cluster.kubectl("create", "serviceaccount", "caller", "-n", namespace)
    cluster.kubectl(
        "create", "rolebinding", "caller-invokes", "-n", namespace, f"--clusterrole={RELEASE}-invoker",
        f"--serviceaccount={namespace}:caller",
    )  # fmt: skip
    key = await create_key(kube, namespace, "caller", system_namespace=SYSTEM_NS)
    client = lambda_client(gateway_url, key.access_key_id, key.secret_access_key)

    # Invoked through the chart's gateway, synchronously (boto3), then as an Event (NATS JetStream).

    async def invoke() -> JSON:
        return await asyncio.to_thread(
            client.invoke, FunctionName=f"{namespace}/hello", Payload=json.dumps({"n": 1}).encode()
        )

    answer = await wait_for(
        invoke, lambda r: r["StatusCode"] == 200, what="a synchronous invocation through the chart's gateway",
        timeout=90, interval=1.0,
    )  # fmt: skip
    assert "FunctionError" not in answer, answer["Payload"].read()
    assert json.loads(answer["Payload"].read()) == {"echo": {"n": 1}, "function": "hello"}

    event = await asyncio.to_thread(
        client.invoke, FunctionName=f"{namespace}/hello", InvocationType="Event", Payload=b'{"n": 2}'
    )
    assert event["StatusCode"] == 202
    request_id = event["ResponseMetadata"]["RequestId"]

    def function_logs() -> str:
        pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "kubelambda.io/function=hello")[
            "items"
        ][0]
        return cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout

    await wait_for(
        lambda: asyncio.to_thread(function_logs),
        lambda logs: f"handled {request_id}" in logs,
        what=f"the Event invocation {request_id} handled by the function (the gateway's worker, from NATS)",
        timeout=60, interval=0.5,
    )  # fmt: skip

    # A schedule Trigger: the operator creates its bridge's ServiceAccount, Role (granting only what the operator
    # holds itself), RoleBinding, checkpoint ConfigMap and Deployment; the bridge pod reports its source reachable.
    cluster.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "tick"},
            "spec": {"function": "hello", "schedule": {"expression": "rate(1 hour)"}},
        },
        namespace,
    )
    trigger_path = resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name="tick")

    def condition(body: JSON, kind: str) -> JSON:
        found = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind]
        return found[0] if found else {}

    await wait_for(
        lambda: kube.get(trigger_path),
        lambda t: (
            condition(t, "Ready").get("reason") == "BridgeReady"
            and condition(t, "SourceReachable").get("status") == "True"
        ),
        what="the Trigger's bridge running and reporting (objects made by the chart's operator)",
        timeout=90,
    )

    # The operator ran under the chart's RBAC: nothing it asked for was refused.
    operator_log = cluster.kubectl("logs", "-n", SYSTEM_NS, operator_pod["metadata"]["name"]).stdout
    refused = refusals(operator_log)
    assert not refused, "\n".join(refused[:20])
    gateway_log = cluster.kubectl("logs", "-n", SYSTEM_NS, gateway_pod["metadata"]["name"]).stdout
    refused = refusals(gateway_log)
    assert not refused, "\n".join(refused[:20])

    # The access key is not the release's: revoke it (kubelambda access-key delete).
    await delete_key(kube, key.access_key_id, system_namespace=SYSTEM_NS)

    # What the Trigger and the Function own is garbage-collected with them.
    cluster.kubectl("delete", "trigger", "tick", "-n", namespace, "--wait=true")
    cluster.kubectl("delete", "function", "hello", "-n", namespace, "--wait=true")


async def assert_nothing_left(cluster: Cluster, kube: KubeClient, installed: list[JSON]) -> None:
    """After `helm uninstall`: no object of the release, no pod in its namespace; the CRDs stay (as Helm does)."""

    async def leftovers() -> list[str]:
        left = []
        for doc in installed:
            kind, name = doc["kind"], doc["metadata"]["name"]
            found = cluster.kubectl(
                "get", kind, name, "-n", doc["metadata"].get("namespace", SYSTEM_NS), "--ignore-not-found",
                "-o", "name", check=False,
            ).stdout.strip()  # fmt: skip
            if found:
                left.append(found)
        remaining = await kube.get(resource_path("v1", "pods", namespace=SYSTEM_NS))
        left += [f"pod/{p['metadata']['name']}" for p in remaining["items"]]
        return left

    await wait_for(
        leftovers, lambda left: not left, what="nothing of the release left", timeout=60, interval=0.5
    )
    for crd in ("functions.kubelambda.io", "triggers.kubelambda.io"):
        crd_path = resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=crd)
        assert await kube.get_or_none(crd_path) is not None, f"helm uninstall keeps CRDs; {crd} is gone"


@pytest.mark.skipif(
    KIND,
    reason="on kind, make kind-up's operator already serves every namespace: a second release would compete",
)
async def test_leader_election_with_two_operator_replicas(
    cluster: Cluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """operator.replicas=2: kopf peering (the chart's ClusterKopfPeering, RBAC on kopf.dev); one replica active."""
    helm = Helm(cluster, tmp_path)
    release, ns = "ha", "kubelambda-ha"
    helm(
        "install", release, str(CHART), "--namespace", ns, "--create-namespace",
        "--set", "operator.replicas=2", "--set", "gateway.replicas=0", "--set", "async.enabled=false",
        "--set", "bindPodIP=true",
    )  # fmt: skip
    with helm.uninstalled_on_failure(release, ns):
        await two_operator_replicas(cluster, kube, namespace, helm, release=release, ns=ns)


def last_peering_state(log: str) -> str:
    """``active`` or ``paused`` from the last of kopf's peering lines in an operator's log."""
    state = "paused"  # peering is mandatory: a replica starts paused
    for line in log.splitlines():
        if "Resuming operations after the pause" in line:
            state = "active"
        elif "Pausing operations in favour of" in line:
            state = "paused"
    return state


async def two_operator_replicas(
    cluster: Cluster, kube: KubeClient, namespace: str, helm: Helm, *, release: str, ns: str
) -> None:
    operators = await wait_for(
        lambda: pods(kube, "operator", release=release, ns=ns),
        lambda items: len(items) == 2 and all(ready(p) for p in items),
        what="two operator replicas Ready",
        timeout=120,
    )
    peering_path = resource_path("kopf.dev/v1", "clusterkopfpeerings", name=f"{release}-kubelambda")
    await wait_for(
        lambda: kube.get(peering_path),
        lambda p: len(p.get("status") or {}) == 2,
        what="both replicas' heartbeats in the ClusterKopfPeering",
        timeout=60,
    )

    def logs() -> list[str]:
        return [cluster.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in operators]

    # The active replica reconciles; kopf starts every replica paused (peering is mandatory) and resumes only
    # the one with the highest priority (the oldest).
    cluster.apply(python_function("ha", HANDLER), namespace)
    try:
        await wait_for(
            lambda: kube.get(
                resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="ha")
            ),
            lambda f: str((f.get("status") or {}).get("invokeUrl", "")).startswith(
                f"http://{release}-kubelambda-gateway.{ns}.svc"
            ),
            what="the Function reconciled by the active replica",
            timeout=60,
        )
    except AssertionError as e:
        # Which replica thought itself active, and why: the peering object and both logs' ends.
        peering = await kube.get_or_none(peering_path)
        tails = ["\n".join(t.splitlines()[-80:]) for t in await asyncio.to_thread(logs)]
        raise AssertionError(f"{e}\npeering: {peering}\n" + "\n---\n".join(tails)) from None
    texts = await asyncio.to_thread(logs)
    # Exactly one replica is active now: the last pause/resume line of each says which. (A replica may resume
    # and pause again while the peers first find each other: that start-up order is not asserted.)
    assert sum(last_peering_state(t) == "active" for t in texts) == 1, texts
    assert sum("reconcile_function' succeeded" in t for t in texts) == 1, texts
    assert not any("Possibly conflicting operators" in t for t in texts), texts
    cluster.kubectl("delete", "function", "ha", "-n", namespace, "--wait=true")
    for text in logs():
        refused = refusals(text)
        assert not refused, "\n".join(refused[:20])
    helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "120s")
    await wait_for(
        lambda: kube.get_or_none(peering_path),
        lambda p: p is None,
        what="the peering object removed",
        timeout=30,
    )
