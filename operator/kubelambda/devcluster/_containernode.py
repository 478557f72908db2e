"""The container node: a real kubelet on this machine, with a containerd of its own, CNI and kube-proxy.

``kubelambda dev up --node container`` joins it to the same control plane the process node uses. Pods are real
containers (runc, cgroups, network namespaces on a CNI bridge), images come from ``make images`` (imported from
Docker into the node's containerd), Services work through kube-proxy (iptables), names through CoreDNS and
NetworkPolicies through kube-router's network policy controller (iptables and ipset; ``--run-firewall`` only).

What it makes on the host, and removes on stop (and on ``dev down`` / the next start after a crash):

- a containerd (root ``/var/lib/kubelambda/containerd``, kept: it caches the imported images; state, socket and
  network namespaces under ``/run/kubelambda/containerd``), its shims, containers and mounts;
- the kubelet (root dir ``/var/lib/kubelambda/kubelet``, pods' cgroups under ``/kubelambda-node``), its mounts;
- the CNI bridge ``klbr0`` with ``10.245.0.0/24`` (host-local IPAM, state in the state dir), veths;
- iptables: two FORWARD rules for the pod subnet (comment ``kubelambda-container-node``; Docker's FORWARD policy
  is DROP), kube-proxy's ``KUBE-*`` chains (``kube-proxy --cleanup``) and kube-router's (``KUBE-ROUTER-*``,
  ``KUBE-POD-FW-*``, ``KUBE-NWPLCY-*``) with its ipsets (``KUBE-SRC-*``, ``KUBE-DST-*``);
- CoreDNS on the node address, port 53 (the pods' ``clusterDNS``).

Only one container node runs on a machine at a time (a lock in ``/run/kubelambda``): kube-proxy's chains and
the bridge are machine-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from kubelambda.devcluster._binaries import repo_root
from kubelambda.devcluster._controlplane import CLUSTER_DOMAIN, SERVICE_CIDR, write_kubeconfig
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster._process import spawn, stop
from kubelambda.kube import KubeClient, resource_path

logger = logging.getLogger(__name__)

LIB = Path("/var/lib/kubelambda")
RUN = Path("/run/kubelambda")
CONTAINERD_ROOT = LIB / "containerd"
CONTAINERD_STATE = RUN / "containerd"
SOCKET = CONTAINERD_STATE / "containerd.sock"
KUBELET_ROOT = LIB / "kubelet"
POD_LOGS = LIB / "pod-logs"
LOCK = RUN / "container-node.lock"
IMPORTED = LIB / "imported-images.json"
BRIDGE = "klbr0"
POD_SUBNET = "10.245.0.0/24"
CNI_NETWORK = "kubelambda-container-node"
CGROUP_ROOT = "/kubelambda-node"
RULE_COMMENT = "kubelambda-container-node"
CNI_BIN = Path("/usr/lib/cni")
CNI_CACHE = Path("/var/lib/cni")
RECORD = "container-node.json"
# Debian packages the container node needs (.ci/run installs them).
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "ipset")


class ContainerNodeError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    kube_router: Path  # only its NetworkPolicy controller runs (--run-firewall)


def ensure_node_binaries() -> NodeBinaries:
    """kubelet and kube-proxy from the pinned Kubernetes module, CoreDNS and kube-router from their own (built once,
    cached)."""
    result = subprocess.run(
        ["bash", str(repo_root() / "hack" / "kube-binaries.sh"), "node"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    dirs = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    node, coredns, router = Path(dirs["NODE_BIN"]), Path(dirs["COREDNS_BIN"]), Path(dirs["KUBE_ROUTER_BIN"])
    return NodeBinaries(
        kubelet=node / "kubelet",
        kube_proxy=node / "kube-proxy",
        coredns=coredns / "coredns",
        kube_router=router / "kube-router",
    )


def check_host() -> None:
    """Fails naming what is missing: root, the Debian packages, Docker (the images come from it)."""
    missing = []
    if os.geteuid() != 0:
        raise ContainerNodeError("the container node needs root (it runs containerd, the kubelet, iptables)")
    for program, package in (
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("iptables", "iptables"),
        ("conntrack", "conntrack"),
        ("ipset", "ipset"),
        ("ip", "iproute2"),
    ):
        if shutil.which(program) is None:
            missing.append(package)
    if not (CNI_BIN / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        raise ContainerNodeError(
            f"the container node needs the Debian packages {' '.join(sorted(set(missing)))} (apt-get install ...)"
        )


def node_address() -> str:
    """The host's address on its default route: the node's InternalIP, where the API server is advertised."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "get", "192.0.2.255"], capture_output=True, text=True, check=False
    ).stdout.split()
    if "src" not in out:
        raise ContainerNodeError("the container node needs an IPv4 default route (its node address)")
    return out[out.index("src") + 1]


