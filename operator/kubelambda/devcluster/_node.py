"""The local node: a Node object with a Lease heartbeat, whose pods run as local processes.

It watches the pods bound to it (``spec.nodeName``), gives each its own loopback address, runs it through
a :class:`PodRunner`, and serves the kubelet endpoint the API server uses for logs and stats.
Its credentials are a ``system:node:<name>`` client certificate: the API server's Node authorizer and the
NodeRestriction admission plugin limit it exactly as they limit a real kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import platform
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

import kubelambda
from kubelambda.devcluster._cgroups import NodeCgroups
from kubelambda.devcluster._kubelet import build_app, server_ssl
from kubelambda.devcluster._network import PodAddresses
from kubelambda.devcluster._pod import NodeContext, PodRunner, now_rfc3339
from kubelambda.devcluster._ports import free_port, retry_taken_ports
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, list_and_watch, resource_path

logger = logging.getLogger(__name__)

LEASE_SECONDS = 40
RENEW_SECONDS = 10.0
STATUS_SECONDS = 60.0
MAX_PODS = 250
TERMINAL_PHASES = ("Succeeded", "Failed")


class LocalNode:
    def __init__(
        self,
        *,
        kubeconfig: Path,
        state_dir: Path,
        node_name: str,
        kube_version: str,
        serving_cert: Path,
        serving_key: Path,
        ca: Path,
        api_host: str,
        api_port: int,
        backoff_seconds: float = 10.0,
        kubelet_port: int | None = None,
        addresses: PodAddresses,
        node_ip: str,
        limits: str = "auto",
        memory_mb: int | None = None,
        cpus: int | None = None,
    ) -> None:
        """``limits``: ``auto`` enforces each container's memory and CPU limits with cgroups when the
        hierarchy is writable (else warns and runs without); ``off`` never does. ``memory_mb``: the memory the
        node offers pods (capacity and allocatable), default the machine's; ``cpus`` likewise."""
        if limits not in ("auto", "off"):
            raise ValueError(f"limits must be auto or off, not {limits!r}")
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.name = node_name
        self.kube_version = kube_version
        self.serving = (serving_cert, serving_key, ca)
        self.api_host = api_host
        self.api_port = api_port
        self.backoff_seconds = backoff_seconds
        self._fixed_kubelet_port = kubelet_port
        self.kubelet_port = kubelet_port or free_port()
        self.runners: dict[str, PodRunner] = {}
        self.addresses = addresses
        self.node_ip = node_ip
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._kube: KubeClient | None = None
        self._web: web.AppRunner | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._node_uid = ""
        self._started = time.monotonic()
        self.limits = limits
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.cgroups: NodeCgroups | None = None

    @property
    def kube(self) -> KubeClient:
        assert self._kube is not None, "LocalNode.start() first"
        return self._kube

    async def start(self) -> None:
        self._kube = KubeClient.from_kubeconfig(self.kubeconfig)
        self._probe_http = aiohttp.ClientSession()
        pods_dir = self.state_dir / "pods"
        # Processes of an earlier run are gone (they die with their parent): start from clean folders.
        shutil.rmtree(pods_dir, ignore_errors=True)
        pods_dir.mkdir(parents=True)
        self.cgroups = await asyncio.to_thread(
            NodeCgroups, self.state_dir, self.name, enabled=self.limits != "off"
        )
        self.ctx = NodeContext(
            kube=self.kube,
            node_name=self.name,
            host_ip=self.node_ip,
            root=pods_dir,
            api_host=self.api_host,
            api_port=self.api_port,
            backoff_seconds=self.backoff_seconds,
            record_event=self.record_event,
            probe_http=self._probe_http,
            cgroups=self.cgroups,
        )
        app = build_app(self.name, lambda: self.runners)
        self._web = web.AppRunner(app, access_log=None)
        await self._web.setup()
        web_runner = self._web
        tries = 0

        async def listen() -> None:
            nonlocal tries
            tries += 1
            if tries > 1 and not self._fixed_kubelet_port:
                self.kubelet_port = free_port()
            site = web.TCPSite(
                web_runner, self.node_ip, self.kubelet_port, ssl_context=server_ssl(*self.serving)
            )
            try:
                await site.start()
            except OSError:
                await site.stop()
                raise

        await retry_taken_ports(listen, what="the kubelet endpoint")
        await self._register()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name="node lease"),
            asyncio.create_task(self._status_loop(), name="node status"),
            asyncio.create_task(self._watch_pods(), name="pod watch"),
        ]
        logger.info("Registered node %s (kubelet endpoint %s:%d)", self.name, self.node_ip, self.kubelet_port)

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Shutting the node down ends its pods quickly; their API objects stay for the next start.
        for runner in list(self.runners.values()):
            runner.pod["metadata"]["deletionGracePeriodSeconds"] = min(runner._grace(), grace_seconds)
        try:
            await asyncio.gather(*(r.terminate() for r in self.runners.values()), return_exceptions=True)
            await asyncio.gather(*(r.report_stopped() for r in self.runners.values()), return_exceptions=True)
            await asyncio.gather(*(r.close() for r in self.runners.values()), return_exceptions=True)
            self.runners.clear()
        finally:
            await self.addresses.release_all()
            if self.cgroups is not None:
                await asyncio.to_thread(self.cgroups.close)
        if self._web is not None:
            await self._web.cleanup()
        if self._probe_http is not None:
            await self._probe_http.close()
        if self._kube is not None:
            with contextlib.suppress(Exception):
                await self._set_ready(False, "KubeletStopped", "the local node was stopped")
            await self._kube.close()

    # ---- the Node object ------------------------------------------------------------------------------

    def _node_status(self, *, ready: bool = True, reason: str = "KubeletReady", message: str = "") -> JSON:
        now = now_rfc3339()
        memory = psutil.virtual_memory().total if self.memory_mb is None else self.memory_mb * 1024 * 1024
        disk = shutil.disk_usage(self.state_dir).total
        resources = {
            "cpu": str(self.cpus or os.cpu_count() or 1),
            "memory": f"{memory // 1024}Ki",
            "pods": str(MAX_PODS),
            "ephemeral-storage": f"{disk // 1024}Ki",
        }

        def condition(kind: str, status: bool, why: str, text: str) -> JSON:
            return {
                "type": kind,
                "status": "True" if status else "False",
                "reason": why,
                "message": text,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition(
                    "MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory"
                ),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition(
                    "PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                condition("Ready", ready, reason, message or "kubelambda local node is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": _machine_id(),
                "systemUUID": _machine_id(),
                "bootID": _boot_id(),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": f"kubelambda-local://{kubelambda.__version__}",
                "kubeletVersion": self.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    platform.machine(), platform.machine()
                ),
            },
        }

    async def _register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": self._node_status()["nodeInfo"]["architecture"],
                    "kubelambda.io/local-node": "true",
                },
            },
        }
        path = resource_path("v1", "nodes")
        try:
            node = await self.kube.create(path, body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.kube.get(resource_path("v1", "nodes", name=self.name))
        self._node_uid = node["metadata"]["uid"]
        await self._set_ready(True, "KubeletReady", "")
        await self._renew_lease()

    async def _set_ready(self, ready: bool, reason: str, message: str) -> None:
        path = resource_path("v1", "nodes", name=self.name, subresource="status")
        await self.kube.patch(
            path,
            {"status": self._node_status(ready=ready, reason=reason, message=message)},
            patch_type="strategic",
        )

    async def _renew_lease(self) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        path = resource_path("coordination.k8s.io/v1", "leases", namespace="kube-node-lease", name=self.name)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._node_uid}
                ],
            },
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
        }
        existing = await self.kube.get_or_none(path)
        if existing is None:
            await self.kube.create(
                resource_path("coordination.k8s.io/v1", "leases", namespace="kube-node-lease"), lease
            )
        else:
            await self.kube.patch(path, {"spec": {"renewTime": now, "holderIdentity": self.name}})

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self._renew_lease()
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not renew the lease of node %s: %s", self.name, e)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            try:
                await self._set_ready(True, "KubeletReady", "")
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not update the status of node %s: %s", self.name, e)

    # ---- pods -----------------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        first = True

        async def on_list(pods: list[JSON]) -> None:
            nonlocal first
            seen = set()
            for pod in pods:
                seen.add(pod["metadata"]["uid"])
                if first and left_by_a_stop(pod):
                    self._spawn(self._delete_now(pod))
                    continue
                await self._on_pod("MODIFIED", pod)
            if first:
                left = sum(1 for pod in pods if left_by_a_stop(pod))
                if left:
                    logger.info(
                        "Removed %d pods the last run left terminated (their controllers replace them)", left
                    )
            first = False
            for uid in set(self.runners) - seen:
                await self._on_pod("DELETED", self.runners[uid].pod)

        await list_and_watch(
            self.kube,
            resource_path("v1", "pods"),
            params={"fieldSelector": f"spec.nodeName={self.name}"},
            on_list=on_list,
            on_event=self._on_pod,
        )

    async def _on_pod(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                del self.runners[uid]
                self._spawn(self._close(runner))
            return
        if runner is None:
            if pod.get("status", {}).get("phase") in TERMINAL_PHASES or pod["metadata"].get(
                "deletionTimestamp"
            ):
                if pod["metadata"].get("deletionTimestamp"):
                    # Nothing runs for it here: finish the deletion the API server is waiting for.
                    self._spawn(self._delete_now(pod))
                return
            runner = PodRunner(self.ctx, pod, await self.addresses.take())
            self.runners[uid] = runner
            runner.start()
            return
        runner.update(pod)
        if pod["metadata"].get("deletionTimestamp") and not runner.stopping.is_set():
            self._spawn(self._finish(runner))

    async def _finish(self, runner: PodRunner) -> None:
        await runner.finish_deletion()
        uid = runner.uid
        if self.runners.get(uid) is runner:
            del self.runners[uid]
        await self._release(runner)

    async def _close(self, runner: PodRunner) -> None:
        await runner.close()
        await self._release(runner)

    async def _release(self, runner: PodRunner) -> None:
        # Both the deletion path and the DELETED watch event end a runner; its address is freed once.
        if not runner.address_released:
            runner.address_released = True
            await self.addresses.release(runner.pod_ip)

    async def _delete_now(self, pod: JSON) -> None:
        meta = pod["metadata"]
        path = resource_path("v1", "pods", namespace=meta["namespace"], name=meta["name"])
        with contextlib.suppress(ApiError):
            await self.kube.delete(path, grace_period_seconds=0, uid=meta["uid"])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def record_event(self, pod: JSON, kind: str, reason: str, message: str) -> None:
        """Fire-and-forget core/v1 Event about ``pod``, as the kubelet writes them."""
        meta = pod["metadata"]
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        async def send() -> None:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.kube.create(resource_path("v1", "events", namespace=meta["namespace"]), event)

        self._spawn(send())


def left_by_a_stop(pod: JSON) -> bool:
    """A pod of a ReplicaSet (restartPolicy Always) that is Succeeded or Failed: only a stop of the node ends
    one so. Its ReplicaSet has made a replacement, so it is only a ghost in ``kubectl get pods`` (and its
    address may be another pod's now): the node removes it when it starts."""
    if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
        return False
    if (pod.get("spec") or {}).get("restartPolicy", "Always") != "Always":
        return False
    owners = pod["metadata"].get("ownerReferences") or []
    return any(o.get("controller") and o.get("kind") == "ReplicaSet" for o in owners)


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip()
    return "kubelambda-local"


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()
