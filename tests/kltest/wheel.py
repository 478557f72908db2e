"""The wheel as a user installs it: built from this checkout, into a fresh venv outside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kltest.platform import REPO


def _run(argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def source_copy(target: Path) -> Path:
    """The checkout's files as a clone with its local changes would have them (tracked and new files, nothing
    .gitignore leaves out: no build/, no venv, no built binaries), copied to ``target``."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if os.path.lexists(path):  # not a tracked file deleted here
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name, follow_symlinks=False)
    return target


def wheel_venv(folder: Path, *, extras: str = "servers") -> Path:
    """A venv in ``folder`` with the checkout's wheel installed (with ``extras``); its path.

    The wheel is built from a copy of the sources (:func:`source_copy`), not in the checkout: pip builds in the
    source tree (setuptools' build/ and operator/kubelambda.egg-info), and two builds of one tree at once
    (test_docs and test_wheel on two xdist workers) fail with ``File exists: 'build/bdist.linux-x86_64/wheel/
    kubelambda-0.1.0.dist-info'``, which the failed build leaves behind for every later build there to fail on."""
    wheels, venv = folder / "wheels", folder / "venv"
    wheels.mkdir(parents=True, exist_ok=True)
    source = source_copy(folder / "source")
    # kubelambda._native's cargo build is cached as `make venv`'s is (cargo locks it: builds at once take turns).
    cargo = {"CARGO_TARGET_DIR": str(Path.home() / ".cache" / "kubelambda" / "cargo-wheel")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)], cwd=folder,
         timeout=600, env=cargo)  # fmt: skip
    (wheel,) = wheels.glob("kubelambda-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=folder, timeout=300)
    _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[{extras}]"], cwd=folder, timeout=1200)
    return venv
