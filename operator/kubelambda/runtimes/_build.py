"""Where the agent binary and the runtime clients come from on a development machine."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path


def repo_root() -> Path:
    """The source checkout this package runs from (operator/kubelambda/runtimes → repo)."""
    return Path(__file__).resolve().parents[3]


def runtime_images_dir() -> Path:
    """``runtime-images/`` of the checkout, or ``$KUBELAMBDA_RUNTIME_IMAGES``."""
    override = os.environ.get("KUBELAMBDA_RUNTIME_IMAGES")
    return Path(override) if override else repo_root() / "runtime-images"


def _run_build_script(name: str) -> Path:
    """Runs ``hack/<name>`` (a cached build) and returns the path it prints last."""
    script = repo_root() / "hack" / name
    done = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed with exit code {done.returncode}:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


@cache
def java_runtime_dir() -> Path:
    """``LAMBDA_RUNTIME_DIR`` of the Java runtime locally: ``$KUBELAMBDA_JAVA_RUNTIME`` or the cached Maven
    build of ``hack/build-runtime-java.sh`` (its ``lib/`` holds our client's jar and aws-lambda-java-core).

    The script rebuilds only when runtime-images/java changes; the first build takes ~15 s.
    """
    override = os.environ.get("KUBELAMBDA_JAVA_RUNTIME")
    if override:
        return Path(override)
    return _run_build_script("build-runtime-java.sh")


@cache
def agent_binary() -> Path:
    """Path of the agent binary: ``$KUBELAMBDA_AGENT`` or the cached build of ``hack/build-agent.sh``.

    The script rebuilds only when the agent's sources changed, so calling this is cheap.
    """
    override = os.environ.get("KUBELAMBDA_AGENT")
    if override:
        return Path(override)
    return _run_build_script("build-agent.sh")
