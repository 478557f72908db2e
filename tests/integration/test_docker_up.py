"""hack/docker-up.sh, which `make images` and the e2e suite's `make -j` targets call to have a Docker daemon: on a
machine without one, callers started at once all return once one daemon answers, and the daemon it starts holds
none of their locks (it did: dockerd inherited the script's lock on docker-up.lock, so a second caller that found
the daemon not yet answering waited on `flock` for as long as the daemon lived, and CI ran out of time).

Each test starts a daemon of its own (its own socket, data and exec roots, no bridge or iptables rules) beside any
the machine runs, through the script's DOCKERD_FLAGS, and stops it at the end. It runs in a network namespace of its
own: a daemon started with `--bridge=none` deletes the host's docker0 (the machine's daemon then fails every build
step that needs a network: the e2e suite's `make images` did, after this test ran beside it)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelambda.devcluster._process import alive

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "docker-up.sh"


@dataclass
class Daemon:
    env: dict[str, str]
    cache: Path
    pidfile: Path
    log: Path

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    async def up(self, *, prefix: str = "") -> tuple[int, str]:
        """Runs the script (under `prefix`, a shell line it is appended to), bounded: (exit status, its stderr)."""
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f'{prefix} exec unshare --net bash "{SCRIPT}"',
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(process.communicate(), 90)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(
                f"docker-up.sh did not return within 90 s; dockerd's log:\n{self.log.read_text()[-3000:]}"
            )
        return process.returncode or 0, err.decode()

    async def up_at_once(self, *prefixes: str) -> str:
        """Runs the script once per prefix, all at once; each must succeed. Their stderr, joined."""
        results = await asyncio.gather(*(self.up(prefix=prefix) for prefix in prefixes))
        for status, err in results:
            assert status == 0, err
        return "".join(err for _, err in results)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.fail(
            "these tests start a Docker daemon: they need root and dockerd (Debian: docker.io; .ci/run installs it)"
        )
    # Short: containerd's sockets under the exec root must fit a socket path's 108 bytes (pytest's tmp_path under
    # xdist may not leave room).
    run = Path(tempfile.mkdtemp(prefix="kl-dockerd-"))
    sock = run / "docker.sock"
    flags = [
        f"--host=unix://{sock}",
        f"--data-root={tmp_path / 'data'}",
        f"--exec-root={run / 'exec'}",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
    ]
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKERD_FLAGS": " ".join(flags),
        "DOCKERD_PIDFILE": str(run / "docker.pid"),
        "DOCKERD_LOG": str(tmp_path / "dockerd.log"),
        "KUBELAMBDA_CACHE": str(tmp_path / "cache"),
    }
    started = Daemon(env, tmp_path / "cache", run / "docker.pid", tmp_path / "dockerd.log")
    host_bridge = Path("/sys/class/net/docker0")
    had_bridge = host_bridge.exists()
    try:
        yield started
        assert host_bridge.exists() == had_bridge, "the test's daemon removed the machine's docker0"
    finally:
        if started.pidfile.exists():
            pid = started.pid()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)
        shutil.rmtree(run, ignore_errors=True)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def locks_held_by(pid: int) -> list[str]:
    """The lock files (``*.lock``) the process has open."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a descriptor closed meanwhile
            target = os.readlink(fd)
            if target.endswith(".lock"):
                held.append(target)
    return held


def free(lock: Path) -> bool:
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


async def test_callers_at_once_all_return_and_the_daemon_holds_none_of_their_locks(daemon: Daemon) -> None:
    # A caller holding a lock of its own on fd 7, as make's recipes and hack/images.sh may.
    theirs = daemon.cache.parent / "callers.lock"
    said = await daemon.up_at_once(f'exec 7>"{theirs}"; flock 7;', "", "", "")
    assert said.count("starting dockerd") == 1, said

    locks = locks_held_by(daemon.pid())
    assert not locks, f"dockerd holds {locks}"
    assert free(daemon.cache / "docker-up.lock")
    assert free(theirs)

    # And a later caller finds it answering at once.
    status, err = await daemon.up()
    assert (status, err.strip()) == (0, "docker-up: the Docker daemon answers")


async def test_callers_at_once_after_the_daemon_stopped_start_one_new_one(daemon: Daemon) -> None:
    status, err = await daemon.up()
    assert status == 0, err
    first = daemon.pid()
    os.kill(first, signal.SIGTERM)
    await asyncio.to_thread(_wait_gone, first)

    said = await daemon.up_at_once("", "", "")
    assert said.count("starting dockerd") == 1, said
    assert daemon.pid() != first
    assert not locks_held_by(daemon.pid())
    assert free(daemon.cache / "docker-up.lock")
