"""A Trigger's bridge as its own process, for tests that kill and restart it (SIGKILL, like a node losing a pod)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kltest.cluster import Cluster


class BridgeProcess:
    """``python -m kubelambda.bridge --trigger NS/NAME`` with the test cluster's admin kubeconfig.

    The operator normally runs the bridge as a pod under its own ServiceAccount; tests of a source's delivery
    semantics run it directly so they can SIGKILL it at a chosen moment.
    """

    def __init__(
        self, cluster: Cluster, namespace: str, name: str, *, gateway_url: str, log_dir: Path, **env: str
    ) -> None:
        self.args = [sys.executable, "-m", "kubelambda.bridge", "--trigger", f"{namespace}/{name}"]
        self.env = {
            **os.environ,
            "KUBELAMBDA_BRIDGE_KUBECONFIG": str(cluster.kubeconfig),
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
