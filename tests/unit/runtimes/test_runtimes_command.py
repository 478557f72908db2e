"""local_command and the runtime table: pure builders, tested without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubelambda.runtimes import RUNTIMES, local_command, pod_command, runtime_for_image, worker_command

AGENT = "/opt/kubelambda/bin/kubelambda-agent"


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv[1 : argv.index("--")]:
        key, _, value = arg.removeprefix("--").partition("=")
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("runtime", "interpreter", "entry"),
    [
        ("python3.12", "/usr/bin/python3", "runtime-images/python/bootstrap.py"),
        ("python3.13", "/usr/bin/python3", "runtime-images/python/bootstrap.py"),
        ("nodejs20", "node", "runtime-images/nodejs/index.mjs"),
        ("nodejs22", "node", "runtime-images/nodejs/index.mjs"),
    ],
    ids=["python3.12", "python3.13", "nodejs20", "nodejs22"],
)
def test_worker_command_per_runtime(runtime: str, interpreter: str, entry: str, tmp_path: Path) -> None:
    cmd = local_command(runtime, tmp_path, "app.handler", agent=AGENT, interpreter=interpreter)
    worker = cmd.argv[cmd.argv.index("--") + 1 :]
    assert worker[0] == interpreter
    assert str(Path(worker[1]).resolve()).endswith(entry)  # python: a link to it, beside its private orjson
    assert flags(cmd.argv)["runtime-name"] == runtime


def test_local_command_defaults(tmp_path: Path) -> None:
    cmd = local_command("python3.12", tmp_path, "app.handler", agent=AGENT)
    assert cmd.argv[0] == AGENT
    assert flags(cmd.argv) == {
        "listen": "127.0.0.1:8080",
        "runtime-api": "127.0.0.1:9001",
        "workers": "1",
        "timeout": "3",
        "memory-mb": "128",
        "function-name": "function",
        "function-version": "$LATEST",
        "region": "us-east-1",
        "handler": "app.handler",
        "task-root": str(tmp_path.resolve()),
        "runtime-dir": flags(cmd.argv)["runtime-dir"],
        "runtime-name": "python3.12",
        "opt-dir": "",  # neither layers nor extensions from this machine's /opt
    }
    assert cmd.cwd == str(tmp_path.resolve())
    assert cmd.invoke_url == "http://127.0.0.1:8080/invoke"
    assert cmd.env == {}


def test_pod_loopback_ip_is_used_for_both_apis(tmp_path: Path) -> None:
    cmd = local_command(
        "nodejs20", tmp_path, "index.handler", agent=AGENT, listen="127.0.3.7:8080", workers=4
    )
    assert flags(cmd.argv)["runtime-api"] == "127.0.3.7:9001"
    assert cmd.base_url == "http://127.0.3.7:8080"
    assert cmd.workers == 4


def test_environment_is_sorted_and_agent_settings_do_not_leak(tmp_path: Path) -> None:
    cmd = local_command(
        "python3.12",
        tmp_path,
        "app.handler",
        agent=AGENT,
        base_env={"PATH": "/bin", "KUBELAMBDA_WORKERS": "9", "HOME": "/root"},
        environment={"B": "2", "A": "1", "PATH": "/usr/bin"},
    )
    assert list(cmd.env) == ["A", "B", "HOME", "PATH"]
    assert cmd.env["PATH"] == "/usr/bin"


def test_runtime_cmd_replaces_the_client(tmp_path: Path) -> None:
    cmd = local_command(
        "python3.12",
        tmp_path,
        "app.handler",
        agent=AGENT,
        runtime_cmd=["python3", "-m", "awslambdaric", "app.h"],
    )
    assert cmd.argv[cmd.argv.index("--") + 1 :] == ["python3", "-m", "awslambdaric", "app.h"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "cobol85"}, "unknown runtime 'cobol85'"),
        ({"workers": 0}, "workers must be at least 1"),
    ],
    ids=["unknown-runtime", "zero-workers"],
)
def test_local_command_rejects(kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
    args: dict[str, object] = {"runtime": "python3.12", "workers": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        local_command(
            str(args["runtime"]), tmp_path, "app.handler", agent=AGENT, workers=int(str(args["workers"]))
        )


@pytest.mark.parametrize(
    ("image", "runtime"),
    [
        ("kubelambda/runtime-python:3.13", "python3.13"),
        ("kubelambda/runtime-python:3.12", "python3.12"),
        ("ghcr.io/acme/kubelambda/runtime-python:3.12", "python3.12"),
        ("kubelambda/runtime-python", "python3.11"),
        ("kubelambda/runtime-nodejs:22", "nodejs22"),
        ("localhost:5000/kubelambda/runtime-nodejs:20", "nodejs20"),
        ("kubelambda/kubelambda:0.1.0", None),
        ("python:3.12-slim", None),
    ],
    ids=lambda v: str(v),
)
def test_runtime_for_image(image: str, runtime: str | None) -> None:
    spec = runtime_for_image(image)
    assert (spec.name if spec else None) == runtime


def test_worker_command_in_an_image() -> None:
    assert worker_command("python3.13", runtime_dir="/opt/kubelambda/runtime", interpreter="python3") == [
        "python3",
        "/opt/kubelambda/runtime/bootstrap.py",
    ]
    assert set(RUNTIMES) >= {"python3.12", "python3.13", "nodejs20", "nodejs22"}


@pytest.mark.parametrize(
    ("settings", "listen", "runtime_api"),
    [
        ({}, "127.0.3.7:8080", "127.0.3.7:9001"),
        (
            {"KUBELAMBDA_LISTEN": ":8080", "KUBELAMBDA_RUNTIME_API": "127.0.0.1:9001"},
            "127.0.3.7:8080",
            "127.0.3.7:9001",
        ),
        (
            {"KUBELAMBDA_LISTEN": "0.0.0.0:9000", "KUBELAMBDA_RUNTIME_API": "127.0.0.1:9100"},
            "127.0.3.7:9000",
            "127.0.3.7:9100",
        ),
    ],
    ids=["defaults", "cluster-defaults", "custom-ports"],
)
def test_pod_command_binds_the_pod_ip(settings: dict[str, str], listen: str, runtime_api: str) -> None:
    env = {"KUBELAMBDA_WORKERS": "4", "KUBELAMBDA_HANDLER": "app.handler", "GREETING": "hi", **settings}
    cmd = pod_command(
        "kubelambda/runtime-python:3.13",
        env=env,
        pod_ip="127.0.3.7",
        task_root="/tmp/pod/var-task",
        agent=AGENT,
        runtime_dir="/src/runtime-images/python",
        interpreter="/usr/bin/python3",
    )
    assert cmd is not None
    assert cmd.argv == [AGENT]
    assert cmd.env["KUBELAMBDA_LISTEN"] == listen
    assert cmd.env["KUBELAMBDA_RUNTIME_API"] == runtime_api
    assert cmd.env["KUBELAMBDA_TASK_ROOT"] == "/tmp/pod/var-task"
    assert cmd.env["KUBELAMBDA_RUNTIME_NAME"] == "python3.13"
    assert json.loads(cmd.env["KUBELAMBDA_RUNTIME_CMD"]) == [
        "/usr/bin/python3",
        "/src/runtime-images/python/bootstrap.py",
    ]
    assert cmd.env["GREETING"] == "hi"
    assert list(cmd.env) == sorted(cmd.env)
    assert (cmd.workers, cmd.base_url, cmd.cwd) == (4, f"http://{listen}", "/tmp/pod/var-task")


def test_pod_command_ignores_other_images() -> None:
    assert (
        pod_command("kubelambda/kubelambda:0.1.0", env={}, pod_ip="127.0.0.9", task_root="/x", agent=AGENT)
        is None
    )
