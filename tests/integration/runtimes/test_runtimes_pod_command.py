"""The local node's way in: a runtime image's container, configured by environment only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubelambda.runtimes import LocalFunction, pod_command

from .conftest import FUNCTIONS, free_loopback


@pytest.mark.parametrize(
    ("image", "code", "handler"),
    [
        ("kubelambda/runtime-python:3.12", "python", "app.ctx"),
        ("kubelambda/runtime-nodejs:20", "nodejs", "app.ctx"),
    ],
    ids=["python", "nodejs"],
)
def test_pod_command_runs_a_function_from_env(
    image: str, code: str, handler: str, agent: Path, node: str
) -> None:
    ip = free_loopback([8080, 9001, 9002])
    env = {
        "PATH": os.environ["PATH"],
        "KUBELAMBDA_LISTEN": ":8080",
        "KUBELAMBDA_WORKERS": "2",
        "KUBELAMBDA_TIMEOUT": "5",
        "KUBELAMBDA_MEMORY_MB": "512",
        "KUBELAMBDA_FUNCTION_NAME": "from-env",
        "KUBELAMBDA_HANDLER": handler,
        "GREETING": "from the pod spec",
    }
    interpreter = node if "runtime-nodejs" in image else None
    cmd = pod_command(
        image, env=env, pod_ip=ip, task_root=FUNCTIONS / code, agent=agent, interpreter=interpreter
    )
    assert cmd is not None
    with LocalFunction(cmd) as fn:
        fn.wait_ready()
        got = json.loads(fn.invoke(b"{}").body)
    assert got["function_name"] == "from-env"
    assert got["memory_limit_in_mb"] == "512"
    assert got["env"]["GREETING"] == "from the pod spec"


@pytest.mark.parametrize(
    ("image", "handler"),
    [
        ("ghcr.io/kubelambda/runtime-java:21", "example.App::echo"),
        ("ghcr.io/kubelambda/runtime-ruby:3.3", "app.echo"),
        ("ghcr.io/kubelambda/runtime-provided:latest", "echo"),
        ("ghcr.io/kubelambda/runtime-provided:go", "echo"),
    ],
    ids=["java", "ruby", "provided", "go"],
)
def test_pod_command_runs_the_other_runtime_images(
    image: str, handler: str, agent: Path, request: pytest.FixtureRequest
) -> None:
    code = {
        "java": lambda: request.getfixturevalue("java_code"),
        "ruby": lambda: FUNCTIONS / "ruby",
        "provided": lambda: FUNCTIONS / "provided",
        "go": lambda: request.getfixturevalue("go_code"),
    }[request.node.callspec.id]()
    ip = free_loopback([8080, 9001])
    env = {"PATH": os.environ["PATH"], "KUBELAMBDA_HANDLER": handler, "KUBELAMBDA_FUNCTION_NAME": "from-env"}
    cmd = pod_command(image, env=env, pod_ip=ip, task_root=code, agent=agent)
    assert cmd is not None
    with LocalFunction(cmd) as fn:
        fn.wait_ready()
        result = fn.invoke(b'{"from": "the pod"}')
    assert (result.status, json.loads(result.body)) == (200, {"from": "the pod"}), fn.logs()
