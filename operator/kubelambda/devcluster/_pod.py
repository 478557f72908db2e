"""One pod on the local node: its volumes, init containers, containers, probes and status.

A :class:`PodRunner` is the pod's whole life: prepare → init containers in order → containers (each with its
own restart loop and probes) → graceful termination. Every state change marks the status dirty; a single
writer task sends the latest status to the API server, so bursts of changes cost one PATCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

import aiohttp

from kubelambda.devcluster._pod_base import JSON, ContainerState, NodeContext, now_rfc3339
from kubelambda.devcluster._pod_processes import PodProcesses
from kubelambda.devcluster._pod_status import PodStatus
from kubelambda.devcluster._process import stop
from kubelambda.kube import ApiError, resource_path

__all__ = ["ContainerState", "NodeContext", "PodRunner", "now_rfc3339"]

logger = logging.getLogger(__name__)


class PodRunner(PodProcesses, PodStatus):
    """The pod's whole life; each concern lives in its own base class."""

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_writer(), name=f"status {self.key}"))
        self._tasks.append(asyncio.create_task(self._run(), name=f"pod {self.key}"))
        self.mark()

    def update(self, pod: JSON) -> None:
        self.pod = pod

    async def _run(self) -> None:
        try:
            await self._prepare()
            for c in self.init_containers:
                ok = await self._run_to_completion(c)
                if not ok:
                    return
            self.initialized = True
            self.mark()
            await asyncio.gather(*(self._container_loop(c) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Pod %s failed on the local node", self.key)
            raise

    # ---- termination ----------------------------------------------------------------------------------
    async def terminate(self) -> None:
        """Stops every container (SIGTERM, then SIGKILL after the grace period) and reports them terminated."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        grace = self._grace()
        running = [c for c in self.init_containers + self.containers if c.proc and c.proc.poll() is None]
        for c in running:
            self.ctx.record_event(self.pod, "Normal", "Killing", f"Stopping container {c.name}")
        await asyncio.gather(*(stop(c.proc, grace_seconds=grace) for c in running if c.proc))
        # The container loops see their processes exit and record the terminated states; what still waits
        # (a back-off, a volume that cannot be written) is cancelled.
        run = self._tasks[1:]
        if run:
            _, pending = await asyncio.wait(run, timeout=5)
            for task in pending:
                task.cancel()
        for c in self.containers:
            for task in c.probe_tasks:
                task.cancel()
            c.ready = False
        self.mark()

    async def report_stopped(self) -> None:
        """Writes the terminated status at once: a node that stops closes its pods right after terminating them,
        which would cancel the status writer before it wrote (the next start then took the pods for running)."""
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            await self._flush()

    async def finish_deletion(self) -> None:
        """After termination: the final status, then the pod object's removal (the kubelet's last word)."""
        await self.terminate()
        await self._flush()
        meta = self.pod["metadata"]
        path = resource_path("v1", "pods", namespace=meta["namespace"], name=meta["name"])
        with contextlib.suppress(ApiError):
            await self.ctx.kube.delete(path, grace_period_seconds=0, uid=self.uid)
        self.gone = True
        await self.close()

    async def close(self) -> None:
        self.gone = True
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        for c in self.init_containers + self.containers:
            for task in c.probe_tasks:
                task.cancel()
            if c.proc is not None and c.proc.poll() is None:
                await stop(c.proc, grace_seconds=0)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ctx.cgroups is not None and self.ctx.cgroups.enforced:
            await asyncio.to_thread(self.ctx.cgroups.remove_pod, self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)
