"""A pod's container processes: launch, exit, restart policy and crash-loop back-off."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import time

import aiohttp
import psutil

from kubelambda.devcluster import _images
from kubelambda.devcluster._cgroups import ContainerCgroup, Limits, MemoryUsage
from kubelambda.devcluster._pod_base import ContainerState, now_rfc3339
from kubelambda.devcluster._pod_probes import PodProbes
from kubelambda.devcluster._pod_volumes import PodVolumes
from kubelambda.devcluster._podenv import ConfigError, ObjectCache, container_env, expand
from kubelambda.devcluster._process import spawn
from kubelambda.devcluster._process import wait as wait_child
from kubelambda.kube import ApiError

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
# A container that ran this long without failing has its crash-loop back-off reset (as the kubelet does).
BACKOFF_RESET_SECONDS = 600.0


class PodProcesses(PodVolumes, PodProbes):
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
            # A missing Secret or ConfigMap, a bad reference: CreateContainerConfigError, which the Function's
            # Ready reports (resources/status.py POD_REASONS). An API error is passing: still creating.
            reason = "CreateContainerConfigError" if isinstance(e, ConfigError) else "ContainerCreating"
            c.state = {"waiting": {"reason": reason, "message": str(e)}}
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
            c.cgroup = await self._create_cgroup(c)
            procs = c.cgroup.procs_files() if c.cgroup is not None else []
            c.proc = spawn(argv, log=log, env=env, cwd=cwd, cgroup_procs=procs)
        except (OSError, subprocess.SubprocessError, ConfigError) as e:
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

    async def _create_cgroup(self, c: ContainerState) -> ContainerCgroup | None:
        """The container's cgroup with its memory and CPU limits, when the node enforces them."""
        cgroups = self.ctx.cgroups
        if cgroups is None or not cgroups.enforced:
            return None
        limits = Limits.from_resources(c.spec.get("resources"))
        return await asyncio.to_thread(cgroups.create, self.uid, c.name, limits)

    async def _wait_exit(self, c: ContainerState) -> int:
        assert c.proc is not None
        code = await wait_child(c.proc)
        # A process killed by a signal reports 128 + signal, as container runtimes do.
        exit_code = 128 - code if code < 0 else code
        started = c.state.get("running", {}).get("startedAt", now_rfc3339())
        reason = "Completed" if exit_code == 0 else "Error"
        if c.cgroup is not None:
            # When the container's main process ends, the rest of the container goes too.
            await asyncio.to_thread(c.cgroup.kill_all)
            # The kernel's OOM killer acted in this container while it ran (as containerd reports it).
            if exit_code != 0 and c.cgroup.oom_killed_since_start():
                reason = "OOMKilled"
                self.ctx.record_event(
                    self.pod, "Warning", "OOMKilled", f"Container {c.name} was killed: out of memory"
                )
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

    async def _launch_retrying(self, c: ContainerState, failures: int) -> int | None:
        """Launches ``c``, retrying a failed launch after a delay that grows with the failures: once it runs,
        ``failures`` plus the failed launches; None if the pod stops first."""
        while not self.stopping.is_set():
            if await self._launch(c):
                return failures
            failures += 1
            await self._wait_stopping(self._retry_delay(failures))
        return None

    async def _run_to_completion(self, c: ContainerState) -> bool:
        """An init container: True once it exits 0; False if the pod fails or stops."""
        failures = 0
        while (counted := await self._launch_retrying(c, failures)) is not None:
            failures = counted
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
        while (counted := await self._launch_retrying(c, failures)) is not None:
            failures = counted
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

    def memory_usage(self) -> dict[str, MemoryUsage]:
        """Memory per running container, for /stats/summary: from its cgroup when limits are enforced, else
        the resident memory of the process and its children."""
        out: dict[str, MemoryUsage] = {}
        for c in self.containers:
            if c.proc is None or c.proc.poll() is not None:
                continue
            if c.cgroup is not None:
                out[c.name] = c.cgroup.memory()
                continue
            try:
                parent = psutil.Process(c.proc.pid)
                procs = [parent, *parent.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                out[c.name] = MemoryUsage(working_set_bytes=rss, rss_bytes=rss, usage_bytes=rss)
            except psutil.Error:
                continue
        return out
