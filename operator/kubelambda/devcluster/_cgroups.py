"""Memory and CPU limits on the process node: one cgroup per container, as a container runtime makes.

Each container's process group is placed in a cgroup of its own before it execs (``preexec_fn`` writes the
child's pid into ``cgroup.procs``), with the limits its ``resources.limits`` ask for:

- cgroup v1: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, the same value, so swap cannot
  stretch it), ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` and ``cpu.shares`` from the CPU request. The
  node's cgroups nest under the cgroup the node runs in (per hierarchy), so the pods stay inside whatever
  limits the node itself has.
- cgroup v2 (unified): ``memory.max``, ``memory.swap.max = 0``, ``cpu.max`` and ``cpu.weight``, under
  ``/sys/fs/cgroup/kubelambda-…`` (a v2 cgroup that holds processes, like the node's own, cannot hand
  controllers to children).

When the kernel's OOM killer kills a process of the cgroup, its ``oom_kill`` counter (``memory.oom_control``
in v1, ``memory.events`` in v2) goes up: a container that exits on SIGKILL after that is ``OOMKilled``.
The cgroups are recorded in ``<state-dir>/cgroups.json`` and removed when their pod goes, when the node
stops, on the next start after a crash, and by ``dev down``.

Where the hierarchy is not writable (not root, a read-only ``/sys/fs/cgroup``), limits are not enforced:
the node says why, ``dev status`` shows it, and pods run as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RECORD = "cgroups.json"
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # as the kubelet: a smaller quota is refused or starves the container
CONTROLLERS = ("memory", "cpu")


def _cgroup_root() -> Path:
    # An environment override exists for the unit tests, which lay out a fake hierarchy in a temporary folder.
    return Path(os.environ.get("KUBELAMBDA_CGROUP_ROOT", "/sys/fs/cgroup"))


@dataclass(frozen=True)
class Limits:
    """What a container's ``resources`` ask for, in the units cgroups take."""

    memory_bytes: int | None = None
    cpu_quota_us: int | None = None  # per CFS_PERIOD_US
    cpu_shares: int | None = None  # from the CPU request, 2..262144 as the kubelet computes them

    @classmethod
    def from_resources(cls, resources: Mapping[str, Mapping[str, str]] | None) -> Limits:
        from kubelambda.devcluster._podenv import parse_quantity  # lazy: keeps this module light

        limits = (resources or {}).get("limits") or {}
        requests = (resources or {}).get("requests") or {}
        memory = limits.get("memory")
        cpu = limits.get("cpu")
        cpu_request = requests.get("cpu", cpu)
        return cls(
            memory_bytes=math.ceil(parse_quantity(str(memory))) if memory is not None else None,
            cpu_quota_us=(
                max(MIN_CFS_QUOTA_US, math.ceil(parse_quantity(str(cpu)) * CFS_PERIOD_US))
                if cpu is not None
                else None
            ),
            cpu_shares=(
                min(262_144, max(2, int(parse_quantity(str(cpu_request)) * 1024)))
                if cpu_request is not None
                else None
            ),
        )


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def _read_key(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (memory.stat, memory.events, memory.oom_control, cpu.stat)."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


def _read_int(path: Path) -> int:
    try:
        value = path.read_text().strip()
    except OSError:
        return 0
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class MemoryUsage:
    working_set_bytes: int
    rss_bytes: int
    usage_bytes: int


class ContainerCgroup:
    """One container's cgroup: a directory per hierarchy (v1) or a single one (v2)."""

    def __init__(self, version: int, dirs: Mapping[str, Path], *, swap_accounting: bool = False) -> None:
        self.version = version
        self.swap_accounting = swap_accounting  # v1: memory.memsw.* exist (else swap is off or not counted)
        self.dirs = dict(dirs)  # controller -> directory; v2: the same directory for both
        self._oom_kills_at_start = self.oom_kills()

    @property
    def memory_dir(self) -> Path:
        return self.dirs["memory"]

    @property
    def cpu_dir(self) -> Path:
        return self.dirs["cpu"]

    def procs_files(self) -> list[Path]:
        return sorted({d / "cgroup.procs" for d in self.dirs.values()})

    def apply(self, limits: Limits) -> None:
        if self.version == 1:
            if limits.memory_bytes is not None:
                _write(self.memory_dir / "memory.limit_in_bytes", str(limits.memory_bytes))
                if self.swap_accounting:  # memory + swap at the same limit: swap cannot stretch it
                    _write(self.memory_dir / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            if limits.cpu_quota_us is not None:
                _write(self.cpu_dir / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(self.cpu_dir / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
            if limits.cpu_shares is not None:
                _write(self.cpu_dir / "cpu.shares", str(limits.cpu_shares))
            return
        if limits.memory_bytes is not None:
            _write(self.memory_dir / "memory.max", str(limits.memory_bytes))
            swap = self.memory_dir / "memory.swap.max"
            if swap.exists():
                _write(swap, "0")
        if limits.cpu_quota_us is not None:
            _write(self.cpu_dir / "cpu.max", f"{limits.cpu_quota_us} {CFS_PERIOD_US}")
        if limits.cpu_shares is not None:
            # The kubelet's conversion of shares (2..262144) to weight (1..10000).
            weight = 1 + ((limits.cpu_shares - 2) * 9999) // 262142
            _write(self.cpu_dir / "cpu.weight", str(weight))

    def oom_kills(self) -> int:
        if self.version == 1:
            return _read_key(self.memory_dir / "memory.oom_control", "oom_kill")
        return _read_key(self.memory_dir / "memory.events", "oom_kill")

    def oom_killed_since_start(self) -> bool:
        return self.oom_kills() > self._oom_kills_at_start

    def memory(self) -> MemoryUsage:
        """As the kubelet's Summary API: working set = usage - inactive file pages; RSS = anonymous memory."""
        stat = self.memory_dir / "memory.stat"
        if self.version == 1:
            usage = _read_int(self.memory_dir / "memory.usage_in_bytes")
            inactive = _read_key(stat, "total_inactive_file")
            rss = _read_key(stat, "total_rss")
        else:
            usage = _read_int(self.memory_dir / "memory.current")
            inactive = _read_key(stat, "inactive_file")
            rss = _read_key(stat, "anon")
        return MemoryUsage(working_set_bytes=max(0, usage - inactive), rss_bytes=rss, usage_bytes=usage)

    def throttled_periods(self) -> int:
        return _read_key(self.cpu_dir / "cpu.stat", "nr_throttled")

    def pids(self) -> set[int]:
        out: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError):
                out |= {int(p) for p in procs.read_text().split()}
        return out

    def kill_all(self) -> None:
        """SIGKILL whatever is left in the cgroup (a process that left the container's process group)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            _rmdir_tree(d)


def _rmdir_tree(top: Path, *, timeout_seconds: float = 5.0) -> bool:
    """Removes a cgroup directory and its children, deepest first; a cgroup whose last process is still
    exiting refuses with EBUSY for a moment, so this retries. True when it is gone."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if not top.exists():
            return True
        busy = False
        for root, _dirs, _files in os.walk(top, topdown=False):
            procs = Path(root) / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                os.rmdir(root)
            except FileNotFoundError:
                pass
            except OSError:
                busy = True
        if not busy or time.monotonic() > deadline:
            return not top.exists()
        time.sleep(0.05)


def _own_cgroups() -> tuple[int, dict[str, str]]:
    """(version, controller -> the path of this process's cgroup) from ``/proc/self/cgroup``."""
    v1: dict[str, str] = {}
    unified = ""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            unified = path
        for c in controllers.split(","):
            if c:
                v1[c] = path
    if all(c in v1 for c in CONTROLLERS):
        return 1, v1
    return 2, dict.fromkeys(CONTROLLERS, unified)


class NodeCgroups:
    """The node's cgroups: a parent per hierarchy, named after the node and its state folder."""

    def __init__(self, state_dir: Path, node_name: str, *, enabled: bool = True) -> None:
        self.state_dir = state_dir
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
        self.name = f"kubelambda-{node_name}-{digest}"
        self.version = 0
        self.swap_accounting = False
        self.parents: dict[str, Path] = {}
        self.reason = ""
        if not enabled:
            self.reason = "disabled (--limits off)"
            return
        try:
            self._setup()
        except (OSError, ValueError) as e:
            self.parents = {}
            self.reason = f"cgroups are not writable here ({e})"
            logger.warning(
                "Memory and CPU limits are NOT enforced on the local node: %s. Run the node as root with a "
                "writable /sys/fs/cgroup to enforce them.",
                self.reason,
            )

    @property
    def enforced(self) -> bool:
        return bool(self.parents)

    def describe(self) -> str:
        if not self.enforced:
            return f"not enforced: {self.reason}"
        where = ", ".join(str(p) for p in sorted(set(self.parents.values())))
        return f"enforced (cgroup v{self.version}: memory and CPU per container, under {where})"

    def _setup(self) -> None:
        root = _cgroup_root()
        if not root.is_dir():
            raise ValueError(f"{root} does not exist")
        if (root / "cgroup.controllers").exists():
            version, own = 2, dict.fromkeys(CONTROLLERS, "/")
        else:
            version, own = _own_cgroups()
        if version == 1:
            parents = {c: root / c / own[c].lstrip("/") / self.name for c in CONTROLLERS}
            for c in CONTROLLERS:
                if not (root / c).is_dir():
                    raise ValueError(f"no cgroup v1 {c} hierarchy at {root / c}")
            self.swap_accounting = (root / "memory" / "memory.memsw.limit_in_bytes").exists()
        else:
            available = (root / "cgroup.controllers").read_text().split()
            missing = [c for c in CONTROLLERS if c not in available]
            if missing:
                raise ValueError(f"cgroup v2 controllers {missing} are not available at {root}")
            enabled = (root / "cgroup.subtree_control").read_text().split()
            wanted = [f"+{c}" for c in CONTROLLERS if c not in enabled]
            if wanted:
                _write(root / "cgroup.subtree_control", " ".join(wanted))
            parents = dict.fromkeys(CONTROLLERS, root / self.name)
        cleanup_recorded(self.state_dir)  # a crashed earlier run's
        self._record(version, parents)
        for p in parents.values():
            p.mkdir(exist_ok=True)
        if version == 2:
            _write(root / self.name / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))
        self.version, self.parents = version, parents

    def _record(self, version: int, parents: Mapping[str, Path]) -> None:
        record = {"version": version, "parents": {c: str(p) for c, p in parents.items()}}
        (self.state_dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")

    def pod_dirs(self, pod_uid: str) -> dict[str, Path]:
        return {c: p / f"pod{pod_uid}" for c, p in self.parents.items()}

    def create(self, pod_uid: str, container: str, limits: Limits) -> ContainerCgroup | None:
        """A fresh cgroup for one run of a container (an earlier run's is removed first); None when limits
        are not enforced. Raises OSError when the kernel refuses a value."""
        if not self.enforced:
            return None
        dirs: dict[str, Path] = {}
        for controller, pod_dir in self.pod_dirs(pod_uid).items():
            if not pod_dir.is_dir():
                pod_dir.mkdir(exist_ok=True)
                if self.version == 2:
                    _write(pod_dir / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))
            d = pod_dir / container
            _rmdir_tree(d)
            d.mkdir(exist_ok=True)
            dirs[controller] = d
        cgroup = ContainerCgroup(self.version, dirs, swap_accounting=self.swap_accounting)
        cgroup.apply(limits)
        return cgroup

    def remove_pod(self, pod_uid: str) -> None:
        for d in self.pod_dirs(pod_uid).values():
            if not _rmdir_tree(d):
                logger.warning("Could not remove the cgroup %s (processes still in it)", d)

    def close(self) -> None:
        if self.enforced:
            cleanup_recorded(self.state_dir)


def cleanup_recorded(state_dir: Path) -> list[str]:
    """Removes the cgroups a node recorded in ``state_dir`` (killing what is left in them); returns the
    ones that could not be removed."""
    path = state_dir / RECORD
    try:
        recorded = sorted(set(json.loads(path.read_text())["parents"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    left = [p for p in recorded if not _rmdir_tree(Path(p))]
    if not left:
        path.unlink(missing_ok=True)
    return left
