"""Where the pinned Kubernetes binaries are: built by ``hack/kube-binaries.sh`` and cached."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kubelambda import bundle


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path


def repo_root() -> Path:
    """The source checkout this package was installed from, or the wheel's copy of its platform files."""
    return bundle.root()


def ensure_binaries(*, quiet: bool = False) -> Binaries:
    """Builds what is missing (minutes on a cold cache, instant on a warm one) and returns the paths."""
    script = repo_root() / "hack" / "kube-binaries.sh"
    result = subprocess.run(
        ["bash", str(script)],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else sys.stderr,
        text=True,
        env=os.environ.copy(),
    )
    dirs = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    kube, etcd, helm = Path(dirs["KUBE_BIN"]), Path(dirs["ETCD_BIN"]), Path(dirs["HELM_BIN"])
    return Binaries(
        etcd=etcd / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubectl=kube / "kubectl",
        helm=helm / "helm",
    )
