"""The local cluster as a test bed: started once per session through ``kubelambda dev serve``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kltest.wait import wait_for
from kubelambda.devcluster import DevState
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.kube import KubeClient, resource_path


def kubectl_bin() -> Path:
    return ensure_binaries(quiet=True).kubectl


@dataclass
class Cluster:
    state_dir: Path
    proc: subprocess.Popen[bytes] | None  # None: a cluster this suite did not start (the kind backend)
    state: DevState
    kubectl_path: Path

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state.kubeconfig)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [str(self.kubectl_path), *args], input=input, capture_output=True, text=True, env=env, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        docs = manifest if isinstance(manifest, list) else [manifest]
        body = {"apiVersion": "v1", "kind": "List", "items": docs}
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.state_dir / "pods" / f"{namespace}_{name}_{uid}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


BACKENDS = ("local", "kind")
"""Cluster backends of the suite, chosen with ``KUBELAMBDA_TEST_BACKEND`` (default ``local``): ``kind`` runs the
same tests against the cluster ``make kind-up`` made (``make e2e``)."""


def backend() -> str:
    chosen = os.environ.get("KUBELAMBDA_TEST_BACKEND", "local")
    if chosen not in BACKENDS:
        raise RuntimeError(f"KUBELAMBDA_TEST_BACKEND={chosen!r}: expected one of {', '.join(BACKENDS)}")
    return chosen


def kind_cluster(state_dir: Path) -> Cluster:
    """The kind cluster ``make kind-up`` created (``$KUBELAMBDA_KIND_CLUSTER``, default kubelambda); fails at once
    without Docker."""
    name = os.environ.get("KUBELAMBDA_KIND_CLUSTER", "kubelambda")
    docker = shutil.which(os.environ.get("DOCKER", "docker"))  # DOCKER: as in mk/chart.mk
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        raise RuntimeError(
            "KUBELAMBDA_TEST_BACKEND=kind needs Docker (no docker command, or its daemon does not answer); "
            "unset it to run the suite on the local cluster"
        )
    kind = shutil.which("kind")
    if kind is None:
        raise RuntimeError(
            "KUBELAMBDA_TEST_BACKEND=kind needs the kind command (make kind-up installs the cluster)"
        )
    config = subprocess.run(
        [kind, "get", "kubeconfig", "--name", name], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "kind.kubeconfig"
    path.write_text(config)
    state = DevState(state="running", pid=0, kubeconfig=str(path), node=f"{name}-control-plane")
    return Cluster(state_dir=state_dir, proc=None, state=state, kubectl_path=kubectl_bin())


def start_cluster(
    state_dir: Path,
    *,
    backoff: float = 1.0,
    timeout: float = 180.0,
    platform: bool = False,
    args: Sequence[str] = (),
) -> Cluster:
    """Starts ``kubelambda dev serve`` (the same path as ``dev up``) and waits until it reports running.
    ``platform`` also starts kubelambda's operator and gateway (the suites usually run their own); ``args`` are
    more options of ``dev serve`` (e.g. ``--substitute-runtimes``).
    With ``KUBELAMBDA_TEST_BACKEND=kind``: the kind cluster instead (:func:`kind_cluster`)."""
    if backend() == "kind":
        return kind_cluster(state_dir)
    kubectl = kubectl_bin()  # builds the binaries first, outside the start-up deadline
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / "serve.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubelambda",
            "dev",
            "serve",
            "--state-dir",
            str(state_dir),
            "--backoff",
            str(backoff),
            *([] if platform else ["--no-platform"]),
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = DevState.read(state_dir)
        if state is not None and state.state == "running" and state.pid == proc.pid:
            return Cluster(state_dir=state_dir, proc=proc, state=state, kubectl_path=kubectl)
        if proc.poll() is not None or (state is not None and state.state == "failed"):
            break
        time.sleep(0.1)
    proc.kill()
    tail = (state_dir / "serve.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the local cluster did not start (state dir {state_dir}):\n{tail}")


async def create_namespace(kube: KubeClient, prefix: str, labels: dict[str, str] | None = None) -> str:
    """A new namespace ``<prefix>-<random>`` (with ``labels``), once pods can be made in it (the admission plugin
    refuses them until the controller-manager has made the namespace's default ServiceAccount)."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": name, "labels": labels or {}}})
    await wait_for(
        lambda: kube.get_or_none(resource_path("v1", "serviceaccounts", namespace=name, name="default")),
        lambda sa: sa is not None,
        what=f"the default ServiceAccount of {name}",
    )
    return name
