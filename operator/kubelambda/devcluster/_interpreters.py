"""Which interpreter of this machine runs a runtime on the local node: the one the runtime names, or none.

A ``python3.13`` Function runs on a Python 3.13 or not at all: when no interpreter of the runtime's version is
installed, its container waits with reason ``RuntimeUnavailable`` and a message naming the runtime and every
program that was looked at. ``kubelambda dev up --substitute-runtimes`` (environment
``KUBELAMBDA_DEV_SUBSTITUTE_RUNTIMES=1``) lets such a Function run on the family's interpreter of another version
instead; the agent then says so in its log and in every REPORT line (docs/local-cluster.md).

The candidates come from the runtime table (``Family.programs``); each one's version is asked once per process.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

from kubelambda.runtimes import table

RUNTIME_UNAVAILABLE = "RuntimeUnavailable"
SUBSTITUTE_ENV = "KUBELAMBDA_DEV_SUBSTITUTE_RUNTIMES"
_VERSION = re.compile(r"(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Interpreter:
    path: str  # "" for runtimes that need none (provided, go)
    version: str  # what the program says, e.g. 3.11.7 ("" when it needs none)
    substitute_for: str = ""  # the runtime it stands in for, when its version is not the runtime's

    def describe(self) -> str:
        """``/usr/bin/python3.11 (3.11.7)``."""
        return f"{self.path} ({self.version})"


class RuntimeUnavailable(Exception):
    """No interpreter of the runtime's version is installed; the message says what was looked for."""


def substitution_allowed(environ: dict[str, str] | None = None) -> bool:
    """The dev opt-in: ``KUBELAMBDA_DEV_SUBSTITUTE_RUNTIMES`` set to 1/true/yes (in the node's environment)."""
    value = (environ if environ is not None else os.environ).get(SUBSTITUTE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


@cache
def program_version(path: str, probe: tuple[str, ...]) -> str:
    """The version ``path`` prints for ``probe`` (stdout or stderr: ``java -version`` uses stderr); "" if it
    prints none or fails."""
    try:
        done = subprocess.run(
            [path, *probe], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if done.returncode != 0:  # e.g. a pyenv shim for a version that is not installed
        return ""
    match = _VERSION.search(done.stdout + "\n" + done.stderr)
    return match.group(1) if match else ""


def _candidates(family: table.Family, version: str) -> list[str]:
    """Programs of ``family`` on this machine, the most specific first (no duplicates)."""
    found: list[str] = []
    if family.name == "python":
        found.append(sys.executable)  # the node's own Python, when its version is the runtime's
    for pattern in family.programs:
        name = pattern.format(v=version)
        if "*" in name:
            found.extend(sorted(glob.glob(name)))
        elif (path := shutil.which(name)) is not None:
            found.append(path)
    return list(dict.fromkeys(found))


def matches(found: str, wanted: str) -> bool:
    """``3.11.7`` is a 3.11; ``20.20.2`` a 20; ``17.0.15`` a 17; ``3.1.2`` is not a 3.11."""
    return found == wanted or found.startswith(wanted + ".")


def looked_for(runtime: str) -> str:
    """The program names a runtime's interpreter is looked for under, for messages."""
    rt = table.runtime(runtime)
    return ", ".join(p.format(v=rt.version) for p in rt.spec.programs)


def resolve(runtime: str, *, substitute: bool = False) -> Interpreter:
    """The interpreter of ``runtime``'s version on this machine.

    Without one: :class:`RuntimeUnavailable`, or with ``substitute`` the family's first interpreter of any
    version (``Interpreter.substitute_for`` then names the runtime).
    """
    rt = table.runtime(runtime)
    family = rt.spec
    if not family.programs:
        return Interpreter(path="", version="")
    seen: list[str] = []
    for path in _candidates(family, rt.version):
        version = program_version(path, family.version_probe)
        seen.append(f"{path} ({version or 'no version'})")
        if matches(version, rt.version):
            return Interpreter(path=path, version=version)
    if substitute:
        for path in _candidates(family, rt.version):
            if version := program_version(path, family.version_probe):
                return Interpreter(path=path, version=version, substitute_for=runtime)
    found = "; found only: " + ", ".join(seen) if seen else "; none of them is installed"
    raise RuntimeUnavailable(
        f"runtime {runtime} needs {family.title} {rt.version}: looked for {looked_for(runtime)} on PATH{found}. "
        f"Install {family.title} {rt.version}, pick a runtime this machine has, or start the cluster with "
        f"`kubelambda dev up --substitute-runtimes` to run it on another version (docs/local-cluster.md)"
    )
