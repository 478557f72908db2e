"""The local node's interpreter lookup: a runtime's own version or RuntimeUnavailable; substitution only on opt-in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kubelambda.devcluster import _images, _interpreters
from kubelambda.runtimes.table import RUNTIMES


@pytest.mark.parametrize(
    ("found", "wanted", "expected"),
    [
        ("3.11.7", "3.11", True),
        ("3.11", "3.11", True),
        ("3.1.2", "3.11", False),
        ("3.110.0", "3.11", False),
        ("20.20.2", "20", True),
        ("2.0.1", "20", False),
        ("17.0.15", "17", True),
        ("", "17", False),
    ],
)
def test_versions_match_by_component(found: str, wanted: str, expected: bool) -> None:
    assert _interpreters.matches(found, wanted) is expected


@pytest.mark.parametrize(
    ("value", "allowed"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)]
)
def test_the_opt_in_is_explicit(value: str, allowed: bool) -> None:
    assert _interpreters.substitution_allowed({_interpreters.SUBSTITUTE_ENV: value}) is allowed
    assert _interpreters.substitution_allowed({}) is False


def test_runtimes_without_an_interpreter_need_none() -> None:
    assert _interpreters.resolve("go") == _interpreters.Interpreter(path="", version="")
    assert _interpreters.resolve("provided").path == ""


def test_this_python_serves_its_own_version() -> None:
    own = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert own in RUNTIMES  # the project's Pythons (3.11-3.13) are all runtimes
    assert _interpreters.resolve(own) == _interpreters.Interpreter(sys.executable, sys.version.split()[0])


def lacking_python() -> str:
    for name, rt in RUNTIMES.items():
        if rt.family == "python":
            try:
                _interpreters.resolve(name)
            except _interpreters.RuntimeUnavailable:
                return name
    raise AssertionError("every python runtime has its interpreter here; this test needs one that does not")


def test_the_node_refuses_a_missing_runtime_as_a_waiting_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_interpreters.SUBSTITUTE_ENV, raising=False)
    runtime = lacking_python()
    env = {
        "KUBELAMBDA_RUNTIME_NAME": runtime,
        "KUBELAMBDA_ROOTFS": str(tmp_path),
        "KUBELAMBDA_POD_IP": "127.0.0.9",
    }
    with pytest.raises(_images.NotRunnable) as refused:
        _images.container_argv("ghcr.io/kubelambda/runtime-python:x", None, None, env=dict(env))
    assert refused.value.reason == "RuntimeUnavailable"
    assert f"runtime {runtime} needs" in refused.value.message
    # The opt-in: the node's own Python (the first candidate) stands in, and the agent is told.
    monkeypatch.setenv(_interpreters.SUBSTITUTE_ENV, "1")
    argv = _images.container_argv("ghcr.io/kubelambda/runtime-python:x", None, None, env=env)
    assert argv[argv.index("--") + 1] == sys.executable
    assert env["KUBELAMBDA_RUNTIME_SUBSTITUTE"] == f"{runtime} on {sys.executable} ({sys.version.split()[0]})"