def _run(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, check=check, input=input)


def _ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return _run("ctr", "--address", str(SOCKET), "-n", "k8s.io", *args, check=check)


def _mounts_under(roots: tuple[Path, ...]) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
                found.append(point)
    return found


def _forward_rules() -> list[list[str]]:
    return [
        ["FORWARD", "-s", POD_SUBNET, "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT"],
        ["FORWARD", "-d", POD_SUBNET, "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT"],
    ]


def _cgroup_dirs() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    dirs = [base / CGROUP_ROOT.strip("/")]  # cgroup v2
    with contextlib.suppress(OSError):
        dirs += [c / CGROUP_ROOT.strip("/") for c in base.iterdir() if c.is_dir() and not c.is_symlink()]
    return [d for d in dirs if d.is_dir()]


def _make_cgroup_root() -> None:
    """The kubelet wants its ``cgroupRoot`` in every hierarchy before it starts (cgroup v1: one per controller)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # v2
        (base / CGROUP_ROOT.strip("/")).mkdir(exist_ok=True)
        return
    for hierarchy in base.iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            (hierarchy / CGROUP_ROOT.strip("/")).mkdir(exist_ok=True)


def host_leftovers() -> list[str]:
    """What a container node made that is still on the host (empty after a clean stop; tests check it)."""
    left = [f"mount {m}" for m in _mounts_under((CONTAINERD_STATE, KUBELET_ROOT, CONTAINERD_ROOT))]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        left.append(f"link {BRIDGE}")
    for rule in _forward_rules():
        if _run("iptables", "-C", *rule, check=False).returncode == 0:
            left.append(f"iptables {' '.join(rule)}")
    left += [f"{family} -t {table} {line}" for family, table, line in _kube_rules()]
    left += [f"ipset {name}" for name in _kube_ipsets()]
    left += [f"process {pid} ({what})" for pid, what in _our_processes()]
    left += [f"cgroup {d}" for d in _cgroup_dirs()]
    return left


def _kube_rules() -> list[tuple[str, str, str]]:
    """The kubelet's and kube-proxy's iptables chains (``KUBE-*``) and the rules that jump to them, IPv4 and IPv6.
    Only one container node runs on a machine, and nothing else here runs a kubelet on the host."""
    found = []
    for family in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            if shutil.which(f"{family}-save") is None:
                continue
            saved = _run(f"{family}-save", "-t", table, check=False).stdout.decode(errors="replace")
            for line in saved.splitlines():
                if line.startswith(":KUBE-") or (
                    line.startswith("-A ") and (line.split()[1].startswith("KUBE-") or " -j KUBE-" in line)
                ):
                    found.append((family, table, line))
    return found


def _remove_kube_rules() -> None:
    rules = _kube_rules()
    for family, table, line in rules:  # rules first (jumps), then the chains: flushed, then deleted
        if line.startswith("-A "):
            _run(family, "-t", table, "-D", *shlex.split(line)[1:], check=False)
    for family, table, line in rules:
        if line.startswith(":"):
            _run(family, "-t", table, "-F", line[1:].split()[0], check=False)
    for family, table, line in rules:
        if line.startswith(":"):
            _run(family, "-t", table, "-X", line[1:].split()[0], check=False)


def _kube_ipsets() -> list[str]:
    """kube-router's ipsets (the pods and blocks its NetworkPolicy rules match)."""
    if shutil.which("ipset") is None:
        return []
    names = _run("ipset", "list", "-n", check=False).stdout.decode(errors="replace").split()
    return [n for n in names if n.removeprefix("inet6:").startswith(("KUBE-SRC-", "KUBE-DST-"))]


