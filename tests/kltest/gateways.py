"""Several gateway replicas as processes (``python -m kubelambda gateway``) on loopback, each as the gateway's
ServiceAccount, sharing exact limits and one autoscaler through Leases (docs/architecture.md): a test can SIGKILL
or SIGTERM one of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kltest.cluster import Cluster
from kltest.platform import AGENT_KEY, LOOPBACK_ALLOWED, SYSTEM_NS, install_crds, service_account_token
from kltest.wait import wait_for
from kubelambda.devcluster._ports import free_port
from kubelambda.gateway.peers import LEADER_LEASE, url_of
from kubelambda.kube import KubeClient, resource_path


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)


@dataclass
class Replicas:
    members: list[Replica] = field(default_factory=list)

    def __getitem__(self, i: int) -> Replica:
        return self.members[i]

    def stop(self) -> None:
        for replica in self.members:
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(30)


def kubeconfig_with_token(cluster: Cluster, token: str, path: Path) -> Path:
    """The cluster's kubeconfig, authenticating with ``token`` instead of the admin's credentials."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config.get("users") or []:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


async def ready(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


def spawn_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kubelambda", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def start_replicas(
    cluster: Cluster, kube: KubeClient, tmp: Path, count: int, **settings: Any
) -> Replicas:
    """``count`` gateway processes with ``settings`` (GatewaySettings fields) over quick test defaults; returns
    once every one answers /readyz."""
    await install_crds(cluster, kube)
    token = await service_account_token(cluster, kube, "gateway-rbac.yaml", "kubelambda-gateway")
    config = kubeconfig_with_token(cluster, token, tmp / "gateway.kubeconfig")
    values: dict[str, Any] = {
        "agent_key": AGENT_KEY,
        "auth_mode": "none",
        "url_allow_cidrs": LOOPBACK_ALLOWED,
        "slot_wait_seconds": 1.0,
        "autoscale_interval_seconds": 0.5,
        "lease_seconds": 4,
        "lease_renew_seconds": 1,
        "kubeconfig": str(config),
        **settings,
    }
    replicas = Replicas()
    for i in range(count):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **{
                f"KUBELAMBDA_GATEWAY_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in values.items()
            },
            "KUBELAMBDA_GATEWAY_HOST": "127.0.0.1",
            "KUBELAMBDA_GATEWAY_PORT": str(port),
            "KUBELAMBDA_GATEWAY_PEER_URL": url,
        }
        log = tmp / f"gateway-{i}.log"
        replicas.members.append(Replica(url, spawn_gateway(env, log), log))
    try:
        for replica in replicas.members:
            await wait_for(
                lambda r=replica: ready(r.url),
                lambda status: status == 200,
                what=f"gateway replica {replica.url} ready (log: {replica.log})",
                timeout=60,
            )
    except BaseException:
        replicas.stop()
        raise
    return replicas


async def leader_url(kube: KubeClient) -> str | None:
    """The URL of the replica holding the leader Lease (None while nobody does)."""
    lease = await kube.get_or_none(
        resource_path("coordination.k8s.io/v1", "leases", namespace=SYSTEM_NS, name=LEADER_LEASE)
    )
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
    return url_of(holder) if holder else None
