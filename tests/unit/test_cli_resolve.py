"""How commands find the cluster, the namespace and the gateway: flags, then environment, then dev.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelambda.cli._common import (
    GATEWAY_URL_ANNOTATION,
    CliError,
    gateway_of_service,
    resolve_credentials,
    resolve_gateway,
    resolve_target,
)
from kubelambda.devcluster import DevState


def kubeconfig(path: Path, namespace: str | None = None) -> str:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"current-context": "x", "contexts": [{"name": "x", "context": context}]}))
    return str(path)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """A flag file, an env file, a running dev cluster's file and ~/.kube/config, all existing."""
    state = tmp_path / "state"
    state.mkdir()
    DevState(
        state="running", pid=1, kubeconfig=kubeconfig(tmp_path / "dev.yaml"), gateway_url="http://dev:8090"
    ).write(state)
    return {
        "flag": kubeconfig(tmp_path / "flag.yaml"),
        "env": kubeconfig(tmp_path / "env.yaml", namespace="from-context"),
        "dev": str(tmp_path / "dev.yaml"),
        "home": kubeconfig(tmp_path / "home" / ".kube" / "config"),
        "state": str(state),
        "tmp": str(tmp_path),
    }


def args(world: dict[str, str], **kw: str | None) -> argparse.Namespace:
    return argparse.Namespace(
        kubeconfig=kw.get("kubeconfig"),
        namespace=kw.get("namespace"),
        state_dir=kw.get("state_dir", world["state"]),
        endpoint_url=kw.get("endpoint_url"),
    )


@pytest.mark.parametrize(
    ("flag", "env", "state", "expected"),
    [
        (True, True, True, "flag"),
        (False, True, True, "env"),
        (False, False, True, "dev"),
        (False, False, False, "home"),
    ],
    ids=["flag-wins", "env-before-dev", "dev-before-home", "home-last"],
)
def test_kubeconfig_order(world: dict[str, str], flag: bool, env: bool, state: bool, expected: str) -> None:
    got = resolve_target(
        args(
            world,
            kubeconfig=world["flag"] if flag else None,
            state_dir=world["state"] if state else world["tmp"] + "/none",
        ),
        env={"KUBECONFIG": world["env"] + ":/other"} if env else {},
        home=Path(world["tmp"]) / "home",
    )
    assert got.kubeconfig == world[expected]


def test_a_stopped_dev_cluster_is_not_used(world: dict[str, str]) -> None:
    DevState(state="stopped", pid=1, kubeconfig=world["dev"]).write(Path(world["state"]))
    with pytest.raises(CliError) as raised:
        resolve_target(args(world), env={}, home=Path(world["tmp"]) / "nohome")
    assert "kubelambda dev up" in (raised.value.hint or "")


def test_a_missing_kubeconfig_names_where_it_came_from(world: dict[str, str]) -> None:
    with pytest.raises(CliError, match=r"/nope.yaml \(from \$KUBECONFIG\) does not exist"):
        resolve_target(args(world), env={"KUBECONFIG": "/nope.yaml"})


@pytest.mark.parametrize(
    ("flag", "env", "kubeconfig_key", "expected"),
    [
        ("cli", "env-ns", "env", "cli"),
        (None, "env-ns", "env", "env-ns"),
        (None, None, "env", "from-context"),
        (None, None, "flag", "default"),
    ],
    ids=["flag", "env", "context", "default"],
)
def test_namespace_order(
    world: dict[str, str], flag: str | None, env: str | None, kubeconfig_key: str, expected: str
) -> None:
    environment = {"KUBELAMBDA_NAMESPACE": env} if env else {}
    got = resolve_target(args(world, kubeconfig=world[kubeconfig_key], namespace=flag), env=environment)
    assert got.namespace == expected


def test_gateway_order(world: dict[str, str]) -> None:
    env = {"KUBELAMBDA_GATEWAY_URL": "http://env:1/"}
    assert resolve_gateway(args(world, endpoint_url="http://flag:1"), env=env) == "http://flag:1"
    assert resolve_gateway(args(world), env=env) == "http://env:1"
    assert resolve_gateway(args(world), env={}) == "http://dev:8090"
    with pytest.raises(CliError) as raised:
        resolve_gateway(args(world, state_dir=world["tmp"] + "/none"), env={})
    assert raised.value.code == 2


def platform_kubeconfig(path: Path, server: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "x",
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    return str(path)


def test_the_gateway_follows_the_kubeconfigs_cluster_among_local_platforms(tmp_path: Path) -> None:
    """$KUBECONFIG names platform b while the default platform a runs too: b's gateway and b's key, not a's."""
    home = tmp_path / "xdg" / "kubelambda"
    for name, port in (("default", 6443), ("b", 7443)):
        server = f"https://127.0.0.1:{port}"
        DevState(
            state="running",
            pid=1,
            kubeconfig=platform_kubeconfig(home / name / "kubeconfig", server),
            server=server,
            gateway_url=f"http://127.0.0.1:{port + 1}",
            aws_access_key_id=f"KEY-{name}",
            aws_secret_access_key=f"SECRET-{name}",
        ).write(home / name)
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    nothing = argparse.Namespace(state_dir=None, platform_name=None, endpoint_url=None, kubeconfig=None)
    assert resolve_gateway(nothing, env=env, home=tmp_path) == "http://127.0.0.1:6444"
    to_b = {**env, "KUBECONFIG": str(home / "b" / "kubeconfig")}
    assert resolve_gateway(nothing, env=to_b, home=tmp_path) == "http://127.0.0.1:7444"
    assert resolve_credentials(nothing, "http://127.0.0.1:7444", env=to_b) == ("KEY-b", "SECRET-b")


def service(
    kind: str = "ClusterIP", annotations: dict[str, str] | None = None, **extra: object
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "kl-gateway",
            "namespace": "kubelambda-system",
            "annotations": annotations or {},
        },
        "spec": {"type": kind, "ports": [{"name": "http", "port": 8080, **extra}]},
    }


@pytest.mark.parametrize(
    ("svc", "url", "note"),
    [
        (
            service(annotations={GATEWAY_URL_ANNOTATION: "https://fn.example.com/"}),
            "https://fn.example.com",
            "annotation",
        ),
        (
            {**service("LoadBalancer"), "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}},
            "http://203.0.113.7:8080",
            "LoadBalancer",
        ),
        (service("LoadBalancer"), None, "without an address yet"),
        (service("NodePort", nodePort=30080), "http://10.1.2.3:30080", "NodePort"),
        (service(), None, "is ClusterIP: not reachable from outside the cluster"),
    ],
    ids=["annotation", "load-balancer", "load-balancer-pending", "node-port", "cluster-ip"],
)
def test_the_gateway_a_cluster_publishes(svc: dict[str, Any], url: str | None, note: str) -> None:
    got, said = gateway_of_service(svc, "https://10.1.2.3:6443")
    assert got == url
    assert note in said
    assert "Service kubelambda-system/kl-gateway" in said
