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

from kltest.cluster import Cluster
from kltest.platform import AGENT_KEY, LOOPBACK_ALLOWED, SYSTEM_NS, install_crds, service_account_token
from kltest.wait import wait_for
from kubelambda.devcluster._platform import _kubeconfig_with_token
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
    env: dict[str, str]  # every replica's environment but its port
    tmp: Path
    members: list[Replica] = field(default_factory=list)

    def __getitem__(self, i: int) -> Replica:
        return self.members[i]

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.members if r.process.poll() is None]

    async def top_up(self, count: int, *, extra: dict[str, str] | None = None) -> None:
        """Starts replicas (with ``extra`` added to their environment) until ``count`` are alive; returns once each
        new one answers /readyz."""
        started = []
        while len(self.live) < count:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                **self.env,
                **(extra or {}),
                "KUBELAMBDA_GATEWAY_PORT": str(port),
                "KUBELAMBDA_GATEWAY_PEER_URL": url,
            }
            log = self.tmp / f"gateway-{len(self.members)}.log"
            replica = Replica(url, spawn_gateway(env, log), log)
            self.members.append(replica)
            started.append(replica)
        for replica in started:
            await wait_for(
                lambda r=replica: ready(r.url),
                lambda status: status == 200,
                what=f"gateway replica {replica.url} ready (log: {replica.log})",
                timeout=120,  # a process start under load 50 took over 60 s
            )

    def stop(self) -> None:
        for replica in self.members:
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(30)


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
    cluster: Cluster,
    kube: KubeClient,
    tmp: Path,
    count: int,
    *,
    extra_env: dict[str, str] | None = None,
    **settings: Any,
) -> Replicas:
    """``count`` gateway processes with ``settings`` (GatewaySettings fields) over quick test defaults (and
    ``extra_env`` in the first ``count``'s environment); returns once every one answers /readyz."""
    await install_crds(cluster, kube)
    token = await service_account_token(cluster, kube, "gateway-rbac.yaml", "kubelambda-gateway")
    config = _kubeconfig_with_token(cluster.kubeconfig, token, tmp / "gateway.kubeconfig", "gateway")
    values: dict[str, Any] = {
        "agent_key": AGENT_KEY,
        "auth_mode": "none",
        "url_allow_cidrs": LOOPBACK_ALLOWED,
        "slot_wait_seconds": 1.0,
        "autoscale_interval_seconds": 0.5,
        "lease_seconds": 6,
        "lease_renew_seconds": 1,
        "kubeconfig": str(config),
        "host": "127.0.0.1",
        **settings,
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")},
        **{
            f"KUBELAMBDA_GATEWAY_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
            for k, v in values.items()
        },
    }
    replicas = Replicas(env, tmp)
    try:
        await replicas.top_up(count, extra=extra_env)
    except BaseException:
        replicas.stop()
        raise
    return replicas


def previous_release(commit: str, into: Path) -> dict[str, str]:
    """The environment that runs the gateway of an earlier ``commit`` of this repository (its Python package,
    from git, ahead of this checkout's on the path): a replica of the previous release in a rolling update."""
    root = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", commit, "operator/kubelambda"], capture_output=True, check=False
    )
    assert archive.returncode == 0, (
        f"git archive {commit} (needs the repository's history): {archive.stderr!r}"
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return {"PYTHONPATH": str(into / "operator")}


async def leader_url(kube: KubeClient) -> str | None:
    """The URL of the replica holding the leader Lease (None while nobody does)."""
    lease = await kube.get_or_none(
        resource_path("coordination.k8s.io/v1", "leases", namespace=SYSTEM_NS, name=LEADER_LEASE)
    )
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
    return url_of(holder) if holder else None
