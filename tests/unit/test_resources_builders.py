"""Table tests of the pure builders: a Function in, objects out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.resources import (
    CodeTooLarge,
    FunctionObject,
    Problem,
    cpu_limit_millicores,
    function_status,
    make_code_configmap,
    make_deployment,
    make_egress_policy,
    make_ingress_policy,
    make_scale_role,
    make_scale_role_binding,
    make_service,
)
from kubelambda.resources.status import pod_problem, ready, set_condition
from kubelambda.settings import OperatorSettings

SETTINGS = OperatorSettings()
JSON = dict[str, Any]


def fn(**spec: Any) -> FunctionObject:
    base: JSON = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x"}}}
    base.update(spec)
    return FunctionObject(
        name="hello", namespace="demo", uid="u-1", generation=3, spec=FunctionSpec.model_validate(base)
    )


def container(d: JSON) -> JSON:
    c: JSON = d["spec"]["template"]["spec"]["containers"][0]
    return c


@pytest.mark.parametrize(
    ("memory", "cpu"),
    [(128, 73), (1769, 1000), (3538, 2000), (10240, 5789)],
    ids=["128", "1769", "3538", "10240"],
)
def test_cpu_is_proportional_to_memory(memory: int, cpu: int) -> None:
    assert cpu_limit_millicores(memory) == cpu
    limits = container(make_deployment(fn(memoryMB=memory), image="img", settings=SETTINGS))["resources"][
        "limits"
    ]
    assert limits["cpu"] == f"{cpu}m"
    assert limits["memory"] == f"{memory}Mi"


def test_deployment_never_carries_replicas_unless_creating() -> None:
    assert "replicas" not in make_deployment(fn(), image="img", settings=SETTINGS)["spec"]
    assert make_deployment(fn(), image="img", settings=SETTINGS, replicas=2)["spec"]["replicas"] == 2


def test_deployment_is_deterministic_and_sorted() -> None:
    a = make_deployment(fn(environment={"Z": "1", "A": "2"}), image="img", settings=SETTINGS)
    b = make_deployment(fn(environment={"A": "2", "Z": "1"}), image="img", settings=SETTINGS)
    assert json.dumps(a) == json.dumps(b)
    names = [e["name"] for e in container(a)["env"]]
    assert names[-2:] == ["A", "Z"]
    assert names[:-2] == sorted(names[:-2])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KUBELAMBDA_FUNCTION_NAME", "hello"),
        ("KUBELAMBDA_MEMORY_MB", "256"),
        ("KUBELAMBDA_HANDLER", "app.handler"),
        ("KUBELAMBDA_TASK_ROOT", "/var/task"),
        ("KUBELAMBDA_REGION", SETTINGS.region),
        ("KUBELAMBDA_TIMEOUT", "30"),
        ("KUBELAMBDA_WORKERS", "4"),
        ("KUBELAMBDA_RUNTIME_NAME", "python3.12"),
    ],
    ids=lambda v: str(v),
)
def test_agent_environment(key: str, value: str) -> None:
    d = make_deployment(
        fn(memoryMB=256, timeoutSeconds=30, concurrency={"perInstance": 4}), image="img", settings=SETTINGS
    )
    env = {e["name"]: e["value"] for e in container(d)["env"]}
    assert env[key] == value


@pytest.mark.parametrize(
    ("logging", "expected"),
    [
        (None, {}),
        ({"logFormat": "Text"}, {}),
        ({"logFormat": "JSON"}, {"KUBELAMBDA_LOG_FORMAT": "JSON"}),
        (
            {"logFormat": "JSON", "applicationLogLevel": "WARN", "systemLogLevel": "DEBUG"},
            {
                "KUBELAMBDA_LOG_FORMAT": "JSON",
                "KUBELAMBDA_APPLICATION_LOG_LEVEL": "WARN",
                "KUBELAMBDA_SYSTEM_LOG_LEVEL": "DEBUG",
            },
        ),
    ],
    ids=["absent", "text", "json", "json-levels"],
)
def test_logging_config_becomes_the_agents_log_format(logging: JSON | None, expected: JSON) -> None:
    spec = {"logging": logging} if logging is not None else {}
    env = {
        e["name"]: e.get("value")
        for e in container(make_deployment(fn(**spec), image="img", settings=SETTINGS))["env"]
    }
    assert {k: v for k, v in env.items() if "LOG_FORMAT" in k or "LOG_LEVEL" in k} == expected


def test_logging_levels_need_json() -> None:
    with pytest.raises(ValueError, match="Input should be 'TRACE'"):
        fn(logging={"logFormat": "JSON", "applicationLogLevel": "LOUD"})
    with pytest.raises(ValueError, match="Input should be 'Text' or 'JSON'"):
        fn(logging={"logFormat": "XML"})


def test_the_operator_sets_only_the_agents_inputs_and_the_functions_own_variables() -> None:
    """The Lambda variables (AWS_*, _HANDLER, LAMBDA_*, TZ) are the agent's to derive, in one place."""
    d = make_deployment(
        fn(environment={"TZ": "Europe/Paris", "GREETING": "hi"}), image="img", settings=SETTINGS
    )
    names = [e["name"] for e in container(d)["env"]]
    assert [n for n in names if not n.startswith("KUBELAMBDA_")] == ["GREETING", "TZ"]


