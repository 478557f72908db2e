"""A Trigger's bridge as its own process, for tests that kill and restart it (SIGKILL, like a node losing a pod)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kltest.cluster import Cluster
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.bridge import checkpoint_name

JSON = dict[str, Any]


class BridgeProcess:
    """``python -m kubelambda.bridge --trigger NS/NAME`` with the test cluster's admin kubeconfig, or
    ``kubeconfig`` (e.g. one holding the token of the bridge's ServiceAccount, as its pod authenticates).

    The operator normally runs the bridge as a pod under its own ServiceAccount; tests of a source's delivery
    semantics run it directly so they can SIGKILL it at a chosen moment.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        name: str,
        *,
        gateway_url: str,
        log_dir: Path,
        kubeconfig: Path | None = None,
        **env: str,
    ) -> None:
        self.args = [sys.executable, "-m", "kubelambda.bridge", "--trigger", f"{namespace}/{name}"]
        self.env = {
            **os.environ,
            "KUBELAMBDA_BRIDGE_KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
            "KUBELAMBDA_BRIDGE_GATEWAY_URL": gateway_url,
            "KUBELAMBDA_BRIDGE_PORT": "0",
            "KUBELAMBDA_BRIDGE_STATUS_INTERVAL_SECONDS": "1",
            **env,
        }
        self.log_path = log_dir / f"bridge-{namespace}-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no chance to checkpoint or flush anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (0 when the bridge shut down cleanly)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> BridgeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def checkpoint_written(kube: KubeClient, namespace: str, name: str) -> JSON | None:
    """The checkpoint ConfigMap of a bucket Trigger once its bridge has saved a listing (its first one included),
    else None."""
    found = await kube.get_or_none(
        resource_path("v1", "configmaps", namespace=namespace, name=checkpoint_name(name))
    )
    return found if found and (found.get("data") or {}).get("objects") else None
