"""Table tests for the warm pools' pure parts: eligibility, pool sizing, retirement, builders, routing by code."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pydantic import ValidationError

from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.gateway.balancer import Balancer
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.registry import FunctionEntry, Registry
from kubelambda.gateway.warmpool import (
    ABANDONED_CLAIM_SECONDS,
    PoolPod,
    Specialised,
    WarmPool,
    abandoned_claim,
    function_sha256,
    ineligible,
    retire_reason,
    specialize_body,
)
from kubelambda.kube import KubeClient
from kubelambda.resources.labels import FUNCTION_LABEL
from kubelambda.resources.warmpool import (
    POOL_LABEL,
    POOL_RUNTIME_LABEL,
    claim_patch,
    generic_mode,
    make_pool_deployment,
    make_pool_ingress_policy,
    pool_name,
    pool_replicas,
    pool_selector,
)

JSON = dict[str, Any]
SETTINGS = GatewaySettings(warm_pool_sizes={"python3.12": 2, "nodejs22": 1}, warm_pool_memory_mb=1024)
SHA = "a" * 64


def entry(namespace: str = "demo", name: str = "fn", **spec: Any) -> FunctionEntry:
    body: JSON = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x = 1"}}}
    body.update(spec)
    return FunctionEntry(namespace, name, FunctionSpec.model_validate(body), True, "")


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (entry(), None),
        (entry(runtime="nodejs22", handler="index.handler"), None),
        (entry(code={"archive": {"url": "http://x/f.zip", "sha256": SHA}}), None),
        (entry(scaling={"warmPool": False}), "warmPool is false"),
        (entry(runtime="ruby3.3"), "no warm pool for ruby3.3"),
        (entry(code={"image": "registry/fn:1"}), "only inline and archive"),
        (
            entry(code={"s3": {"endpoint": "http://s3", "bucket": "code", "key": "k"}}),
            "only inline and archive",
        ),
        (entry(serviceAccountName="reader"), "serviceAccountName"),
        (entry(envFrom=[{"secretRef": {"name": "creds"}}]), "envFrom"),
        (entry(network={"egress": []}), "network.egress"),
        (entry(memoryMB=2048), "memoryMB 2048"),
        (entry(ephemeralStorageMB=1024), "ephemeralStorageMB"),
        (entry(namespace="kubelambda-system"), "system namespace"),
        (entry(namespace="kubelambda-warm-pool"), "pool or system namespace"),
        (entry(layers=[{"configMap": {"name": "libs"}}]), "layers"),
    ],
    ids=[
        "inline",
        "nodejs",
        "archive",
        "opted out",
        "no pool",
        "image",
        "s3",
        "service account",
        "envFrom",
        "egress",
        "memory",
        "storage",
        "system namespace",
        "pool namespace",
        "layers",
    ],
)
def test_eligibility(fn: FunctionEntry, why: str | None) -> None:
    got = ineligible(fn, settings=SETTINGS)
    if why is None:
        assert got is None
    else:
        assert got is not None
        assert why in got


@pytest.mark.parametrize(
    ("size", "claims", "cap", "want"),
    [(2, 0, 8, 2), (2, 3, 8, 5), (2, 10, 8, 8), (0, 5, 8, 0), (3, 1, 2, 3)],
    ids=["idle", "some claims", "capped", "off", "cap below size"],
)
def test_pool_grows_with_recent_claims(size: int, claims: int, cap: int, want: int) -> None:
    assert pool_replicas(size, recent_claims=claims, max_size=cap) == want


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({}, None),
        ({"function_exists": False}, "function_gone"),
        ({"current_sha": "b" * 64}, "code_changed"),
        ({"current_sha": None}, "code_changed"),
        ({"own_ready": True}, "function_ready"),
        ({"age": 601.0}, "lifetime"),
        ({"restarted": True}, "restarted"),
        ({"restarted": True, "own_ready": True}, "restarted"),
        ({"failed": True, "own_ready": True}, "failed"),
        ({"failed": True, "restarted": True}, "restarted"),
    ],
    ids=[
        "keep",
        "gone",
        "new code",
        "no code",
        "own ready",
        "too old",
        "restarted",
        "restarted first",
        "failed before ready",
        "restarted before failed",
    ],
)
def test_retire_reason(kwargs: JSON, want: str | None) -> None:
    args: JSON = {
        "function_exists": True,
        "current_sha": SHA,
        "pod_sha": SHA,
        "own_ready": False,
        "age": 10.0,
        "lifetime": 600.0,
    }
    assert retire_reason(**{**args, **kwargs}) == want


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({}, False),
        ({"claimed_by": "gw-1"}, True),
        ({"claimed_by": "gw-1", "specialising": True}, False),
        ({"claimed_by": "gw-1", "pooled": False}, False),
        ({"claimed_by": "gw-2"}, False),
        ({"claimed_by": "gw-2", "claimed_at": 1000.0 - ABANDONED_CLAIM_SECONDS - 1}, True),
        ({"claimed_by": "gw-2", "claimed_at": None}, True),
    ],
    ids=[
        "never claimed",
        "ours from before",
        "ours being specialised",
        "ours relabelled",
        "another's, recent",
        "another's, too old",
        "another's, unreadable time",
    ],
)
def test_abandoned_claim(kwargs: JSON, want: bool) -> None:
    args: JSON = {
        "pooled": True,
        "claimed_by": None,
        "claimed_at": 990.0,
        "identity": "gw-1",
        "specialising": False,
        "now": 1000.0,
    }
    assert abandoned_claim(**{**args, **kwargs}) is want


def test_pool_deployment_runs_generic_pods_that_leave_the_pool_when_claimed() -> None:
    d = make_pool_deployment(
        "python3.12",
        image="ghcr.io/kubelambda/runtime-python:3.12",
        namespace="kubelambda-system",
        replicas=2,
        memory_mb=1024,
        region="us-east-1",
    )
    assert d["metadata"]["name"] == pool_name("python3.12") == "warm-pool-python3-12"
    template = d["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"] == pool_selector("python3.12")
    assert pool_selector("python3.12").items() <= labels.items()
    assert labels[POOL_RUNTIME_LABEL] == "python3.12"
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KUBELAMBDA_GENERIC"] == "prestart"
    assert env["KUBELAMBDA_RUNTIME_NAME"] == "python3.12"
    assert env["KUBELAMBDA_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}  # /specialize names it
    assert [e["name"] for e in container["env"]] == sorted(env)
    assert {"name": "code", "mountPath": "/var/task"} in container[
        "volumeMounts"
    ]  # writable: code arrives later
    assert container["resources"]["limits"]["memory"] == "1024Mi"

    patch = claim_patch(
        runtime="python3.12",
        namespace="demo",
        function="fn",
        code_sha256=SHA,
        claimed_by="gw",
        claimed_at="2026-01-01T00:00:00+00:00",
    )
    merged = {k: v for k, v in {**labels, **patch["metadata"]["labels"]}.items() if v is not None}
    assert not pool_selector("python3.12").items() <= merged.items()  # out of the ReplicaSet: it is replaced
    assert merged[FUNCTION_LABEL] == "fn"
    assert merged[POOL_RUNTIME_LABEL] == "python3.12"  # still watched by the gateway


@pytest.mark.parametrize(
    ("runtime", "mode"),
    [
        ("python3.12", "prestart"),
        ("python3.13", "prestart"),
        ("nodejs20", "prestart"),
        ("java21", "deferred"),
    ],
)
def test_generic_mode(runtime: str, mode: str) -> None:
    assert generic_mode(runtime) == mode


def test_specialize_body_carries_code_and_limits() -> None:
    inline = specialize_body(entry(environment={"B": "2", "A": "1"}), sha256=SHA, region="eu-west-1")
    assert inline["inline"] == {"app.py": "x = 1"}
    assert "archive" not in inline
    assert inline["functionArn"] == "arn:aws:lambda:eu-west-1:demo:function:fn"
    assert list(inline["environment"]) == ["A", "B"]
    assert (inline["memoryMB"], inline["timeoutSeconds"], inline["codeSha256"]) == (128, 3, SHA)
    archive = specialize_body(
        entry(code={"archive": {"url": "http://x/f.zip", "sha256": SHA}}), sha256=SHA, region="r"
    )
    assert archive["archive"] == {"url": "http://x/f.zip", "sha256": SHA}
    assert "functionVersion" not in inline
    # A published version (docs/versions.md) runs as its Function, with its number.
    version = specialize_body(
        entry(name="fn-v2", versionOf={"function": "fn", "version": 2}), sha256=SHA, region="r"
    )
    assert (version["functionName"], version["functionVersion"]) == ("fn", "2")
    # Lambda's LoggingConfig goes to the agent when it is not the default Text (docs/logs.md).
    assert "logging" not in inline
    logged = specialize_body(
        entry(logging={"logFormat": "JSON", "applicationLogLevel": "WARN"}), sha256=SHA, region="r"
    )
    assert logged["logging"] == {"logFormat": "JSON", "applicationLogLevel": "WARN"}


def pool(registry: Registry) -> WarmPool:
    return WarmPool(SETTINGS, cast(KubeClient, None), registry, Balancer(), identity="test")


def test_a_pod_holding_old_code_gets_no_request() -> None:
    registry = Registry()
    v1 = entry()
    registry.functions[v1.key] = v1
    wp = pool(registry)
    old = Specialised("p1", "u1", "python3.12", "10.0.0.1:8080", v1.key, function_sha256(v1), 0.0)
    wp.serving[v1.key] = [old]
    wp._by_endpoint[old.endpoint] = old
    assert wp.endpoints(v1) == ["10.0.0.1:8080"]
    assert wp.pod_at("10.0.0.1:8080") == "p1"

    v2 = entry(code={"inline": {"app.py": "x = 2"}})
    registry.functions[v2.key] = v2
    assert wp.endpoints(v2) == []  # the new sha256 never reaches the pod specialised with the old one
    other = entry(name="other")
    assert wp.endpoints(other) == []  # nor another function
    wp.discard("10.0.0.1:8080")
    assert wp.endpoints(v1) == []


def test_free_pods_are_taken_once() -> None:
    wp = pool(Registry())
    for name in ("a", "b"):
        wp.pods[name] = PoolPod(
            name, name, "python3.12", f"10.0.0.{ord(name)}", True, True, False, None, None
        )
    wp.pods["busy"] = PoolPod("busy", "x", "python3.12", "10.0.0.9", True, False, False, ("d", "f"), 0.0)
    wp.pods["starting"] = PoolPod("starting", "y", "python3.12", "", False, True, False, None, None)
    taken = [wp._take_free("python3.12") for _ in range(3)]
    assert sorted(p.name if p else "-" for p in taken) == ["-", "a", "b"]
    assert wp._take_free("nodejs22") is None


def test_pool_pod_from_body() -> None:
    body: JSON = {
        "metadata": {
            "name": "warm-pool-python3-12-x",
            "uid": "u",
            "labels": {
                POOL_RUNTIME_LABEL: "python3.12",
                FUNCTION_LABEL: "fn",
                "kubelambda.io/function-namespace": "d",
            },
            "annotations": {"kubelambda.io/claimed-at": "2026-01-01T00:00:00+00:00"},
        },
        "status": {"podIP": "10.0.0.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pod = PoolPod.from_body(body)
    assert (pod.free, pod.ready, pod.ip, pod.function) == (False, True, "10.0.0.3", ("d", "fn"))
    assert pod.claimed_at == 1767225600.0
    body["metadata"]["labels"] = {POOL_LABEL: "python3.12", POOL_RUNTIME_LABEL: "python3.12"}
    assert PoolPod.from_body(body).free


@pytest.mark.parametrize(
    "sizes",
    [{"cobol": 1}, {"python3.12": -1}, {"python3.12": 1000}],
    ids=["unknown runtime", "negative", "too many"],
)
def test_bad_pool_sizes_fail_at_start(sizes: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match="warm_pool_sizes"):
        GatewaySettings(warm_pool_sizes=sizes)


def test_pool_pods_admit_only_the_gateway_of_the_system_namespace() -> None:
    """Issue 17 item 3: pools live in a namespace of their own, so the policy names the gateway's namespace."""
    policy = make_pool_ingress_policy("kubelambda-warm-pool", gateway_namespace="kubelambda-system")
    assert policy["metadata"]["namespace"] == "kubelambda-warm-pool"
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubelambda-system"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "kubelambda",
                    "app.kubernetes.io/component": "gateway",
                }
            },
        }
    ]
