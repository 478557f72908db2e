"""The runtime table's Java, Ruby, Go and provided rows (and where the Python runtimes' client lies): pure builders, tested without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubelambda.runtimes import (
    RUNTIMES,
    local_command,
    local_runtime_dir,
    pod_command,
    python_runtime_dir,
    runtime_for_image,
    runtime_images_dir,
    worker_command,
)

AGENT = "/opt/kubelambda/bin/kubelambda-agent"
RDIR = "/opt/kubelambda/runtime"


@pytest.mark.parametrize(
    ("runtime", "argv"),
    [
        (
            "java21",
            [
                "/usr/bin/java",
                "-XX:+TieredCompilation",
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-Xshare:auto",
                "-cp",
                f"{RDIR}/lib/*",
                "io.kubelambda.runtime.Bootstrap",
            ],
        ),
        ("ruby3.3", ["/usr/bin/ruby", f"{RDIR}/bootstrap.rb"]),
        ("provided", [f"{RDIR}/launch"]),
        ("go", [f"{RDIR}/launch"]),
    ],
    ids=["java21", "ruby3.3", "provided", "go"],
)
def test_worker_command(runtime: str, argv: list[str]) -> None:
    interpreter = argv[0] if argv[0].startswith("/usr/bin/") else None
    assert worker_command(runtime, runtime_dir=RDIR, interpreter=interpreter) == argv


@pytest.mark.parametrize(
    ("image", "runtime"),
    [
        ("ghcr.io/kubelambda/runtime-java:21", "java21"),
        ("ghcr.io/kubelambda/runtime-java:17", "java17"),
        ("kubelambda/runtime-java", "java17"),
        ("ghcr.io/kubelambda/runtime-ruby:3.3", "ruby3.3"),
        ("ghcr.io/kubelambda/runtime-provided:latest", "provided"),
        ("ghcr.io/kubelambda/runtime-provided:go", "go"),
        ("localhost:5000/kubelambda/runtime-provided", "provided"),
    ],
    ids=lambda v: str(v),
)
def test_runtime_for_image(image: str, runtime: str) -> None:
    spec = runtime_for_image(image)
    assert spec is not None
    assert spec.name == runtime


def test_local_command_for_provided_uses_the_launcher(tmp_path: Path) -> None:
    cmd = local_command("provided", tmp_path, "my.handler", agent=AGENT, runtime_dir=RDIR)
    assert cmd.argv[cmd.argv.index("--") + 1 :] == [f"{RDIR}/launch"]
    assert "--runtime-name=provided" in cmd.argv
    assert f"--task-root={tmp_path.resolve()}" in cmd.argv


def test_local_command_passes_the_interpreters(tmp_path: Path) -> None:
    java = local_command(
        "java21", tmp_path, "a.B::c", agent=AGENT, runtime_dir=RDIR, interpreter="/jdk/bin/java"
    )
    assert java.argv[java.argv.index("--") + 1] == "/jdk/bin/java"
    ruby = local_command(
        "ruby3.3", tmp_path, "app.handler", agent=AGENT, runtime_dir=RDIR, interpreter="/rb/ruby"
    )
    assert ruby.argv[ruby.argv.index("--") + 1 :] == ["/rb/ruby", f"{RDIR}/bootstrap.rb"]


def test_pod_command_for_a_go_image(tmp_path: Path) -> None:
    cmd = pod_command(
        "ghcr.io/kubelambda/runtime-provided:go",
        env={"KUBELAMBDA_HANDLER": "bootstrap"},
        pod_ip="127.0.3.7",
        task_root=tmp_path,
        agent=AGENT,
        runtime_dir=RDIR,
    )
    assert cmd is not None
    assert json.loads(cmd.env["KUBELAMBDA_RUNTIME_CMD"]) == [f"{RDIR}/launch"]
    assert cmd.env["KUBELAMBDA_RUNTIME_NAME"] == "go"
    assert cmd.env["LAMBDA_TASK_ROOT"] == str(tmp_path)


@pytest.mark.parametrize("runtime", ["nodejs22", "ruby3.3", "provided", "go"])
def test_local_runtime_dir_is_the_source_folder(runtime: str) -> None:
    folder = local_runtime_dir(runtime)
    assert folder == runtime_images_dir() / RUNTIMES[runtime].folder
    assert (folder / RUNTIMES[runtime].entry).is_file()


@pytest.mark.parametrize("runtime", ["python3.11", "python3.12", "python3.13"])
def test_local_python_runtime_dir_is_bootstrap_beside_its_orjson(runtime: str) -> None:
    """hack/python-runtime.sh's cached folder: the source's bootstrap.py (a link) and orjson for every version."""
    folder = local_runtime_dir(runtime)
    assert folder == python_runtime_dir()
    assert (folder / "bootstrap.py").resolve() == (runtime_images_dir() / "python" / "bootstrap.py").resolve()
    version = RUNTIMES[runtime].name.removeprefix("python")
    assert list(
        (folder / "_vendor" / f"python{version}" / "orjson").glob(
            f"orjson.cpython-{version.replace('.', '')}-*.so"
        )
    )


def test_without_its_orjson_the_python_runtime_runs_from_the_source_folder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache the script cannot write (or no wheelhouse): runtime-images/python, and a warning saying why."""
    monkeypatch.setenv("KUBELAMBDA_CACHE", "/proc/kubelambda-cache-not-writable")
    folder = python_runtime_dir.__wrapped__()
    assert folder == runtime_images_dir() / "python"
    assert "could not be installed" in caplog.text
