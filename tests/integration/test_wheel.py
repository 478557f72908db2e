"""The wheel as a user meets it: built from this checkout, installed into a fresh venv outside it, and used
from a folder of its own: ``dev up`` finds its build recipes, CRDs and agent sources in the package, then
init, deploy, invoke, ``dev status`` from another folder and ``dev down``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from kltest.platform import REPO
from kltest.wheel import wheel_venv

pytestmark = pytest.mark.integration


def run(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(1200)
def test_a_wheel_in_a_fresh_venv_runs_the_platform_from_any_folder(tmp_path: Path) -> None:
    work, other = tmp_path / "work", tmp_path / "other"
    for folder in (work, other):
        folder.mkdir()
    venv = wheel_venv(tmp_path)

    # A clean shell: no variable of ours, the fresh venv first on PATH (not the checkout's), a state home of its own.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "KUBECONFIG", "VIRTUAL_ENV"))
    }
    env["PATH"] = os.pathsep.join(
        [
            str(venv / "bin"),
            *(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))),
        ]
    )
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    where = run(["python", "-c", "import kubelambda.bundle as b; print(b.root())"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv.resolve()), where  # the wheel's copy, not the checkout

    try:
        up = run(["kubelambda", "dev", "up", "--timeout", "300"], cwd=work, env=env, timeout=900)
        assert "The local cluster is running" in up.stdout
        run(["kubelambda", "init", "python3.11", "hello"], cwd=work, env=env)
        deployed = run(["kubelambda", "deploy", "hello", "-n", "default"], cwd=work, env=env)
        assert "Function default/hello is Ready" in deployed.stdout, deployed.stdout + deployed.stderr
        # Another folder: the same platform, found through the user's state home.
        invoked = run(
            ["kubelambda", "invoke", "default/hello", "--payload", '{"name": "wheel"}'], cwd=other, env=env
        )
        assert json.loads(invoked.stdout)["message"] == "Hello, wheel!"
        status = run(["kubelambda", "dev", "status"], cwd=other, env=env)
        state_dir = tmp_path / "state" / "kubelambda" / "default"
        assert f"state dir:   {state_dir}" in status.stdout
        assert re.search(r"^nats: +nats://(admin:\*\*\*@)?127\.0\.0\.1:\d+$", status.stdout, re.M), (
            status.stdout
        )
    finally:
        down = subprocess.run(
            ["kubelambda", "dev", "down"], cwd=other, env=env, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stdout + down.stderr
