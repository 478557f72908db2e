"""What every part of a pod runner shares: the node's context, a container's state, and the pod's own state.

The pod runner is split by concern, one module each (as Fission splits its pool manager): the volumes
(:mod:`._pod_volumes`), the probes (:mod:`._pod_probes`), the container processes (:mod:`._pod_processes`),
the status (:mod:`._pod_status`), and the lifecycle that ties them together (:mod:`._pod`). Each is a class
on top of :class:`PodBase`; :class:`~._pod.PodRunner` combines them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kubelambda.devcluster import _images
from kubelambda.devcluster._cgroups import ContainerCgroup, NodeCgroups
from kubelambda.devcluster._podenv import PodFacts
from kubelambda.kube import KubeClient

JSON = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeContext:
    """What every pod runner shares with the node."""

    kube: KubeClient
    node_name: str
    host_ip: str
    root: Path
    api_host: str
    api_port: int
    backoff_seconds: float
    record_event: Callable[[JSON, str, str, str], None]
    probe_http: aiohttp.ClientSession
    cgroups: NodeCgroups | None = None  # None: limits not enforced


@dataclass
class ContainerState:
    spec: JSON
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    cgroup: ContainerCgroup | None = None  # this run's; None when limits are not enforced

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, image: str) -> JSON:
        out: JSON = {
            "name": self.name,
            "image": image,
            "imageID": f"local://{_images.repository(image)}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            out["containerID"] = f"local://{self.proc.pid}"
        return out


class PodBase:
    """The pod's state and the small helpers every concern uses."""

    def __init__(self, ctx: NodeContext, pod: JSON, pod_ip: str) -> None:
        self.ctx = ctx
        self.pod = pod
        self.pod_ip = pod_ip
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.uid = str(meta["uid"])
        self.dir = ctx.root / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [ContainerState(c, init=True) for c in spec.get("initContainers", [])]
        self.containers = [ContainerState(c) for c in spec.get("containers", [])]
        self.initialized = not self.init_containers
        self.phase = "Pending"
        self.start_time = now_rfc3339()
        self.created = time.monotonic()
        self.stopping = asyncio.Event()
        self.gone = False  # the API object no longer exists: stop writing status
        self.address_released = False
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._env_base: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def mark(self) -> None:
        self._dirty.set()

    def facts(self) -> PodFacts:
        return PodFacts(
            pod=self.pod, pod_ip=self.pod_ip, host_ip=self.ctx.host_ip, node_name=self.ctx.node_name
        )

    def rootfs(self, c: ContainerState) -> Path:
        return self.dir / "rootfs" / c.name

    def log_path(self, name: str, *, previous: bool = False) -> Path:
        return self.dir / "logs" / (f"{name}.previous.log" if previous else f"{name}.log")

    async def _wait_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _retry_delay(self, attempt: int) -> float:
        """Retrying what could not start (a volume, a reference): soon at first, because the commonest cause
        is the API server's Node authorizer not yet knowing that a just-bound pod may read its ConfigMap
        (a 403 for a few milliseconds), then backing off like the kubelet (100 ms doubling up to the base)."""
        return min(0.1 * 2.0 ** max(attempt - 1, 0), self.ctx.backoff_seconds)

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
