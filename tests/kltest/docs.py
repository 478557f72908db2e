"""The shell steps of a documentation page, as a script that runs them in order (tests/integration/test_docs.py).

Every fenced block whose language is ``sh`` or ``bash`` is a step. A block that cannot run here is marked on the
line right before its fence, and the page says why in its text::

    <!-- docs-test: skip: needs Docker (kind), which the project machine does not have -->

Nothing else is left out or rewritten: a step that cannot run as written is fixed in the page, not here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kltest.platform import REPO

FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- docs-test: skip: (?P<reason>\S.*?) -->$")
SHELL = ("sh", "bash")


@dataclass(frozen=True)
class Block:
    page: str  # the page's path in the repository
    line: int  # of the opening fence, 1-based
    text: str
    skipped: str | None  # why, when the page marks the block as not run here


def shell_blocks(page: str) -> list[Block]:
    """The ``sh``/``bash`` blocks of ``page`` (a path in the repository), in order, with their skip marks."""
    lines = (REPO / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if opened.group(1) in SHELL:
            mark = SKIP.match(lines[i - 1]) if i > 0 else None
            text = "\n".join(lines[i + 1 : end])
            blocks.append(Block(page, i + 1, text, mark.group("reason") if mark else None))
        i = end + 1
    return blocks


def script(page: str, trace: Path) -> str:
    """The page's steps as one bash script that stops at the first failing command; each command is traced to
    ``trace`` (not to the output, which the test reads for the commands' own words)."""
    parts = ["set -euo pipefail", f"exec 9>>'{trace}'", "BASH_XTRACEFD=9", "set -x"]
    for block in shell_blocks(page):
        if block.skipped is None:
            parts += [f": '--- {page}:{block.line}'", block.text]
    return "\n".join(parts) + "\n"


def checkout_copy(work: Path, venv: Path) -> Path:
    """A folder that looks like a fresh clone after ``make venv`` to the steps (they run "from the checkout":
    ``.venv/bin/…``, ``examples/``, ``make demo``): links to the repository's entries, so what the steps write
    (``hello/``, ``out.json``) lands here and not in the repository, and ``.venv`` is ``venv`` (the wheel's, in a
    fresh venv: kltest.wheel), marked as made so that ``make`` leaves it as it is."""
    work.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv") and not (work / entry.name).exists():
            (work / entry.name).symlink_to(entry)
    (work / ".venv").symlink_to(venv)
    (venv / ".installed").touch()
    return work


def clean_env(state_home: Path) -> dict[str, str]:
    """A new user's shell: nothing of kubelambda's, no kubeconfig, no AWS keys, no checkout on PATH; the local
    platforms' state under ``state_home`` (a platform of the test's own)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KUBELAMBDA_", "KUBECONFIG", "AWS_", "GW"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    env["XDG_STATE_HOME"] = str(state_home)
    return env


def run_page(page: str, *, work: Path, env: dict[str, str], log: Path, timeout: float) -> str:
    """Runs ``page``'s steps in ``work``; their output (stdout and stderr, interleaved) is written to ``log`` and
    returned, the commands to ``log`` with the suffix ``.trace``. A failing step fails with the end of both."""
    path, trace = log.with_suffix(".sh"), log.with_suffix(".trace")
    path.write_text(script(page, trace))
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(path)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        # What a failed page left running in the background (its servers: its clean-up never ran) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    said = log.read_text(errors="replace")
    what = "timed out" if code is None else f"exit {code}"
    traced = trace.read_text(errors="replace") if trace.exists() else ""
    assert code == 0, (
        f"a step of {page} failed ({what}; {log}):\n{said[-5000:]}\n--- the last commands ---\n{traced[-1500:]}"
    )
    return said
