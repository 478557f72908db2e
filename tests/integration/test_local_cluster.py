"""The local cluster's acceptance: a real control plane, and a node that runs pods as processes."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
import urllib.request
from typing import Any

import pytest

from kltest import Cluster, alive, wait_for
from kltest.manifests import pod
from kubelambda.kube import ApiError, KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]


def pods_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return resource_path("v1", "pods", namespace=ns, name=name, subresource=sub)


def deployment(name: str, *, replicas: int, image: str = "kubelambda.io/dev/httpserver") -> JSON:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "web",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


def is_ready(p: JSON) -> bool:
    conditions = p.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pid_of(p: JSON, index: int = 0) -> int:
    return int(p["status"]["containerStatuses"][index]["containerID"].removeprefix("local://"))


async def list_pods(kube: KubeClient, ns: str, selector: str) -> list[JSON]:
    items: list[JSON] = (await kube.list(pods_path(ns), params={"labelSelector": selector}))["items"]
    return items


async def get_pod(kube: KubeClient, ns: str, name: str) -> JSON:
    return await kube.get(pods_path(ns, name))


async def pod_in_phase(kube: KubeClient, ns: str, name: str, *phases: str) -> JSON:
    """The pod once its phase is one of ``phases``."""
    return await wait_for(
        lambda: get_pod(kube, ns, name),
        lambda p: p["status"].get("phase") in phases,
        what=f"pod {name} to reach phase {' or '.join(phases)}",
    )


def http_get(url: str) -> JSON:
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: JSON = json.loads(resp.read())
        return result


async def test_one_ready_node_with_a_fresh_lease(cluster: Cluster, kube: KubeClient) -> None:
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["kubelambda-local"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    lease = await kube.get(
        resource_path(
            "coordination.k8s.io/v1", "leases", namespace="kube-node-lease", name="kubelambda-local"
        )
    )
    renewed = datetime.datetime.strptime(lease["spec"]["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC
    )
    assert (datetime.datetime.now(datetime.UTC) - renewed).total_seconds() < 30
    assert lease["spec"]["holderIdentity"] == "kubelambda-local"


async def test_deployment_pods_get_addresses_endpoints_and_answer_http(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    cluster.apply(
        [
            deployment("web", replicas=3),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ],
        namespace,
    )
    pods = await wait_for(
        lambda: list_pods(kube, namespace, "app=web"),
        lambda ps: len(ps) == 3 and all(p["status"].get("phase") == "Running" and is_ready(p) for p in ps),
        what="3 Running and Ready pods",
    )
    ips = sorted(p["status"]["podIP"] for p in pods)
    assert len(set(ips)) == 3, ips
    # The real EndpointSlice controller lists exactly those addresses, all ready.
    slices = await wait_for(
        lambda: kube.list(
            resource_path("discovery.k8s.io/v1", "endpointslices", namespace=namespace),
            params={"labelSelector": "kubernetes.io/service-name=web"},
        ),
        lambda s: (
            sorted(
                a
                for item in s["items"]
                for e in item.get("endpoints") or []
                if e["conditions"].get("ready")
                for a in e["addresses"]
            )
            == ips
        ),
        what="the EndpointSlice of Service web to list the 3 pod addresses",
    )
    assert slices["items"][0]["ports"][0]["port"] == 8080
    answers = await asyncio.gather(*(asyncio.to_thread(http_get, f"http://{ip}:8080/") for ip in ips))
    assert sorted(a["pod"] for a in answers) == sorted(p["metadata"]["name"] for p in pods)
    assert sorted(a["ip"] for a in answers) == ips


async def test_scaling_to_zero_ends_the_processes(cluster: Cluster, kube: KubeClient, namespace: str) -> None:
    cluster.apply(deployment("scaled", replicas=2), namespace)
    pods = await wait_for(
        lambda: list_pods(kube, namespace, "app=scaled"),
        lambda ps: len(ps) == 2 and all(is_ready(p) for p in ps),
        what="2 Ready pods",
    )
    pids = [pid_of(p) for p in pods]
    assert all(alive(pid) for pid in pids)
    cluster.kubectl("scale", "-n", namespace, "deployment/scaled", "--replicas=0")
    await wait_for(lambda: list_pods(kube, namespace, "app=scaled"), lambda ps: ps == [], what="no pods left")
    assert [pid for pid in pids if alive(pid)] == []


async def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    cluster.apply(deployment("gc", replicas=2), namespace)
    pods = await wait_for(
        lambda: list_pods(kube, namespace, "app=gc"),
        lambda ps: len(ps) == 2 and all(is_ready(p) for p in ps),
        what="2 Ready pods",
    )
    rs_path = resource_path("apps/v1", "replicasets", namespace=namespace)
    assert len((await kube.list(rs_path))["items"]) == 1
    # Orphan-free background deletion: the controller-manager's garbage collector removes the dependents.
    await kube.delete(
        resource_path("apps/v1", "deployments", namespace=namespace, name="gc"), propagation="Background"
    )
    await wait_for(
        lambda: kube.list(rs_path), lambda r: r["items"] == [], what="the ReplicaSet to be collected"
    )
    await wait_for(
        lambda: list_pods(kube, namespace, "app=gc"), lambda ps: ps == [], what="the pods to be collected"
    )
    assert not any(alive(pid_of(p)) for p in pods)


async def test_nonzero_exit_is_reported_and_restarted_per_policy(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    script = ["sh", "-c", "echo crashing; exit 3"]
    cluster.apply(
        [pod("always", script, restart="Always"), pod("never", script, restart="Never")],
        namespace,
    )
    never = await pod_in_phase(kube, namespace, "never", "Failed")
    status = never["status"]["containerStatuses"][0]
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"
    assert status["restartCount"] == 0
    always = await wait_for(
        lambda: get_pod(kube, namespace, "always"),
        lambda p: p["status"].get("containerStatuses", [{}])[0].get("restartCount", 0) >= 2,
        what="pod always to be restarted twice",
    )
    status = always["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert always["status"]["phase"] == "Running"
    logs = cluster.kubectl("logs", "-n", namespace, "always", "--previous").stdout
    assert "crashing" in logs


async def test_on_failure_restarts_until_success(cluster: Cluster, kube: KubeClient, namespace: str) -> None:
    # Fails on its first run, succeeds on the second: the marker lives in an emptyDir, which survives restarts.
    script = [
        "sh",
        "-c",
        'if [ -f "$KUBELAMBDA_ROOTFS/work/marker" ]; then echo ok; else touch "$KUBELAMBDA_ROOTFS/work/marker"; exit 1; fi',
    ]
    cluster.apply(
        pod(
            "retry",
            script,
            restart="OnFailure",
            volumes=[{"name": "work", "emptyDir": {}}],
            container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ),
        namespace,
    )
    done = await pod_in_phase(kube, namespace, "retry", "Succeeded")
    status = done["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["lastState"]["terminated"]["exitCode"] == 1


async def test_rbac_denies_what_a_role_does_not_grant(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ],
        namespace,
    )
    who = f"--as=system:serviceaccount:{namespace}:reader"

    def can_i(*args: str, ns: str = namespace) -> str:
        return cluster.kubectl("auth", "can-i", *args, "-n", ns, who, check=False).stdout.strip()

    assert can_i("list", "pods") == "yes"
    assert can_i("delete", "pods") == "no"
    assert can_i("get", "secrets") == "no"
    assert can_i("list", "pods", ns="kube-system") == "no"
    # The same answer for a real request carrying the ServiceAccount's signed token.
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    base = ["--server", cluster.state.server, "--token", token, "--kubeconfig", "/dev/null"]
    ca = str(cluster.state_dir / "pki" / "ca.crt")
    ok = cluster.kubectl(*base, "--certificate-authority", ca, "get", "pods", "-n", namespace, check=False)
    assert ok.returncode == 0, ok.stderr
    denied = cluster.kubectl(
        *base, "--certificate-authority", ca, "get", "secrets", "-n", namespace, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


async def test_env_volumes_and_downward_api_reach_the_process(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    script = (
        'echo "plain=$PLAIN expanded=$EXPANDED name=$MY_NAME ip=$MY_IP secret=$FROM_SECRET cm=$FROM_CM '
        'prefixed=$P_color mem=$MEM_MI"; '
        'cat "$KUBELAMBDA_ROOTFS/etc/cm/color"; echo; cat "$KUBELAMBDA_ROOTFS/etc/secret/password"; echo; '
        'cat "$KUBELAMBDA_ROOTFS/etc/info/labels"; echo; ls "$KUBELAMBDA_ROOTFS/var/run/secrets/kubernetes.io/serviceaccount"'
    )
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"color": "blue"}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sec"},
                "data": {"password": base64.b64encode(b"s3cr3t").decode()},
            },
        ],
        namespace,
    )
    manifest = pod(
        "envpod",
        ["sh", "-c", script],
        volumes=[
            {"name": "cm", "configMap": {"name": "cfg"}},
            {"name": "secret", "secret": {"secretName": "sec"}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
        ],
        container={
            "env": [
                {"name": "PLAIN", "value": "hello"},
                {"name": "EXPANDED", "value": "$(PLAIN)-world"},
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                {
                    "name": "MEM_MI",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                },
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "P_"}],
            "resources": {"limits": {"memory": "64Mi"}},
            "volumeMounts": [
                {"name": "cm", "mountPath": "/etc/cm"},
                {"name": "secret", "mountPath": "/etc/secret"},
                {"name": "info", "mountPath": "/etc/info"},
            ],
        },
    )
    manifest["metadata"]["labels"] = {"team": "lambda"}
    cluster.apply(manifest, namespace)
    done = await pod_in_phase(kube, namespace, "envpod", "Succeeded", "Failed")
    logs = cluster.kubectl("logs", "-n", namespace, "envpod").stdout
    assert done["status"]["phase"] == "Succeeded", logs
    ip = done["status"]["podIP"]
    assert (
        f"plain=hello expanded=hello-world name=envpod ip={ip} secret=s3cr3t cm=blue prefixed=blue mem=64"
        in logs
    )
    lines = logs.splitlines()
    assert lines[1:4] == ["blue", "s3cr3t", 'team="lambda"']
    # The ServiceAccount admission plugin's projected volume: a bound token, the CA and the namespace.
    assert sorted(lines[4:]) == ["ca.crt", "namespace", "token"]


async def test_init_containers_run_in_order_before_the_app(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    def step(name: str, text: str) -> JSON:
        return {
            "name": name,
            "image": "busybox",
            "command": ["sh", "-c", f'echo {text} >> "$KUBELAMBDA_ROOTFS/shared/order"'],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }

    manifest = pod(
        "inits",
        ["sh", "-c", 'cat "$KUBELAMBDA_ROOTFS/shared/order"'],
        volumes=[{"name": "shared", "emptyDir": {}}],
        initContainers=[step("first", "one"), step("second", "two")],
        container={"volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
    )
    cluster.apply(manifest, namespace)
    done = await pod_in_phase(kube, namespace, "inits", "Succeeded")
    assert [s["state"]["terminated"]["exitCode"] for s in done["status"]["initContainerStatuses"]] == [0, 0]
    assert cluster.kubectl("logs", "-n", namespace, "inits").stdout.split() == ["one", "two"]


async def test_a_failing_init_container_blocks_the_app(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    manifest = pod(
        "badinit",
        ["sh", "-c", "echo never"],
        initContainers=[{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 7"]}],
    )
    cluster.apply(manifest, namespace)
    failed = await pod_in_phase(kube, namespace, "badinit", "Failed")
    init = failed["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 7
    assert "containerID" not in failed["status"]["containerStatuses"][0]


async def test_probes_gate_readiness_and_liveness_restarts(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    ready_file = 'test -f "$KUBELAMBDA_ROOTFS/tmp/ready"'
    manifest = pod(
        "probed",
        [],
        restart="Always",
        image="kubelambda.io/dev/httpserver",
        container={
            "command": None,
            "ports": [{"name": "http", "containerPort": 8080}],
            # Ready only when the exec probe finds its file and the TCP port answers...
            "readinessProbe": {"exec": {"command": ["sh", "-c", ready_file]}, "periodSeconds": 1},
            "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
            # ...and alive while /healthz says so.
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
        },
    )
    manifest["spec"]["containers"][0].pop("command")
    cluster.apply(manifest, namespace)
    started = await wait_for(
        lambda: get_pod(kube, namespace, "probed"),
        lambda p: p["status"].get("containerStatuses", [{}])[0].get("started") is True,
        what="the startup probe to pass",
    )
    assert not is_ready(started)
    rootfs = cluster.pod_dir(namespace, "probed", started["metadata"]["uid"]) / "rootfs" / "main"
    (rootfs / "tmp" / "ready").touch()
    ready = await wait_for(
        lambda: get_pod(kube, namespace, "probed"), is_ready, what="pod probed to be Ready"
    )
    first_pid = pid_of(ready)
    (rootfs / "tmp" / "unhealthy").touch()
    restarted = await wait_for(
        lambda: get_pod(kube, namespace, "probed"),
        lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1,
        what="the liveness probe to restart the container",
        timeout=60,
    )
    assert not alive(first_pid)
    # A restarted container starts with a fresh /tmp: not unhealthy, and not ready until told again.
    assert not is_ready(restarted)
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=probed"
    ).stdout
    assert "Liveness probe failed" in events


async def test_a_startup_probe_fails_only_after_its_threshold_of_periods(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    """The node probes quickly until a first success, but like the kubelet it counts one failure per period: a
    process slower to listen than failureThreshold x 0.1 s is not killed (the chart's operator and gateway were,
    under load), and one that never listens is restarted only after (failureThreshold - 1) x periodSeconds."""
    manifest = pod(
        "slowstart",
        ["sleep", "3600"],  # never listens
        restart="Always",
        container={"startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2, "failureThreshold": 3}},
    )
    cluster.apply(manifest, namespace)
    running = await wait_for(
        lambda: get_pod(kube, namespace, "slowstart"),
        lambda p: "running" in p["status"].get("containerStatuses", [{}])[0].get("state", {}),
        what="the container to run",
    )
    since = time.monotonic()
    first_pid = pid_of(running)
    restarted = await wait_for(
        lambda: get_pod(kube, namespace, "slowstart"),
        lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1,
        what="the startup probe to restart the container",
        timeout=120,
    )
    # Three failures, two periods apart: at least 4 s (load only makes it later).
    assert time.monotonic() - since >= 4
    assert not alive(first_pid)
    assert not restarted["status"]["containerStatuses"][0].get("started")
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=slowstart"
    ).stdout
    assert events.count("Startup probe failed") <= 3 + 3  # once per period per container run, not every 0.1 s


async def test_termination_grace_period_sigterm_then_sigkill(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    stubborn = pod("stubborn", ["sh", "-c", "trap '' TERM; echo started; sleep 3600"], restart="Always")
    stubborn["spec"]["terminationGracePeriodSeconds"] = 2
    polite = pod("polite", [], restart="Always", image="kubelambda.io/dev/httpserver")
    polite["spec"]["containers"][0].pop("command")
    polite["spec"]["terminationGracePeriodSeconds"] = 30
    cluster.apply([stubborn, polite], namespace)
    pods = {}
    for name in ("stubborn", "polite"):
        pods[name] = await wait_for(
            lambda name=name: get_pod(kube, namespace, name), is_ready, what=f"pod {name} to be Ready"
        )

    async def delete_and_time(name: str) -> float:
        started = time.monotonic()
        await kube.delete(pods_path(namespace, name))
        await wait_for(
            lambda: kube.get_or_none(pods_path(namespace, name)),
            lambda p: p is None,
            what=f"{name} gone",
            timeout=40,
        )
        return time.monotonic() - started

    stubborn_seconds, polite_seconds = await asyncio.gather(
        delete_and_time("stubborn"), delete_and_time("polite")
    )
    # SIGTERM was ignored: the node waited the whole grace period, then killed (the upper bound only
    # leaves room for a loaded machine; without SIGKILL it would never end).
    assert 2.0 <= stubborn_seconds < 25, stubborn_seconds
    # SIGTERM was honoured: gone before its 30 s grace period ran out.
    assert polite_seconds < 25, polite_seconds
    assert not alive(pid_of(pods["stubborn"]))
    assert not alive(pid_of(pods["polite"]))


async def test_an_image_without_a_local_command_is_refused_clearly(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    manifest = pod("nginx", [], image="nginx:1.27", restart="Always")
    manifest["spec"]["containers"][0].pop("command")
    cluster.apply(manifest, namespace)
    stuck = await wait_for(
        lambda: get_pod(kube, namespace, "nginx"),
        lambda p: (
            p["status"].get("containerStatuses", [{}])[0].get("state", {}).get("waiting", {}).get("reason")
            == "ImageNotRunnableLocally"
        ),
        what="the ImageNotRunnableLocally waiting reason",
    )
    assert stuck["status"]["phase"] == "Pending"
    waiting = stuck["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "nginx:1.27" in waiting["message"]
    table = cluster.kubectl("get", "pod", "nginx", "-n", namespace).stdout
    assert "ImageNotRunnableLocally" in table


async def test_logs_and_memory_are_served_through_the_api_server(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    manifest = pod(
        "talker", ["sh", "-c", "for i in 1 2 3; do echo line-$i; done; sleep 3600"], restart="Always"
    )
    cluster.apply(manifest, namespace)
    await wait_for(lambda: get_pod(kube, namespace, "talker"), is_ready, what="pod talker to be Ready")
    await wait_for(
        lambda: asyncio.to_thread(lambda: cluster.kubectl("logs", "-n", namespace, "talker").stdout),
        lambda out: out.split() == ["line-1", "line-2", "line-3"],
        what="kubectl logs to show three lines",
    )
    assert cluster.kubectl("logs", "-n", namespace, "talker", "--tail=1").stdout.strip() == "line-3"
    summary = json.loads(
        cluster.kubectl("get", "--raw", "/api/v1/nodes/kubelambda-local/proxy/stats/summary").stdout
    )
    mine = [p for p in summary["pods"] if p["podRef"]["namespace"] == namespace]
    assert len(mine) == 1
    assert mine[0]["containers"][0]["memory"]["workingSetBytes"] > 100_000


async def test_a_node_cannot_read_secrets_its_pods_do_not_use(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"}, "stringData": {"k": "v"}},
        namespace,
    )
    node_config = cluster.state_dir / "node.kubeconfig"
    async with KubeClient.from_kubeconfig(node_config) as node:
        with pytest.raises(ApiError) as refused:
            await node.get(resource_path("v1", "secrets", namespace=namespace, name="unrelated"))
    assert refused.value.status == 403
