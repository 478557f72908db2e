"""One pod on the local node: its volumes, init containers, containers, probes and status.

A :class:`PodRunner` is the pod's whole life: prepare → init containers in order → containers (each with its
own restart loop and probes) → graceful termination. Every state change marks the status dirty; a single
writer task sends the latest status to the API server, so bursts of changes cost one PATCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from kubelambda.devcluster import _images
from kubelambda.devcluster._podenv import (
    ConfigError,
    ObjectCache,
    PodFacts,
    container_env,
    expand,
    materialize_volume,
)
from kubelambda.devcluster._process import spawn, stop
from kubelambda.devcluster._process import wait as wait_child
from kubelambda.kube import ApiError, KubeClient, resource_path

logger = logging.getLogger(__name__)
JSON = dict[str, Any]

MAX_BACKOFF_SECONDS = 300.0
# A container that ran this long without failing has its crash-loop back-off reset (as the kubelet does).
BACKOFF_RESET_SECONDS = 600.0


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


class PodRunner:
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

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_writer(), name=f"status {self.key}"))
        self._tasks.append(asyncio.create_task(self._run(), name=f"pod {self.key}"))
        self.mark()

    def update(self, pod: JSON) -> None:
        self.pod = pod

    def mark(self) -> None:
        self._dirty.set()

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

    async def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        meta = self.pod["metadata"]
        self._env_base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
            "HOSTNAME": meta["name"],
            "KUBERNETES_SERVICE_HOST": self.ctx.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.ctx.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ctx.api_port),
            "KUBELAMBDA_POD_IP": self.pod_ip,
            "KUBELAMBDA_NODE_NAME": self.ctx.node_name,
        }
        attempt = 0
        while not self.stopping.is_set():
            try:
                await self._materialize_volumes()
                return
            except (ConfigError, ApiError, aiohttp.ClientError, TimeoutError) as e:
                # An API error here is usually passing (the Node authorizer refuses a token or a ConfigMap of a
                # pod bound a moment ago; a slow API server): report it and try again, never give the pod up.
                reason = "CreateContainerConfigError" if isinstance(e, ConfigError) else "ContainerCreating"
                for c in self.init_containers + self.containers:
                    c.state = {"waiting": {"reason": reason, "message": str(e)}}
                self.ctx.record_event(self.pod, "Warning", "FailedMount", f"MountVolume failed: {e}")
                self.mark()
                attempt += 1
                await self._wait_stopping(self._retry_delay(attempt))
        raise asyncio.CancelledError

    async def _materialize_volumes(self) -> None:
        objects = ObjectCache(self.ctx.kube, self.pod["metadata"]["namespace"])
        facts = self.facts()
        volumes = self.dir / "volumes"
        for volume in self.pod["spec"].get("volumes", []):
            target = volumes / volume["name"]
            if target.is_symlink():
                target.unlink()
            elif target.exists() and "emptyDir" not in volume:
                shutil.rmtree(target)
            await materialize_volume(volume, target, facts=facts, objects=objects, kube=self.ctx.kube)
        for c in self.init_containers + self.containers:
            rootfs = self.rootfs(c)
            if rootfs.exists():
                shutil.rmtree(rootfs)
            (rootfs / "tmp").mkdir(parents=True)
            for mount in c.spec.get("volumeMounts", []):
                source = volumes / mount["name"]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                    if not source.exists():
                        source.mkdir(parents=True)
                if not (volumes / mount["name"]).exists():
                    raise ConfigError(f"container {c.name!r} mounts unknown volume {mount['name']!r}")
                target = rootfs / mount["mountPath"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                target.symlink_to(source.resolve())

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

    # ---- containers -----------------------------------------------------------------------------------

    async def _launch(self, c: ContainerState) -> bool:
        """Starts the container's process; False when it cannot start (state says why)."""
        try:
            env = await container_env(
                c.spec,
                facts=self.facts(),
                objects=ObjectCache(self.ctx.kube, self.pod["metadata"]["namespace"]),
                base={**self._env_base, "KUBELAMBDA_ROOTFS": str(self.rootfs(c))},
            )
            command = [expand(a, env) for a in c.spec.get("command", [])]
            args = [expand(a, env) for a in c.spec.get("args", [])]
            # In a thread: a runtime image's entrypoint may build the agent once (a cached Go build).
            argv = await asyncio.to_thread(
                _images.container_argv, c.spec["image"], command or None, args or None, env=env
            )
        except _images.NotRunnable as e:
            c.state = {"waiting": {"reason": e.reason, "message": e.message}}
            self.ctx.record_event(self.pod, "Warning", "Failed", f"Error: {e.reason}: {e.message}")
            self.mark()
            return False
        except (ConfigError, ApiError, aiohttp.ClientError, TimeoutError) as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self.ctx.record_event(self.pod, "Warning", "Failed", f"Error: {e}")
            self.mark()
            return False
        cwd = self.rootfs(c)
        # A restarted container starts from a fresh writable layer; volumes keep their content.
        shutil.rmtree(cwd / "tmp", ignore_errors=True)
        (cwd / "tmp").mkdir(parents=True, exist_ok=True)
        if c.spec.get("workingDir"):
            cwd = cwd / c.spec["workingDir"].lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        log = self.log_path(c.name)
        if log.exists() and c.restart_count > 0:
            log.replace(self.log_path(c.name, previous=True))
        try:
            c.proc = spawn(argv, log=log, env=env, cwd=cwd)
        except OSError as e:
            c.state = {"waiting": {"reason": "RunContainerError", "message": str(e)}}
            self.mark()
            return False
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.exit_code = None
        self.timings.setdefault("process_started", time.monotonic() - self.created)
        self.ctx.record_event(self.pod, "Normal", "Started", f"Started container {c.name} (pid {c.proc.pid})")
        logger.info("Started container %s of pod %s as pid %d: %s", c.name, self.key, c.proc.pid, argv)
        self.mark()
        return True

    async def _wait_exit(self, c: ContainerState) -> int:
        assert c.proc is not None
        code = await wait_child(c.proc)
        # A process killed by a signal reports 128 + signal, as container runtimes do.
        exit_code = 128 - code if code < 0 else code
        started = c.state.get("running", {}).get("startedAt", now_rfc3339())
        reason = "Completed" if exit_code == 0 else "Error"
        c.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now_rfc3339(),
                "containerID": f"local://{c.proc.pid}",
            }
        }
        if exit_code >= 128 and exit_code - 128 in (signal.SIGKILL, signal.SIGTERM):
            c.state["terminated"]["signal"] = exit_code - 128
        c.exit_code = exit_code
        c.ready = False
        c.started = False
        self.mark()
        return exit_code

    def _should_restart(self, exit_code: int) -> bool:
        if self.stopping.is_set():
            return False
        if self.restart_policy == "Always":
            return True
        if self.restart_policy == "OnFailure":
            return exit_code != 0
        return False

    def _retry_delay(self, attempt: int) -> float:
        """Retrying what could not start (a volume, a reference): soon at first, because the commonest cause
        is the API server's Node authorizer not yet knowing that a just-bound pod may read its ConfigMap
        (a 403 for a few milliseconds), then backing off like the kubelet (100 ms doubling up to the base)."""
        return min(0.1 * 2.0 ** max(attempt - 1, 0), self.ctx.backoff_seconds)

    def _backoff_delay(self, failures: int) -> float:
        """The kubelet's crash-loop back-off: base, doubling per consecutive failure, capped at 5 minutes."""
        return min(self.ctx.backoff_seconds * 2.0 ** max(failures - 1, 0), MAX_BACKOFF_SECONDS)

    async def _backoff(self, c: ContainerState, failures: int) -> None:
        delay = self._backoff_delay(failures)
        c.last_state = c.state
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container={c.name} pod={self.pod['metadata']['name']}",
            }
        }
        self.ctx.record_event(
            self.pod, "Warning", "BackOff", f"Back-off restarting failed container {c.name}"
        )
        self.mark()
        await self._wait_stopping(delay)

    async def _run_to_completion(self, c: ContainerState) -> bool:
        """An init container: True once it exits 0; False if the pod fails or stops."""
        failures = 0
        while not self.stopping.is_set():
            if not await self._launch(c):
                failures += 1
                await self._wait_stopping(self._retry_delay(failures))
                continue
            code = await self._wait_exit(c)
            if code == 0:
                c.done.set()
                return True
            if self.restart_policy == "Never":
                self.phase = "Failed"
                self.mark()
                return False
            failures += 1
            c.restart_count += 1
            await self._backoff(c, failures)
        return False

    async def _container_loop(self, c: ContainerState) -> None:
        failures = 0
        while not self.stopping.is_set():
            if not await self._launch(c):
                failures += 1
                await self._wait_stopping(self._retry_delay(failures))
                continue
            launched = time.monotonic()
            c.probe_tasks = self._start_probes(c)
            code = await self._wait_exit(c)
            for task in c.probe_tasks:
                task.cancel()
            if not self._should_restart(code):
                c.done.set()
                self.mark()
                return
            failures = 1 if time.monotonic() - launched > BACKOFF_RESET_SECONDS else failures + 1
            c.restart_count += 1
            await self._backoff(c, failures)

    # ---- probes ---------------------------------------------------------------------------------------

    def _start_probes(self, c: ContainerState) -> list[asyncio.Task[None]]:
        spec = c.spec
        startup, readiness, liveness = (
            spec.get("startupProbe"),
            spec.get("readinessProbe"),
            spec.get("livenessProbe"),
        )
        c.started = startup is None
        c.ready = readiness is None and startup is None
        if c.ready:
            self.timings.setdefault("ready", time.monotonic() - self.created)
        tasks = [asyncio.create_task(self._probe_loop(c, startup, "startup"))] if startup else []
        if readiness:
            tasks.append(asyncio.create_task(self._probe_loop(c, readiness, "readiness")))
        if liveness:
            tasks.append(asyncio.create_task(self._probe_loop(c, liveness, "liveness")))
        return tasks

    async def _probe_loop(self, c: ContainerState, probe: JSON, kind: str) -> None:
        period = float(probe.get("periodSeconds", 10))
        success_threshold = int(probe.get("successThreshold", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        if kind != "startup":
            while not c.started:  # noqa: ASYNC110 - `started` flips from the startup probe's own task
                await asyncio.sleep(0.05)
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            ok, detail = await self._probe_once(c, probe)
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                self.ctx.record_event(
                    self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {detail}"
                )
            if kind == "startup":
                if successes >= 1:
                    c.started = True
                    c.ready = c.spec.get("readinessProbe") is None
                    self.mark()
                    return
                if failures >= failure_threshold:
                    await self._kill_unhealthy(c, f"failed startup probe: {detail}")
                    return
            elif kind == "readiness":
                if successes >= success_threshold and not c.ready:
                    c.ready = True
                    self.timings.setdefault("ready", time.monotonic() - self.created)
                    self.mark()
                elif failures >= failure_threshold and c.ready:
                    c.ready = False
                    self.mark()
            elif failures >= failure_threshold:
                await self._kill_unhealthy(c, f"failed liveness probe: {detail}")
                return
            # Until the first success, readiness is probed quickly so a new pod becomes Ready promptly.
            await asyncio.sleep(min(period, 0.1) if kind != "liveness" and successes == 0 else period)

    async def _kill_unhealthy(self, c: ContainerState, why: str) -> None:
        self.ctx.record_event(self.pod, "Normal", "Killing", f"Container {c.name} {why}, will be restarted")
        if c.proc is not None:
            await stop(c.proc, grace_seconds=self._grace())

    async def _probe_once(self, c: ContainerState, probe: JSON) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                return await self._probe_http(c, probe["httpGet"], timeout)
            if "tcpSocket" in probe:
                port = self._port(c, probe["tcpSocket"]["port"])
                host = probe["tcpSocket"].get("host") or self.pod_ip
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                return True, ""
            if "exec" in probe:
                return await self._probe_exec(c, probe["exec"]["command"], timeout)
            return False, f"probe type {sorted(probe)} is not supported by the local node"
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}"

    async def _probe_http(self, c: ContainerState, spec: JSON, timeout: float) -> tuple[bool, str]:
        scheme = spec.get("scheme", "HTTP").lower()
        host = spec.get("host") or self.pod_ip
        url = f"{scheme}://{host}:{self._port(c, spec['port'])}{spec.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders", [])}
        async with self.ctx.probe_http.get(
            url,
            headers=headers,
            ssl=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return 200 <= resp.status < 400, f"HTTP probe failed with statuscode: {resp.status}"

    async def _probe_exec(self, c: ContainerState, command: list[str], timeout: float) -> tuple[bool, str]:
        env = await container_env(
            c.spec,
            facts=self.facts(),
            objects=ObjectCache(self.ctx.kube, self.pod["metadata"]["namespace"]),
            base={**self._env_base, "KUBELAMBDA_ROOTFS": str(self.rootfs(c))},
        )
        argv = _images.container_argv(c.spec["image"], command, None)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=self.rootfs(c),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"command timed out after {timeout:g}s"
        return proc.returncode == 0, out.decode(errors="replace")[-200:]

    def _port(self, c: ContainerState, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"container {c.name!r} has no port named {port!r}")

    # ---- termination ----------------------------------------------------------------------------------

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

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
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- status ---------------------------------------------------------------------------------------

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
        body = {"metadata": {"uid": self.uid}, "status": self.status()}
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

    def memory_bytes(self) -> dict[str, int]:
        """Resident memory per container (the process and its children), for /stats/summary."""
        out: dict[str, int] = {}
        for c in self.containers:
            if c.proc is None or c.proc.poll() is not None:
                continue
            try:
                parent = psutil.Process(c.proc.pid)
                procs = [parent, *parent.children(recursive=True)]
                out[c.name] = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
        return out
