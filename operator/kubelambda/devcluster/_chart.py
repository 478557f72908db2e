"""kubelambda from its Helm chart on the container node: operator, gateway, async worker and NATS as pods.

``helm upgrade --install`` of ``helm/kubelambda`` with the images ``make images`` built (imported into the node's
containerd, so ``pullPolicy: Never``), NATS from ``kubelambda.io/dev/nats`` (hack/node-images.sh: no registry
serves the official image here) on a hostPath PersistentVolume made for its claim, and the gateway on a NodePort
of the node address. ``<state>/dev.json`` says how it is reached (``gateway_url``, ``gateway_access``).

The release namespace enforces Pod Security ``restricted`` (every pod of the chart, warm-pool pods included, must
pass it), and the chart's NetworkPolicies are enforced (kube-router): their API-server egress names the API
server's own address and port, which is what the enforcer sees after kube-proxy's DNAT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import kubelambda
from kubelambda.devcluster._binaries import Binaries, repo_root
from kubelambda.devcluster._platform import SYSTEM_NS, Platform
from kubelambda.kube import KubeClient, resource_path

logger = logging.getLogger(__name__)

RELEASE = "kubelambda"
REGISTRY = "ghcr.io/kubelambda"
GATEWAY_NODE_PORT = 30080
PV_ROOT = Path("/var/lib/kubelambda/pv")
NATS_PV = "kubelambda-dev-nats-data"
# Pod Security Standards: the release namespace enforces (and warns and audits at) "restricted".
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


def chart_images(*, control_plane: bool = True) -> list[str]:
    """The control-plane image (required with ``control_plane``) and every runtime image Docker holds (what
    ``make images`` built here)."""
    out = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{REGISTRY}/*"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"the container node takes its images from Docker, which failed: {out.stderr.strip()}"
        )
    control = f"{REGISTRY}/kubelambda:{kubelambda.__version__}"
    found = [line for line in out.stdout.split() if not line.endswith(":<none>")]
    if control_plane and control not in found:
        raise RuntimeError(f"image {control} is not in Docker: build it first (make images)")
    return [*([control] if control in found else []), *sorted(i for i in found if "/runtime-" in i)]


@dataclass
class ChartPlatform:
    state_dir: Path
    binaries: Binaries
    admin_kubeconfig: Path
    node_ip: str
    nats_image: str  # kubelambda.io/dev/nats:<version>
    api_server_port: (
        int  # where the API server listens on the node address (the `kubernetes` Service's endpoint)
    )
    gateway_url: str = ""
    access: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""

    def helm(self, *args: str, timeout: float = 600) -> str:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.admin_kubeconfig),
            "HELM_CACHE_HOME": str(self.state_dir / "helm"),
        }
        result = subprocess.run(
            [str(self.binaries.helm), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def values(self) -> list[str]:
        repo, _, tag = self.nats_image.rpartition(":")
        registry, _, repository = repo.partition("/")
        return [
            "--set", "image.pullPolicy=Never",
            "--set", f"nats.image.registry={registry}",
            "--set", f"nats.image.repository={repository}",
            "--set", f"nats.image.tag={tag}",
            "--set", "nats.image.pullPolicy=Never",
            "--set", "gateway.service.type=NodePort",
            "--set", f"gateway.service.nodePort={GATEWAY_NODE_PORT}",
            # The async worker as pods of its own (the chart's default runs it inside the gateway).
            "--set", "async.worker.separate=true",
            # Enforced NetworkPolicies see the API server's endpoint, not the Service's 443.
            "--set", f"networkPolicy.apiServerCIDRs={{{self.node_ip}/32}}",
            "--set", f"networkPolicy.apiServerPorts={{{self.api_server_port}}}",
        ]  # fmt: skip

    async def _nats_volume(self, kube: KubeClient) -> None:
        """A hostPath PersistentVolume for NATS's claim (this cluster has no provisioner)."""
        path = PV_ROOT / "nats-0"
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 65532, 65532)
        pv = resource_path("v1", "persistentvolumes", name=NATS_PV)
        existing = await kube.get_or_none(pv)
        if existing is not None and existing.get("status", {}).get("phase") == "Released":
            # `helm uninstall` deleted the claim (the chart's uninstall.keepData is off): its data goes, as a
            # provisioner's Delete reclaim would do, and the volume is bound ahead to the next install's claim.
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            await kube.patch(pv, {"spec": {"claimRef": {"uid": None, "resourceVersion": None}}})
            logger.info("NATS's volume %s was released by an uninstall: emptied for the new claim", NATS_PV)
        if existing is None:
            await kube.create(
                resource_path("v1", "persistentvolumes"),
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": NATS_PV},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": str(path), "type": "Directory"},
                        "claimRef": {"namespace": SYSTEM_NS, "name": f"data-{RELEASE}-nats-0"},
                    },
                },
            )

    async def _restricted_namespace(self, kube: KubeClient) -> None:
        """The release namespace, labelled to enforce Pod Security ``restricted`` before anything runs in it
        (server-side apply: made, or its labels set)."""
        await kube.apply(
            resource_path("v1", "namespaces", name=SYSTEM_NS),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NS, "labels": RESTRICTED}},
            field_manager="kubelambda-dev",
        )

    async def install(self) -> None:
        async with KubeClient.from_kubeconfig(self.admin_kubeconfig) as kube:
            await self._restricted_namespace(kube)
            await self._nats_volume(kube)
        chart = repo_root() / "helm" / "kubelambda"
        await asyncio.to_thread(
            self.helm,
            "upgrade", "--install", RELEASE, str(chart), "--namespace", SYSTEM_NS, "--create-namespace",
            *self.values(), "--wait", "--timeout", "8m",
        )  # fmt: skip
        self.gateway_url = f"http://{self.node_ip}:{GATEWAY_NODE_PORT}"
        self.access = (
            f"NodePort {GATEWAY_NODE_PORT} of service {SYSTEM_NS}/{RELEASE}-gateway on the node address "
            f"{self.node_ip} (or: kubectl -n {SYSTEM_NS} port-forward service/{RELEASE}-gateway 8080:8080)"
        )
        # The developer's access key, as the process node's platform makes it.
        helper = Platform(self.state_dir, self.binaries, self.admin_kubeconfig)
        async with KubeClient.from_kubeconfig(self.admin_kubeconfig) as kube:
            await helper._developer_key(kube)
        self.access_key_id, self.secret_access_key = helper.access_key_id, helper.secret_access_key

    async def stop(self) -> None:
        """The release stays installed (its objects live in etcd, with the cluster); the node drains its pods."""
