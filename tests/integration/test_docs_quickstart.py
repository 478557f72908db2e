"""docs/quickstart.md's "Local, step by step" runs as written, twice (the quickstart is idempotent), in a clean
shell from a folder outside the checkout, against a fresh local platform of its own.

Documented substitutions only: ``make venv binaries`` is left out (the test's own venv and binaries exist), and
the folder holds links to the checkout's ``.venv`` and ``examples`` (the quickstart runs from the checkout).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from kltest.platform import REPO

pytestmark = pytest.mark.integration

SKIPPED = ("make venv binaries",)


def step_by_step() -> str:
    text = (REPO / "docs" / "quickstart.md").read_text()
    section = text.split("## Local, step by step", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) >= 6, blocks
    lines = [line for block in blocks for line in block.splitlines() if not line.startswith(SKIPPED)]
    return "\n".join(lines)


@pytest.mark.timeout(1500)
def test_the_quickstart_runs_as_written_twice(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")
    (work / "examples").symlink_to(REPO / "examples")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "KUBECONFIG", "AWS_", "GW"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # a platform of its own
    script = "set -euo pipefail\nset -x\n" + step_by_step() + "\n"
    (tmp_path / "quickstart.sh").write_text(script)
    try:
        for attempt in (1, 2):
            done = subprocess.run(
                ["bash", str(tmp_path / "quickstart.sh")],
                cwd=work, env=env, capture_output=True, text=True, timeout=700,
            )  # fmt: skip
            said = done.stdout + done.stderr
            (tmp_path / f"run{attempt}.log").write_text(f"{done.stdout}\n--- stderr ---\n{done.stderr}")
            assert done.returncode == 0, f"run {attempt} failed:\n{said[-6000:]}"
            assert "The local cluster is running" in done.stdout, said[-3000:]
            assert '"message": "Hello, here!"' in done.stdout  # local invoke
            assert "Function demo/hello is Ready" in done.stdout
            assert '"message": "Hello, you!"' in done.stdout
            aws = done.stdout.split("Hello, you!", 1)[-1][:1500]
            assert '"StatusCode": 200' in aws, aws  # the AWS CLI
            assert "Hello, aws!" in aws, aws
            assert "Hello, curl!" in done.stdout
            assert "Deleted Function demo/hello-python311" in done.stdout
            assert "The local cluster is stopped." in done.stdout
    finally:
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "kubelambda"), "dev", "down"],
            env=env,
            capture_output=True,
            timeout=120,
        )
