"""How commands find the cluster, the namespace and the gateway: flags, then environment, then dev.json."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from kubelambda.cli._common import CliError, resolve_gateway, resolve_target
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
