"""Where the agent binary and the runtime clients come from on a development machine, and the local
builds of compiled functions (Go ``bootstrap`` binaries, Java classes)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)


def repo_root() -> Path:
    """The source checkout this package runs from, or the wheel's copy of its platform files
    (:mod:`kubelambda.bundle`)."""
    from kubelambda import bundle

    return bundle.root()


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
def python_runtime_dir() -> Path:
    """``LAMBDA_RUNTIME_DIR`` of the Python runtimes locally: the cached folder of ``hack/python-runtime.sh``, a link
    to ``runtime_images_dir()``'s ``python/bootstrap.py`` beside ``_vendor/python<X.Y>/`` with the runtime's private
    orjson for each Python runtime of the table (from the wheelhouse; the first call takes ~2 s). When that folder
    cannot be made, ``runtime-images/python``: the runtime then decodes events with json.loads alone.
    """
    from kubelambda.runtimes.table import RUNTIMES

    versions = sorted({rt.version for rt in RUNTIMES.values() if rt.family == "python"})
    script = repo_root() / "hack" / "python-runtime.sh"
    bootstrap = runtime_images_dir() / "python" / "bootstrap.py"
    env = {**os.environ, "PYTHON": sys.executable, "BOOTSTRAP": str(bootstrap.resolve())}
    done = subprocess.run(
        ["bash", str(script), *versions], check=False, capture_output=True, text=True, env=env
    )
    if done.returncode != 0 or not done.stdout.strip():
        log.warning(
            "The Python runtime's orjson could not be installed (%s exited %d: %s): its events are decoded by json",
            script,
            done.returncode,
            done.stderr.strip()[-500:],
        )
        return bootstrap.parent
    return Path(done.stdout.strip().splitlines()[-1])


@cache
def agent_binary() -> Path:
    """Path of the agent binary: ``$KUBELAMBDA_AGENT`` or the cached build of ``hack/build-agent.sh``.

    The script rebuilds only when the agent's sources changed, so calling this is cheap.
    """
    override = os.environ.get("KUBELAMBDA_AGENT")
    if override:
        return Path(override)
    return _run_build_script("build-agent.sh")


def _cache_root() -> Path:
    root = os.environ.get("KUBELAMBDA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubelambda"
    )
    return Path(root)


def _tree_hash(folder: Path, suffixes: tuple[str, ...], *extra: str) -> str:
    digest = hashlib.sha256("\0".join(extra).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Runs ``build(tmp)`` and renames tmp to ``final``, unless ``final`` exists (a cache hit)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check(argv: list[str], *, cwd: Path | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build_go_function(module_dir: Path | str, *, package: str = ".", go: str = "go") -> Path:
    """The code folder of a Go function: ``bootstrap`` built from ``module_dir`` with
    ``runtime-images/go/build-bootstrap.sh``, cached by a hash of the module's sources and the toolchain.
    """
    module = Path(module_dir).resolve()
    version = subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout
    key = _tree_hash(module, (".go", "go.mod", "go.sum"), version, package)
    script = runtime_images_dir() / "go" / "build-bootstrap.sh"

    def build(out: Path) -> None:
        _check(["bash", str(script), str(module), str(out), package])

    return _build_once(_cache_root() / "functions" / f"go-{key}", build)


def compile_java_function(source_dir: Path | str, *, javac: str = "javac") -> Path:
    """The code folder of a Java function: ``source_dir``'s ``.java`` files compiled against the runtime's
    class path (aws-lambda-java-core), classes at the top as in a Lambda zip; jars in ``source_dir/lib``
    are copied to ``lib/``. Cached by a hash of the sources.
    """
    source = Path(source_dir).resolve()
    runtime = java_runtime_dir()
    key = _tree_hash(source, (".java", ".jar"), str(runtime))

    def build(out: Path) -> None:
        sources = sorted(str(p) for p in source.rglob("*.java"))
        if not sources:
            raise RuntimeError(f"no .java files under {source}")
        classpath = os.pathsep.join([str(runtime / "lib" / "*"), str(source / "lib" / "*")])
        _check([javac, "-encoding", "UTF-8", "-cp", classpath, "-d", str(out), *sources])
        if (source / "lib").is_dir():
            shutil.copytree(source / "lib", out / "lib")

    return _build_once(_cache_root() / "functions" / f"java-{key}", build)
