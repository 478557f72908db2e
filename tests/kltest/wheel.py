"""The wheel as a user installs it: built from this checkout, into a fresh venv outside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kltest.platform import REPO


def _run(argv: list[str], *, cwd: Path, timeout: float) -> None:
    done = subprocess.run(
        argv, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def wheel_venv(folder: Path, *, extras: str = "servers") -> Path:
    """A venv in ``folder`` with the checkout's wheel installed (with ``extras``); its path."""
    wheels, venv = folder / "wheels", folder / "venv"
    wheels.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)], cwd=folder,
         timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("kubelambda-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=folder, timeout=300)
    _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[{extras}]"], cwd=folder, timeout=1200)
    return venv
