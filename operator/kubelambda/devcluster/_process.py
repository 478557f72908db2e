"""Child processes that never outlive the process that started them.

Every child is started with ``PR_SET_PDEATHSIG=SIGKILL`` (Linux): if its parent dies for any reason,
including SIGKILL, the kernel kills the child too, so a crashed test run or supervisor leaves no orphans.
A child also gets its own process group, so stopping it stops what it spawned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _prepare_child(cgroup_procs: list[Path]) -> None:  # runs in the child between fork and exec
    _die_with_parent()
    pid = str(os.getpid()).encode()
    for procs in cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def spawn(
    argv: Sequence[str],
    *,
    log: Path | IO[bytes],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    cgroup_procs: Sequence[Path] = (),
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``argv`` in a new process group with stdout and stderr appended to ``log``; with
    ``cgroup_procs``, the child joins those cgroups (writes its pid into each ``cgroup.procs``) before exec;
    with ``user`` (the caller being root), it runs as that user and its group (for servers that refuse to run
    as root). The user is changed before the parent-death signal is set, which a change of user clears."""
    out: IO[bytes]
    if isinstance(log, Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    else:
        out = log
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if not cgroup_procs else partial(_prepare_child, list(cgroup_procs)),
            user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
        )
    finally:
        if isinstance(log, Path):
            out.close()


# One thread per running child blocks in waitpid(). asyncio.to_thread's default pool has min(32, cpus + 4)
# threads — six on a two-core machine — so waiting there for long-lived pods starved every other to_thread call
# (a new pod's container never left ContainerCreating once six pods ran). Waits get their own, large pool.
_WAITERS = concurrent.futures.ThreadPoolExecutor(max_workers=1024, thread_name_prefix="wait-child")


async def wait(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """``proc.wait(timeout)`` without taking a thread of the default pool; raises ``TimeoutExpired``."""
    return await asyncio.get_running_loop().run_in_executor(_WAITERS, proc.wait, timeout)


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Sends ``sig`` to the process group of ``proc``; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def stop(proc: subprocess.Popen[bytes], *, grace_seconds: float) -> int:
    """SIGTERM, then SIGKILL after ``grace_seconds``; returns the exit status."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await wait(proc, grace_seconds)
    if proc.poll() is None:
        signal_group(proc, signal.SIGKILL)
        await wait(proc)
    # Whatever the group leader left behind goes too.
    signal_group(proc, signal.SIGKILL)
    return proc.returncode


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
