"""A pod's status: phase, conditions and container statuses, written to the API server by one writer task."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from kubelambda.devcluster._pod_base import JSON, PodBase, now_rfc3339
from kubelambda.kube import ApiError, resource_path

logger = logging.getLogger(__name__)


class PodStatus(PodBase):
    def compute_phase(self) -> str:
        if self.phase == "Failed":
            return "Failed"
        if not self.initialized:
            return "Pending"
        states = [c.state for c in self.containers]
        if any("running" in s for s in states):
            return "Running"
        if all("terminated" in s for s in states) and all(c.done.is_set() for c in self.containers):
            codes = [s["terminated"]["exitCode"] for s in states]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if any(c.restart_count > 0 or "terminated" in c.last_state for c in self.containers):
            return "Running"  # between restarts
        return "Pending"

    def status(self) -> JSON:
        phase = self.compute_phase()
        ready = phase == "Running" and all(c.ready for c in self.containers)
        now = now_rfc3339()

        def cond(kind: str, value: bool, reason: str | None = None) -> JSON:
            out: JSON = {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now}
            if not value and reason:
                out["reason"] = reason
            return out

        previous = {c["type"]: c for c in self.pod.get("status", {}).get("conditions", [])}

        def keep_transition(c: JSON) -> JSON:
            old = previous.get(c["type"])
            if old is not None and old.get("status") == c["status"]:
                c["lastTransitionTime"] = old.get("lastTransitionTime", now)
            return c

        conditions = [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", self.initialized, "ContainersNotInitialized"),
            cond("Ready", ready, "ContainersNotReady"),
            cond("ContainersReady", ready, "ContainersNotReady"),
        ]
        status: JSON = {
            "phase": phase,
            "conditions": [keep_transition(c) for c in conditions],
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status(c.spec["image"]) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status(c.spec["image"]) for c in self.init_containers]
        return status

    async def _flush(self) -> None:
        if self.gone:
            return
        meta = self.pod["metadata"]
        path = resource_path(
            "v1", "pods", namespace=meta["namespace"], name=meta["name"], subresource="status"
        )
        status = self.status()
        # A strategic merge patch merges lists keyed by ip: a pod restarted by a new node run (with a new
        # address) would end with two IPs of one family, which the API server refuses. Replace them instead.
        for key in ("podIPs", "hostIPs"):
            status[key] = [*status[key], {"$patch": "replace"}]
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.pod = await self.ctx.kube.patch(path, body, patch_type="strategic")
        except ApiError as e:
            if e.status in (404, 409):
                self.gone = e.status == 404
                return
            raise

    async def _status_writer(self) -> None:
        while not self.gone:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush()
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not update the status of pod %s: %s", self.key, e)
                self._dirty.set()
                await asyncio.sleep(1)
