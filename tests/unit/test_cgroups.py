"""The process node's cgroup settings: what a container's resources become, and what is written where.

The hierarchies here are folders laid out like /sys/fs/cgroup (v1 and v2), so both layouts are checked on any
machine; tests/integration/test_limits.py checks the real kernel's enforcement.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubelambda.devcluster._cgroups import Limits, NodeCgroups, _own_cgroups
from kubelambda.devcluster._podenv import ConfigError

MiB = 2**20


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        # A 128 MB Function: CPU proportional to memory (73m), request a fraction of it.
        (
            {"limits": {"memory": "128Mi", "cpu": "73m"}, "requests": {"cpu": "37m"}},
            Limits(memory_bytes=128 * MiB, cpu_quota_us=7_300, cpu_shares=37),
        ),
        ({"limits": {"cpu": "2"}}, Limits(cpu_quota_us=200_000, cpu_shares=2048)),
        # The kubelet's floors: a quota of at least 1 ms per period, shares of at least 2.
        ({"limits": {"cpu": "1m"}}, Limits(cpu_quota_us=1_000, cpu_shares=2)),
        ({"limits": {"memory": "1G"}}, Limits(memory_bytes=10**9)),
        ({"requests": {"cpu": "500m", "memory": "64Mi"}}, Limits(cpu_shares=512)),
        ({}, Limits()),
        (None, Limits()),
    ],
)
def test_limits_from_resources(resources: dict[str, dict[str, str]] | None, expected: Limits) -> None:
    assert Limits.from_resources(resources) == expected


def test_a_bad_quantity_names_the_value() -> None:
    with pytest.raises(ConfigError, match="'lots'"):
        Limits.from_resources({"limits": {"memory": "lots"}})


def test_cgroup_v2_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    monkeypatch.setenv("KUBELAMBDA_CGROUP_ROOT", str(root))
    state = tmp_path / "state"
    state.mkdir()
    node = NodeCgroups(state, "n1")
    assert node.enforced, node.reason
    assert node.version == 2
    parent = node.parents["memory"]
    assert parent == node.parents["cpu"]
    assert parent.parent == root
    assert parent.name.startswith("kubelambda-n1-")
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +cpu"

    c = node.create("uid1", "main", Limits(memory_bytes=128 * MiB, cpu_quota_us=7_300, cpu_shares=37))
    assert c is not None
    d = parent / "poduid1" / "main"
    assert c.memory_dir == c.cpu_dir == d
    assert (d / "memory.max").read_text() == str(128 * MiB)
    assert (d / "cpu.max").read_text() == "7300 100000"
    assert (d / "cpu.weight").read_text() == str(1 + (35 * 9999) // 262142)
    assert (parent / "poduid1" / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert c.procs_files() == [d / "cgroup.procs"]
    assert "enforced (cgroup v2" in node.describe()


def test_cgroup_v1_layout_nests_under_the_nodes_own_cgroups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    _, own = _own_cgroups()
    for controller in ("memory", "cpu"):
        (root / controller / own[controller].lstrip("/")).mkdir(parents=True)
    (root / "memory" / "memory.memsw.limit_in_bytes").write_text("")  # the kernel counts swap
    monkeypatch.setenv("KUBELAMBDA_CGROUP_ROOT", str(root))
    state = tmp_path / "state"
    state.mkdir()
    node = NodeCgroups(state, "n1")
    if _own_cgroups()[0] != 1:
        # On a cgroup v2 machine /proc/self/cgroup names one unified path: the v1 layout cannot be laid out.
        assert not node.enforced
        return
    assert node.enforced, node.reason
    for controller in ("memory", "cpu"):
        assert node.parents[controller].parent == root / controller / own[controller].lstrip("/")
    assert node.swap_accounting
    c = node.create("uid1", "main", Limits(memory_bytes=64 * MiB, cpu_quota_us=10_000, cpu_shares=102))
    assert c is not None
    assert (c.memory_dir / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    assert (c.memory_dir / "memory.memsw.limit_in_bytes").read_text() == str(64 * MiB)
    assert (c.cpu_dir / "cpu.cfs_period_us").read_text() == "100000"
    assert (c.cpu_dir / "cpu.cfs_quota_us").read_text() == "10000"
    assert (c.cpu_dir / "cpu.shares").read_text() == "102"
    assert sorted(c.procs_files()) == sorted({c.memory_dir / "cgroup.procs", c.cpu_dir / "cgroup.procs"})


def test_no_writable_hierarchy_means_limits_are_not_enforced_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBELAMBDA_CGROUP_ROOT", str(tmp_path / "absent"))
    node = NodeCgroups(tmp_path, "n1")
    assert not node.enforced
    assert node.describe().startswith("not enforced: cgroups are not writable here")
    assert node.create("uid1", "main", Limits(memory_bytes=MiB)) is None
    off = NodeCgroups(tmp_path, "n1", enabled=False)
    assert off.describe() == "not enforced: disabled (--limits off)"