def test_hardened_pod() -> None:
    d = make_deployment(fn(), image="img", settings=SETTINGS)
    pod = d["spec"]["template"]["spec"]
    sc = container(d)["securityContext"]
    assert sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container(d)["volumeMounts"]
    role = make_deployment(fn(serviceAccountName="reader"), image="img", settings=SETTINGS)["spec"][
        "template"
    ]["spec"]
    assert role["automountServiceAccountToken"] is True
    assert role["serviceAccountName"] == "reader"


@pytest.mark.parametrize(
    ("code", "volume", "init", "image"),
    [
        ({"inline": {"app.py": "x"}}, "configMap", False, "img"),
        ({"archive": {"url": "https://x/f.zip", "sha256": "a" * 64}}, "emptyDir", True, "img"),
        (
            {"s3": {"endpoint": "http://s3", "bucket": "code", "key": "f.zip", "credentialsSecret": "s3"}},
            "emptyDir",
            True,
            "img",
        ),
        ({"image": "registry.example/fn:1"}, None, False, "registry.example/fn:1"),
    ],
    ids=["inline", "archive", "s3", "image"],
)
def test_code_sources(code: JSON, volume: str | None, init: bool, image: str) -> None:
    d = make_deployment(fn(code=code), image="img", settings=SETTINGS)
    pod = d["spec"]["template"]["spec"]
    code_volume = next((v for v in pod["volumes"] if v["name"] == "code"), None)
    assert (code_volume is not None and volume in code_volume) or (code_volume is None and volume is None)
    assert ("initContainers" in pod) == init
    assert container(d)["image"] == image
    if init:
        assert pod["initContainers"][0]["args"][-2:] == ["--dest", "/var/task"]