def _our_processes() -> list[tuple[int, str]]:
    """Shims of our containerd (they name its socket) and what runs in the node's cgroups."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
            if str(SOCKET).encode() in argv or f"{SOCKET}.ttrpc".encode() in argv:
                found[int(proc.name)] = argv[0].decode(errors="replace")
    for d in _cgroup_dirs():
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    found.setdefault(int(pid), "pod process")
    found.pop(os.getpid(), None)
    return sorted(found.items())


def cleanup_host(state_dir: Path) -> list[str]:
    """Removes whatever a container node left (after a crash, or after its orderly stop) and returns what could
    not be removed. Safe to call when nothing is left."""
    for _ in range(3):
        procs = _our_processes()
        for pid, _what in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not procs:
            break
        time.sleep(0.3)
    for point in sorted(
        _mounts_under((CONTAINERD_STATE, KUBELET_ROOT, CONTAINERD_ROOT)), key=len, reverse=True
    ):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
    for rule in _forward_rules():
        while _run("iptables", "-C", *rule, check=False).returncode == 0:
            _run("iptables", "-D", *rule, check=False)
    record = _read_record(state_dir)
    proxy = record.get("kube_proxy")
    if proxy and Path(proxy).exists():
        _run(proxy, "--cleanup", check=False)
    _remove_kube_rules()  # what --cleanup leaves: the kubelet's and kube-router's chains (KUBE-FIREWALL, canaries)
    for name in _kube_ipsets():  # after the rules that match them
        _run("ipset", "destroy", name, check=False)
    for d in sorted(_cgroup_dirs(), key=lambda p: len(p.parts), reverse=True):
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()
    shutil.rmtree(CONTAINERD_STATE, ignore_errors=True)
    shutil.rmtree(KUBELET_ROOT, ignore_errors=True)
    shutil.rmtree(POD_LOGS, ignore_errors=True)
    for cached in (CNI_CACHE / "results").glob(f"{CNI_NETWORK}-*"):
        cached.unlink(missing_ok=True)
    shutil.rmtree(state_dir / "cni", ignore_errors=True)
    (state_dir / RECORD).unlink(missing_ok=True)
    return host_leftovers()


def _read_record(state_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state_dir / RECORD).read_text())
        return data
    except (OSError, ValueError):
        return {}


def import_image(image: str) -> None:
    """``docker save`` of ``image`` → ``ctr images import`` into the running node's containerd."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    result = subprocess.run(
        ["ctr", "--address", str(SOCKET), "-n", "k8s.io", "images", "import", "--no-unpack", "-"],
        stdin=save.stdout,
        capture_output=True,
        check=False,
    )
    save.stdout.close()
    if save.wait() != 0 or result.returncode != 0:
        raise ContainerNodeError(f"importing {image} failed: {result.stderr.decode()[-500:]}")


@dataclass
class ContainerNode:
    """Starts containerd, CoreDNS, the kubelet and kube-proxy for ``node_name``; ``stop`` removes them all."""

    state_dir: Path
    node_name: str
    node_ip: str
    kubeconfig: Path  # the node's identity (system:node:<name>)
    admin_kubeconfig: Path
    proxy_kubeconfig: Path  # system:kube-proxy
    ca: Path
    serving_cert: Path
    serving_key: Path
    binaries: NodeBinaries
    images: list[str] = field(default_factory=list)  # Docker images to import (make images)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock: IO[str] | None = None
    kubelet_port: int = 0
    dns_ip: str = ""

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _take_lock(self) -> None:
        RUN.mkdir(parents=True, exist_ok=True)
        lock = LOCK.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            raise ContainerNodeError(
                f"another container node runs on this machine ({holder or 'unknown'}); one at a time "
                "(kube-proxy's rules and the CNI bridge are machine-wide): stop it with kubelambda dev down"
            ) from e
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, state dir {self.state_dir}\n")
        lock.flush()
        self._lock = lock

    async def start(self) -> None:
        started = time.monotonic()
        check_host()
        self._take_lock()
        left = await asyncio.to_thread(cleanup_host, self.state_dir)
        if left:
            raise ContainerNodeError(f"leftovers of an earlier container node could not be removed: {left}")
        (self.state_dir / RECORD).write_text(
            json.dumps({"kube_proxy": str(self.binaries.kube_proxy), "node_ip": self.node_ip}) + "\n"
        )
        for d in (CONTAINERD_ROOT, CONTAINERD_STATE, KUBELET_ROOT, POD_LOGS):
            d.mkdir(parents=True, exist_ok=True)
        await self._start_containerd()
        await asyncio.to_thread(self._import_images)
        self._write_cni()
        for rule in _forward_rules():
            _run("iptables", "-I", *rule)
        self.dns_ip = self.node_ip
        _make_cgroup_root()
        self._start_coredns()
        self._start_kubelet()
        self._start_kube_proxy()
        await self._wait_ready()
        self._start_kube_router()  # it reads its Node object at start: only once the kubelet registered it
        logger.info("Started the container node %s in %.1f s", self.node_name, time.monotonic() - started)

    # containerd -----------------------------------------------------------------------------------------

    def _containerd_config(self, sandbox_image: str) -> str:
        cni_conf = self.state_dir / "cni" / "net.d"
        return f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
