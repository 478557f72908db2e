"""Table tests for the local node's pure parts: the image table, quantities, $(VAR) expansion, field refs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from kubelambda.devcluster import _images
from kubelambda.devcluster._podenv import ConfigError, PodFacts, expand, parse_quantity


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("busybox", "busybox"),
        ("busybox:1.36", "busybox"),
        ("docker.io/library/busybox:1.36", "busybox"),
        ("busybox@sha256:abc", "busybox"),
        ("ghcr.io/kubelambda/kubelambda:0.1.0", "ghcr.io/kubelambda/kubelambda"),
        ("localhost:5000/team/fn:v2", "localhost:5000/team/fn"),
        ("localhost:5000/team/fn", "localhost:5000/team/fn"),
    ],
    ids=lambda v: str(v),
)
def test_repository_drops_tag_digest_and_docker_hub_prefix(image: str, repository: str) -> None:
    assert _images.repository(image) == repository


SH = shutil.which("sh")
SLEEP = shutil.which("sleep")


@pytest.mark.parametrize(
    ("image", "command", "args", "argv"),
    [
        ("busybox", ["sh", "-c", "exit 3"], None, [SH, "-c", "exit 3"]),
        ("busybox", None, None, [SH]),  # the image's CMD
        ("busybox", ["sh"], ["-c", "true"], [SH, "-c", "true"]),
        ("registry.k8s.io/pause:3.10", None, None, [SLEEP, "infinity"]),
        ("registry.k8s.io/pause:3.10", None, ["5"], [SLEEP, "infinity", "5"]),  # args replace CMD only
        (
            "kubelambda.io/dev/httpserver",
            None,
            None,
            [sys.executable, "-m", "kubelambda.devcluster.httpserver"],
        ),
        ("python:3.12-slim", ["/usr/local/bin/python", "-V"], None, [sys.executable, "-V"]),
        (
            "ghcr.io/kubelambda/kubelambda:1",
            None,
            ["operator"],
            [sys.executable, "-m", "kubelambda", "operator"],
        ),
    ],
    ids=[
        "command",
        "cmd",
        "command+args",
        "entrypoint",
        "entrypoint+args",
        "httpserver",
        "python path",
        "ours",
    ],
)
def test_container_argv_follows_entrypoint_and_cmd_rules(
    image: str, command: list[str] | None, args: list[str] | None, argv: list[str]
) -> None:
    assert _images.container_argv(image, command, args) == argv


@pytest.mark.parametrize(
    ("image", "command", "reason"),
    [
        ("nginx:1.27", None, _images.IMAGE_NOT_RUNNABLE),
        ("ghcr.io/someone/else:1", ["x"], _images.IMAGE_NOT_RUNNABLE),
        ("busybox", ["/no/such/program"], _images.COMMAND_NOT_FOUND),
    ],
    ids=["unknown image", "unknown registry", "missing program"],
)
def test_not_runnable_names_the_reason_and_the_image(
    image: str, command: list[str] | None, reason: str
) -> None:
    with pytest.raises(_images.NotRunnable) as refused:
        _images.container_argv(image, command, None)
    assert refused.value.reason == reason
    assert image in refused.value.message


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("1", 1.0), ("500m", 0.5), ("128Mi", 128 * 2**20), ("1Gi", 2**30), ("2k", 2000.0), ("1e3", 1000.0)],
)
def test_parse_quantity(quantity: str, value: float) -> None:
    assert parse_quantity(quantity) == value


@pytest.mark.parametrize("bad", ["", "12XB", "Mi", "1.2.3"])
def test_parse_quantity_refuses_garbage(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad quantity"):
        parse_quantity(bad)


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$(A)-x", "1-x"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$(A)$(B)", "12"),
        ("plain", "plain"),
    ],
)
def test_dollar_paren_expansion(value: str, expanded: str) -> None:
    assert expand(value, {"A": "1", "B": "2"}) == expanded


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "a", "tier": "b"}},
    "spec": {
        "serviceAccountName": "sa",
        "containers": [{"name": "main", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}],
    },
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.name", "p"),
        ("metadata.namespace", "ns"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "a"),
        ("metadata.labels", 'app="a"\ntier="b"'),
        ("spec.serviceAccountName", "sa"),
        ("spec.nodeName", "node"),
        ("status.podIP", "10.244.0.9"),
        ("status.hostIP", "10.244.255.254"),
    ],
)
def test_field_refs(path: str, value: str) -> None:
    facts = PodFacts(pod=POD, pod_ip="10.244.0.9", host_ip="10.244.255.254", node_name="node")
    assert facts.field(path) == value


@pytest.mark.parametrize(
    ("ref", "value"),
    [
        ({"resource": "limits.memory", "divisor": "1Mi"}, "64"),
        ({"resource": "limits.memory"}, str(64 * 2**20)),
        ({"resource": "limits.cpu"}, "1"),  # 250m rounds up to one core
        ({"resource": "limits.cpu", "divisor": "1m"}, "250"),
        ({"resource": "requests.cpu"}, "0"),
    ],
)
def test_resource_field_refs(ref: dict[str, str], value: str) -> None:
    facts = PodFacts(pod=POD, pod_ip="", host_ip="", node_name="")
    assert facts.resource(ref, "main") == value


def test_an_unknown_field_ref_is_a_config_error() -> None:
    facts = PodFacts(pod=POD, pod_ip="", host_ip="", node_name="")
    with pytest.raises(ConfigError, match=r"status\.phase"):
        facts.field("status.phase")


def test_runtime_image_agent_path_is_this_machines_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Function with layers runs the image's agent as ``copy-opt`` in an init container."""
    agent = tmp_path / "kubelambda-agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    monkeypatch.setattr("kubelambda.runtimes.agent_binary", lambda: agent)
    argv = _images.container_argv(
        "ghcr.io/kubelambda/runtime-python:3.12",
        ["/opt/kubelambda/bin/kubelambda-agent", "copy-opt", "/opt-layers/kubelambda"],
        None,
    )
    assert argv == [str(agent), "copy-opt", "/opt-layers/kubelambda"]