def test_code_change_rolls_the_pods() -> None:
    a = make_deployment(fn(code={"inline": {"app.py": "a"}}), image="img", settings=SETTINGS)
    b = make_deployment(fn(code={"inline": {"app.py": "b"}}), image="img", settings=SETTINGS)
    key = "kubelambda.io/code-sha256"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key]
        != b["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_inline_code_over_a_mebibyte_is_too_large() -> None:
    assert make_code_configmap(fn())["data"] == {"app.py": "x"}  # type: ignore[index]
    with pytest.raises(CodeTooLarge, match="1048576"):
        make_code_configmap(fn(code={"inline": {"app.py": "x" * (1024 * 1024)}}))
    assert make_code_configmap(fn(code={"image": "r/f:1"})) is None


def test_owner_reference_on_everything() -> None:
    f = fn(network={"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]})
    objects = [
        make_code_configmap(f),
        make_deployment(f, image="img", settings=SETTINGS),
        make_service(f),
        make_ingress_policy(f, system_namespace="kubelambda-system"),
        make_egress_policy(f),
        make_scale_role(f),
        make_scale_role_binding(
            f, gateway_account="kubelambda-gateway", system_namespace="kubelambda-system"
        ),
    ]
    for obj in objects:
        assert obj is not None
        assert obj["metadata"]["ownerReferences"] == [
            {"apiVersion": "kubelambda.io/v1alpha1", "kind": "Function", "name": "hello", "uid": "u-1",
             "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip
        assert obj["metadata"]["labels"]["kubelambda.io/function"] == "hello"


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        (None, None),
        (
            {
                "egress": [
                    {
                        "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                        "ports": [{"port": 443}],
                    }
                ]
            },
            [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [{"port": 443, "protocol": "TCP"}],
                },
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            ],
        ),
        (
            {"egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}]}], "allowDNS": False},
            [{"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}]}],
        ),
    ],
    ids=["unrestricted", "cidr-and-port", "namespace-no-dns"],
)
def test_egress_policy(network: JSON | None, expected: list[JSON] | None) -> None:
    policy = make_egress_policy(fn(network=network) if network else fn())
    assert (policy["spec"]["egress"] if policy else None) == expected


def test_ingress_only_from_gateway_and_bridges() -> None:
    policy = make_ingress_policy(fn(), system_namespace="kl")
    (rule,) = policy["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]] == [
        "gateway",
        "bridge",
    ]
    assert all(
        p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kl"} for p in rule["from"]
    )
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_prometheus_namespaces_may_scrape_function_pods() -> None:
    """Review of issue 17: a Function's ingress policy would block Prometheus in another namespace."""
    policy = make_ingress_policy(fn(), system_namespace="kl", metrics_namespaces=["monitoring"])
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][2:] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]  # /metrics is on the invoke port


def dep(replicas: int, ready_replicas: int = 0, conditions: list[JSON] | None = None) -> JSON:
    return {
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready_replicas, "conditions": conditions or []},
    }


@pytest.mark.parametrize(
    ("problem", "deployment", "expected"),
    [
        (Problem("CodeTooLarge", "big"), None, ("False", "CodeTooLarge")),
        (None, None, ("Unknown", "Reconciling")),
        (None, dep(0), ("True", "ScaledToZero")),
        (None, dep(2, 0), ("False", "InstancesStarting")),
        (None, dep(2, 1), ("True", "InstancesReady")),
        (
            None,
            dep(1, 0, [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
            ("False", "ProgressDeadlineExceeded"),
        ),
    ],
    ids=["problem", "no-deployment", "zero", "starting", "ready", "deadline"],
)
def test_ready_condition(problem: Problem | None, deployment: JSON | None, expected: tuple[str, str]) -> None:
    assert ready(problem=problem, deployment=deployment)[:2] == expected


def test_transition_time_moves_only_when_status_changes() -> None:
    first = set_condition([], type="Ready", status="True", reason="A", message="", generation=1, now="t1")
    same = set_condition(first, type="Ready", status="True", reason="B", message="", generation=2, now="t2")
    flipped = set_condition(
        same, type="Ready", status="False", reason="C", message="", generation=2, now="t3"
    )
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["t1", "t1", "t3"]


def test_status_is_stable_when_nothing_changed() -> None:
    kwargs: JSON = dict(generation=3, problem=None, deployment=dep(0), code_sha256="c", invoke_url="u")
    first = function_status({}, now="t1", **kwargs)
    assert function_status(first, now="t2", **kwargs) == first


def test_operator_owns_replicas_reads_the_operators_applied_fields() -> None:
    from kubelambda.operator._reconcile import operator_owns_replicas

    created = {
        "metadata": {
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"},
                {
                    "manager": "kubelambda-operator",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                },
            ]
        },
    }
    assert operator_owns_replicas(created)
    # The autoscaler's scale write took them: the operator's entry no longer lists them.
    created["metadata"]["managedFields"][1]["fieldsV1"] = {"f:spec": {"f:template": {}}}
    created["metadata"]["managedFields"].append(
        {
            "manager": "kubelambda-autoscaler",
            "operation": "Update",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
    )
    assert not operator_owns_replicas(created)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({}, None),
        ({"containerStatuses": [{"name": "f", "state": {"running": {}}}]}, None),
        ({"containerStatuses": [{"name": "f", "state": {"waiting": {"reason": "ContainerCreating"}}}]}, None),
        (
            {
                "containerStatuses": [
                    {"name": "f", "state": {"waiting": {"reason": "RuntimeUnavailable", "message": "m"}}}
                ]
            },
            ("RuntimeUnavailable", "pod p-1: m"),
        ),
        (
            {"initContainerStatuses": [{"name": "i", "state": {"waiting": {"reason": "ErrImagePull"}}}]},
            ("ErrImagePull", "pod p-1: ErrImagePull"),
        ),
    ],
    ids=["no-status", "running", "creating", "runtime-unavailable", "init-image-pull"],
)
def test_pod_problem_names_the_stuck_reason(
    statuses: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    assert pod_problem({"metadata": {"name": "p-1"}, "status": statuses}) == expected


def test_layers_make_opt_an_emptydir_filled_by_init_containers() -> None:
    sha = "a" * 64
    d = make_deployment(
        fn(
            layers=[
                {"archive": {"url": "http://files/one.zip", "sha256": sha}},
                {"configMap": {"name": "libs"}},
                {
                    "s3": {
                        "endpoint": "http://s3:9000",
                        "bucket": "layers",
                        "key": "x.zip",
                        "credentialsSecret": "s3",
                    }
                },
            ]
        ),
        image="ghcr.io/kubelambda/runtime-python:3.12",
        settings=SETTINGS,
    )
    pod = d["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["opt"] == {"name": "opt", "emptyDir": {"sizeLimit": "300Mi"}}
    assert volumes["layer-2"]["configMap"] == {
        "name": "libs",
        "items": [{"key": "layer.zip", "path": "layer.zip"}],
    }
    fetch, copy = pod["initContainers"]
    assert fetch["name"] == "fetch-layers"
    assert fetch["image"] == SETTINGS.fetcher_image
    assert json.loads(fetch["args"][2]) == [
        {"url": "http://files/one.zip", "sha256": sha},
        {"file": "/layer-sources/2/layer.zip"},
        {
            "s3Endpoint": "http://s3:9000",
            "bucket": "layers",
            "key": "x.zip",
            "region": "us-east-1",
            "credentialsPrefix": "LAYER3_",
        },
    ]
    assert fetch["args"][3:] == ["--dest", "/opt-layers"]
    assert {e["name"] for e in fetch["env"]} == {"LAYER3_AWS_ACCESS_KEY_ID", "LAYER3_AWS_SECRET_ACCESS_KEY"}
    assert {"name": "layer-2", "mountPath": "/layer-sources/2", "readOnly": True} in fetch["volumeMounts"]
    # The runtime image's own /opt/kubelambda is copied beside the layers, after them.
    assert copy["image"] == "ghcr.io/kubelambda/runtime-python:3.12"
    assert copy["command"] == ["/opt/kubelambda/bin/kubelambda-agent", "copy-opt", "/opt-layers/kubelambda"]
    assert {"name": "opt", "mountPath": "/opt", "readOnly": True} in container(d)["volumeMounts"]


def test_no_layers_no_opt_volume() -> None:
    pod = make_deployment(fn(), image="img", settings=SETTINGS)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert all(v["name"] != "opt" for v in pod["volumes"])


@pytest.mark.parametrize(
    ("config", "argv_tail", "workdir"),
    [
        (None, ["/lambda-entrypoint.sh", "app.handler"], None),
        (
            {
                "entryPoint": ["/usr/bin/python3", "-m", "awslambdaric"],
                "command": ["main.run"],
                "workingDirectory": "/srv",
            },
            ["/usr/bin/python3", "-m", "awslambdaric", "main.run"],
            "/srv",
        ),
    ],
    ids=["base-image defaults", "imageConfig"],
)
def test_a_lambda_layout_image_runs_its_entrypoint_under_the_injected_agent(
    config: JSON | None, argv_tail: list[str], workdir: str | None
) -> None:
    code: JSON = {"image": "registry.example/fn:1", "imageLayout": "lambda"}
    if config is not None:
        code["imageConfig"] = config
    d = make_deployment(fn(code=code), image="ghcr.io/kubelambda/runtime-python:3.12", settings=SETTINGS)
    pod = d["spec"]["template"]["spec"]
    (inject,) = pod["initContainers"]
    assert inject["image"] == "ghcr.io/kubelambda/runtime-python:3.12"
    assert inject["command"] == ["/opt/kubelambda/bin/kubelambda-agent", "copy-opt", "/kubelambda/agent"]
    c = container(d)
    assert c["image"] == "registry.example/fn:1"
    assert c["command"] == ["/kubelambda/agent/bin/kubelambda-agent", "--", *argv_tail]
    assert {"name": "kubelambda-agent", "mountPath": "/kubelambda", "readOnly": True} in c["volumeMounts"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["KUBELAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env.get("KUBELAMBDA_WORKDIR") == workdir


def test_a_kubelambda_image_keeps_its_entrypoint() -> None:
    d = make_deployment(fn(code={"image": "registry.example/fn:1"}), image="rt", settings=SETTINGS)
    assert "command" not in container(d)
    assert "initContainers" not in d["spec"]["template"]["spec"]


def test_the_gateway_may_scale_exactly_the_functions_deployment() -> None:
    """Issue 17 item 3: no cluster-wide deployments/scale; each Function's Role names its Deployment only."""
    role = make_scale_role(fn())
    assert role["metadata"] | {"labels": None, "ownerReferences": None} == {
        "name": "hello-scale", "namespace": "demo", "labels": None, "ownerReferences": None
    }  # fmt: skip
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["hello"],
         "verbs": ["get", "patch"]}
    ]  # fmt: skip
    binding = make_scale_role_binding(fn(), gateway_account="edge-gw", system_namespace="platform")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "hello-scale",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edge-gw", "namespace": "platform"}]