oom_score = 0
[grpc]
  address = "{SOCKET}"
[ttrpc]
  address = "{SOCKET}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # The VM lacks CAP_SYS_RESOURCE: runc cannot lower the pause container's oom_score_adj below ours.
  restrict_oom_score_adj = true
  tolerate_missing_hugepages_controller = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""

    async def _start_containerd(self) -> None:
        images = await asyncio.to_thread(self._node_images)
        config = self.state_dir / "containerd.toml"
        config.write_text(self._containerd_config(images["pause"]))
        self._procs["containerd"] = spawn(
            ["containerd", "--config", str(config), "--log-level", "warn"], log=self.logs / "containerd.log"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check_running()
            if SOCKET.exists() and _ctr("version", check=False).returncode == 0:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"containerd did not answer on {SOCKET} within 30 s (log: {self.logs})")

    def _node_images(self) -> dict[str, str]:
        out = subprocess.run(
            ["bash", str(repo_root() / "hack" / "node-images.sh")],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.split()
        pause = next(i for i in out if i.startswith("kubelambda.io/dev/pause:"))
        nats = next(i for i in out if i.startswith("kubelambda.io/dev/nats:"))
        self.images = [pause, nats, *[i for i in self.images if i not in (pause, nats)]]
        return {"pause": pause, "nats": nats}

    def _import_images(self) -> None:
        """``docker save`` → ``ctr images import`` for each image not yet imported with the same Docker id."""
        try:
            imported: dict[str, str] = json.loads(IMPORTED.read_text())
        except (OSError, ValueError):
            imported = {}
        present = set(_ctr("images", "ls", "-q").stdout.decode().split())
        todo = []
        for image in self.images:
            got = _run("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False)
            if got.returncode != 0:
                raise ContainerNodeError(f"image {image} is not in Docker: build it first (make images)")
            ident = got.stdout.decode().strip()
            if imported.get(image) != ident or (f"docker.io/{image}" not in present and image not in present):
                todo.append((image, ident))
        for image, ident in todo:
            started = time.monotonic()
            import_image(image)
            imported[image] = ident
            IMPORTED.write_text(json.dumps(imported, indent=1, sort_keys=True) + "\n")
            logger.info("Imported %s into the node's containerd in %.1f s", image, time.monotonic() - started)

    # network --------------------------------------------------------------------------------------------

    def _write_cni(self) -> None:
        conf = self.state_dir / "cni" / "net.d"
        conf.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (conf / "10-kubelambda.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    # components -----------------------------------------------------------------------------------------

    def _start_coredns(self) -> None:
        corefile = self.state_dir / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {self.dns_ip}
    errors
    ready 127.0.0.1:{free_port()}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.admin_kubeconfig} kubelambda
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 10
}}
"""
        )
        self._procs["coredns"] = spawn(
            [str(self.binaries.coredns), "-conf", str(corefile)], log=self.logs / "coredns.log"
        )

    def _start_kubelet(self) -> None:
        self.kubelet_port = free_port()
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(self.serving_cert),
            "tlsPrivateKeyFile": str(self.serving_key),
            # Clients present a certificate from the cluster CA (the API server's kubelet-client one).
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{SOCKET}",
            "clusterDNS": [self.dns_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(POD_LOGS),
            # A developer's disk: never garbage-collect the imported images, never evict for disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "0%",
                "imagefs.available": "0%",
                "nodefs.inodesFree": "0%",
            },
            "serializeImagePulls": False,
            "maxPods": 250,
            "syncFrequency": "10s",
            "fileCheckFrequency": "60s",
            "nodeStatusReportFrequency": "10s",
            "registerNode": True,
        }
        path = self.state_dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=True))
        self._procs["kubelet"] = spawn(
            [
                str(self.binaries.kubelet),
                f"--config={path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={KUBELET_ROOT}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
            log=self.logs / "kubelet.log",
        )

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "hostnameOverride": self.node_name,
            "clusterCIDR": POD_SUBNET,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's conntrack sysctls alone (a VM may refuse them).
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": [f"{self.node_ip}/32"],
        }
        path = self.state_dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=True))
        self._procs["kube-proxy"] = spawn(
            [str(self.binaries.kube_proxy), f"--config={path}", "--v=1"], log=self.logs / "kube-proxy.log"
        )

    def _start_kube_router(self) -> None:
        """kube-router's NetworkPolicy controller alone: iptables chains per pod (KUBE-POD-FW-*) jumped to from
        FORWARD, INPUT and OUTPUT, ipsets of the selected pods. Not kube-network-policies: it needs nftables'
        ``queue`` expression, which this machine's kernel lacks (docs/local-cluster.md)."""
        self._procs["kube-router"] = spawn(
            [
                str(self.binaries.kube_router),
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--enable-ipv6=false",
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--hostname-override={self.node_name}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--health-port={free_port()}",
                "--iptables-sync-period=1m",
                "--v=1",
            ],
            log=self.logs / "kube-router.log",
        )

    async def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = "not registered"
        async with KubeClient.from_kubeconfig(self.admin_kubeconfig) as kube:
            while time.monotonic() < deadline:
                self.check_running()
                node = await kube.get_or_none(resource_path("v1", "nodes", name=self.node_name))
                if node is not None:
                    conds = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
                    ready = conds.get("Ready", {})
                    if ready.get("status") == "True":
                        return
                    last = f"Ready={ready.get('status')}: {ready.get('message', '')}"
                await asyncio.sleep(0.3)
        raise TimeoutError(
            f"the container node was not Ready after {timeout:.0f} s: {last} (logs: {self.logs})"
        )

    def check_running(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited with status {proc.returncode}; last log lines:\n{tail}")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def describe(self) -> str:
        return (
            f"container node (containerd, kubelet, CNI bridge {BRIDGE} {POD_SUBNET}, kube-proxy iptables, "
            "NetworkPolicies by kube-router)"
        )

    # stop -----------------------------------------------------------------------------------------------

    async def _drain(self, timeout: float = 60.0) -> None:
        """Cordons the node and deletes its pods, so that the kubelet stops every sandbox (CNI DEL)."""
        async with KubeClient.from_kubeconfig(self.admin_kubeconfig) as kube:
            node_path = resource_path("v1", "nodes", name=self.node_name)
            with contextlib.suppress(Exception):
                await kube.patch(node_path, {"spec": {"unschedulable": True}})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pods = await kube.get(
                    resource_path("v1", "pods"), params={"fieldSelector": f"spec.nodeName={self.node_name}"}
                )
                items = pods.get("items", [])
                if not items:
                    return
                for pod in items:
                    meta = pod["metadata"]
                    if meta.get("deletionTimestamp"):
                        continue
                    with contextlib.suppress(Exception):
                        await kube.delete(
                            resource_path("v1", "pods", namespace=meta["namespace"], name=meta["name"]),
                            grace_period_seconds=5,
                        )
                await asyncio.sleep(0.5)
            logger.warning("Pods still on the container node after %.0f s; removing them by force", timeout)

    async def stop(self) -> None:
        if self._procs.get("kubelet") is not None and self._procs["kubelet"].poll() is None:
            try:
                await self._drain()
            except Exception:
                logger.exception("Draining the container node failed; removing its containers by force")
        for name in ("kube-router", "kube-proxy", "kubelet", "coredns"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                await stop(proc, grace_seconds=10)
        if "containerd" in self._procs and self._procs["containerd"].poll() is None:
            await asyncio.to_thread(self._remove_containers)
        proc = self._procs.pop("containerd", None)
        if proc is not None:
            await stop(proc, grace_seconds=10)
        left = await asyncio.to_thread(cleanup_host, self.state_dir)
        for what in left:
            logger.warning("The container node left %s", what)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_containers(self) -> None:
        for ident in _ctr("containers", "ls", "-q", check=False).stdout.decode().split():
            _ctr("tasks", "kill", "-s", "SIGKILL", ident, check=False)
            _ctr("tasks", "delete", "-f", ident, check=False)
            _ctr("containers", "delete", ident, check=False)


def proxy_kubeconfig(plane_pki: Any, state_dir: Path, server: str, ca: Path) -> Path:
    """kube-proxy's identity: ``system:kube-proxy`` (bound to ``system:node-proxier`` by the default policy)."""
    pair = plane_pki.issue("kube-proxy", common_name="system:kube-proxy", client=True)
    return write_kubeconfig(
        state_dir / "kube-proxy.kubeconfig", server=server, ca=ca, client=pair, user="system:kube-proxy"
    )


__all__ = [
    "PACKAGES",
    "SERVICE_CIDR",
    "ContainerNode",
    "ContainerNodeError",
    "NodeBinaries",
    "cleanup_host",
    "ensure_node_binaries",
    "host_leftovers",
    "import_image",
    "node_address",
]
