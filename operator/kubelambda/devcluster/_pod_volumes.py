"""A pod's volumes: materialized under the pod's directory, mounted into each container's root as symlinks."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp

from kubelambda.devcluster._pod_base import PodBase
from kubelambda.devcluster._podenv import ConfigError, ObjectCache, materialize_volume
from kubelambda.kube import ApiError


class PodVolumes(PodBase):
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
