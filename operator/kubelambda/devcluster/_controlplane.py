"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The API server runs the authorization modes and admission plugins a normal cluster has (Node + RBAC,
NodeRestriction, ServiceAccount, ...), signs service-account tokens, and reaches the local node's kubelet
endpoint with a client certificate for ``kubectl logs``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from kubelambda.devcluster._binaries import Binaries
from kubelambda.devcluster._certs import CertificateAuthority, CertPair, service_account_keys
from kubelambda.devcluster._ports import PortTaken, address_in_use, free_ports, retry_taken_ports
from kubelambda.devcluster._process import spawn, stop

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/16"
# The first address of the service range is the `kubernetes` Service; its serving cert must name it.
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"


@dataclass
class Endpoints:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0

    @classmethod
    def allocate(cls) -> Endpoints:
        etcd_client, etcd_peer, apiserver, controller_manager, scheduler = free_ports(5)  # all different
        return cls(
            etcd_client=etcd_client,
            etcd_peer=etcd_peer,
            apiserver=apiserver,
            controller_manager=controller_manager,
            scheduler=scheduler,
        )


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """A kubeconfig with the certificates embedded, so it can be copied anywhere on this machine."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubelambda", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)},
            }
        ],
        "contexts": [{"name": "kubelambda", "context": {"cluster": "kubelambda", "user": user}}],
        "current-context": "kubelambda",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """Starts and stops the control plane; ``state_dir`` keeps data, certificates, kubeconfigs and logs."""

    state_dir: Path
    binaries: Binaries
    node_name: str = "kubelambda-local"
    ports: Endpoints = field(default_factory=Endpoints.allocate)
    # 127.0.0.1 for the process node. The container node's pods reach the API server through the `kubernetes`
    # Service, whose endpoint is this address: a routable address of the host, served on every interface.
    advertise_address: str = "127.0.0.1"
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pki = self.state_dir / "pki"
        self.logs = self.state_dir / "logs"
        self.ca = CertificateAuthority(self.pki)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def node_kubeconfig(self) -> Path:
        """The node's identity: ``system:node:<name>`` in ``system:nodes``, authorised by the Node authorizer."""
        pair = self.ca.issue(
            f"node-{self.node_name}",
            common_name=f"system:node:{self.node_name}",
            organizations=("system:nodes",),
            client=True,
        )
        return write_kubeconfig(
            self.state_dir / "node.kubeconfig",
            server=self.server,
            ca=self.ca.pair.cert,
            client=pair,
            user=f"system:node:{self.node_name}",
        )

    def kubelet_serving_cert(self, node_ip: str) -> CertPair:
        return self.ca.issue(
            f"kubelet-{self.node_name}-{node_ip}",
            common_name=f"system:node:{self.node_name}",
            organizations=("system:nodes",),
            dns_names=(self.node_name, "localhost"),
            ip_addresses=tuple(sorted({"127.0.0.1", node_ip})),
            server=True,
        )

    def _prepare(self) -> dict[str, Path]:
        ca = self.ca
        routable = self.advertise_address != "127.0.0.1"
        apiserver = ca.issue(
            f"apiserver-{self.advertise_address}" if routable else "apiserver",
            common_name="kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            ),
            ip_addresses=(
                "127.0.0.1",
                KUBERNETES_SERVICE_IP,
                *((self.advertise_address,) if routable else ()),
            ),
            server=True,
        )
        kubelet_client = ca.issue(
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("kubeadm:cluster-admins",),
            client=True,
        )
        etcd = ca.issue("etcd", common_name="etcd", ip_addresses=("127.0.0.1",), server=True, client=True)
        admin = ca.issue(
            "admin", common_name="kubelambda-admin", organizations=("system:masters",), client=True
        )
        cm = ca.issue("controller-manager", common_name="system:kube-controller-manager", client=True)
        sched = ca.issue("scheduler", common_name="system:kube-scheduler", client=True)
        sa = service_account_keys(self.pki)
        kcfg = {
            "admin": write_kubeconfig(
                self.kubeconfig, server=self.server, ca=ca.pair.cert, client=admin, user="kubelambda-admin"
            ),
            "controller-manager": write_kubeconfig(
                self.state_dir / "controller-manager.kubeconfig",
                server=self.server,
                ca=ca.pair.cert,
                client=cm,
                user="system:kube-controller-manager",
            ),
            "scheduler": write_kubeconfig(
                self.state_dir / "scheduler.kubeconfig",
                server=self.server,
                ca=ca.pair.cert,
                client=sched,
                user="system:kube-scheduler",
            ),
        }
        return {
            "ca": ca.pair.cert,
            "ca_key": ca.pair.key,
            "apiserver_crt": apiserver.cert,
            "apiserver_key": apiserver.key,
            "kubelet_client_crt": kubelet_client.cert,
            "kubelet_client_key": kubelet_client.key,
            "etcd_crt": etcd.cert,
            "etcd_key": etcd.key,
            "sa_pub": sa.cert,
            "sa_key": sa.key,
            **{f"kubeconfig_{k}": v for k, v in kcfg.items()},
        }

    async def start(self, *, controllers: bool = True) -> None:
        """Starts the components; ``controllers=False`` stops after etcd and the API server (what
        controller-runtime's envtest runs), which the benchmarks use as their baseline.

        When a component could not bind its port (taken after it was found free), everything started is
        stopped and started again on new ports."""
        tries = 0
        etcd_data = self.state_dir / "etcd"
        fresh = not etcd_data.exists()

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                self.ports = Endpoints.allocate()
                if fresh:  # a member made on the first try would remember that try's peer URL
                    shutil.rmtree(etcd_data, ignore_errors=True)
            marks = {log: log.stat().st_size for log in self.logs.glob("*.log")}
            try:
                await self._start(controllers=controllers)
            except (RuntimeError, TimeoutError) as e:
                await self.stop()
                said = "".join(_read_from(log, marks.get(log, 0)) for log in self.logs.glob("*.log"))
                if address_in_use(said):
                    raise PortTaken(f"a control plane component could not bind its port: {e}") from e
                raise

        await retry_taken_ports(attempt, what="the control plane")

    async def _start(self, *, controllers: bool) -> None:
        started = time.monotonic()
        files = self._prepare()
        p = self.ports
        b = self.binaries
        data = self.state_dir / "etcd"
        self._procs["etcd"] = spawn(
            [
                str(b.etcd),
                "--name=kubelambda",
                f"--data-dir={data}",
                f"--listen-client-urls=https://127.0.0.1:{p.etcd_client}",
                f"--advertise-client-urls=https://127.0.0.1:{p.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=kubelambda=http://127.0.0.1:{p.etcd_peer}",
                f"--cert-file={files['etcd_crt']}",
                f"--key-file={files['etcd_key']}",
                f"--trusted-ca-file={files['ca']}",
                "--client-cert-auth=true",
                # One member on a developer's disk: no need to fsync like a production quorum.
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
            log=self.logs / "etcd.log",
        )
        self._procs["kube-apiserver"] = spawn(
            [
                str(b.kube_apiserver),
                f"--etcd-servers=https://127.0.0.1:{p.etcd_client}",
                f"--etcd-cafile={files['ca']}",
                f"--etcd-certfile={files['etcd_crt']}",
                f"--etcd-keyfile={files['etcd_key']}",
                "--bind-address=127.0.0.1"
                if self.advertise_address == "127.0.0.1"
                else "--bind-address=0.0.0.0",
                f"--advertise-address={self.advertise_address}",
                f"--secure-port={p.apiserver}",
                f"--tls-cert-file={files['apiserver_crt']}",
                f"--tls-private-key-file={files['apiserver_key']}",
                f"--client-ca-file={files['ca']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-key-file={files['sa_pub']}",
                f"--service-account-signing-key-file={files['sa_key']}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={files['kubelet_client_crt']}",
                f"--kubelet-client-key={files['kubelet_client_key']}",
                f"--kubelet-certificate-authority={files['ca']}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                # The aggregation layer's front proxy trusts the same CA (no aggregated APIs run here).
                f"--requestheader-client-ca-file={files['ca']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--profiling=false",
                "--v=1",
            ],
            log=self.logs / "kube-apiserver.log",
        )
        await self._wait_healthy("kube-apiserver", f"{self.server}/readyz", client=True)
        if not controllers:
            return
        self._procs["kube-controller-manager"] = spawn(
            [
                str(b.kube_controller_manager),
                f"--kubeconfig={files['kubeconfig_controller-manager']}",
                f"--authentication-kubeconfig={files['kubeconfig_controller-manager']}",
                f"--authorization-kubeconfig={files['kubeconfig_controller-manager']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.controller_manager}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={files['sa_key']}",
                f"--root-ca-file={files['ca']}",
                f"--cluster-signing-cert-file={files['ca']}",
                f"--cluster-signing-key-file={files['ca_key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--profiling=false",
                "--v=1",
            ],
            log=self.logs / "kube-controller-manager.log",
        )
        self._procs["kube-scheduler"] = spawn(
            [
                str(b.kube_scheduler),
                f"--kubeconfig={files['kubeconfig_scheduler']}",
                f"--authentication-kubeconfig={files['kubeconfig_scheduler']}",
                f"--authorization-kubeconfig={files['kubeconfig_scheduler']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.scheduler}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            log=self.logs / "kube-scheduler.log",
        )
        await asyncio.gather(
            self._wait_healthy(
                "kube-controller-manager", f"https://127.0.0.1:{p.controller_manager}/healthz"
            ),
            self._wait_healthy("kube-scheduler", f"https://127.0.0.1:{p.scheduler}/healthz"),
        )
        logger.info("Started the control plane in %.1f s at %s", time.monotonic() - started, self.server)

    def _ssl(self, *, client: bool) -> ssl.SSLContext | bool:
        if not client:
            return False  # controller-manager and scheduler serve /healthz with self-signed certificates
        ctx = ssl.create_default_context(cafile=str(self.ca.pair.cert))
        admin = self.pki
        ctx.load_cert_chain(str(admin / "admin.crt"), str(admin / "admin.key"))
        return ctx

    async def _wait_healthy(
        self, name: str, url: str, *, client: bool = False, timeout: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self.check_running()
                try:
                    async with session.get(
                        url, ssl=self._ssl(client=client), timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        body = await resp.text()
                        if resp.status == 200:
                            return
                        last = f"HTTP {resp.status}: {body[-300:]}"
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    last = repr(e)
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{name} not healthy after {timeout:.0f} s at {url}: {last} (log: {self.logs})")

    def check_running(self) -> None:
        """Raises if a component has exited, naming it and the tail of its log."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited with status {proc.returncode}; last log lines:\n{tail}")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    async def stop(self) -> None:
        # Reverse order: clients of the API server first, etcd last.
        for name in reversed(list(self._procs)):
            await stop(self._procs[name], grace_seconds=10)
            logger.info("Stopped %s", name)
        self._procs.clear()
