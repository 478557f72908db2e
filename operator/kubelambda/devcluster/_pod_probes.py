"""A container's startup, readiness and liveness probes (HTTP, TCP, exec), as the kubelet runs them."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from kubelambda.devcluster import _images
from kubelambda.devcluster._pod_base import JSON, ContainerState, PodBase
from kubelambda.devcluster._podenv import ObjectCache, container_env
from kubelambda.devcluster._process import stop


class PodProbes(PodBase):
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
        counted = float("-inf")  # when a failure last counted toward failureThreshold
        while True:
            ok, detail = await self._probe_once(c, probe)
            if ok:
                successes, failures, counted = successes + 1, 0, float("-inf")
            elif time.monotonic() - counted >= period:
                # Probed quickly until the first success (below), a failure still counts once per period, as the
                # kubelet's: failureThreshold failures take (failureThreshold - 1) x periodSeconds, not 0.1 s each.
                successes, failures, counted = 0, failures + 1, time.monotonic()
                self.ctx.record_event(
                    self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {detail}"
                )
            else:
                successes = 0
                await asyncio.sleep(0.1)
                continue
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
