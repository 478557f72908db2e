"""``kubelambda dev serve``: runs the control plane and the local node until SIGTERM / SIGINT.

It records what runs where in ``<state-dir>/dev.json`` (read by ``dev status``, ``dev down``, the tests
and later components such as the gateway), and stops everything it started on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubelambda import natsauth
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._controlplane import ControlPlane, Endpoints
from kubelambda.devcluster._network import PodAddresses
from kubelambda.devcluster._node import LocalNode
from kubelambda.devcluster._platform import DEFAULT_GATEWAY_PORT, DEFAULT_NATS_PORT, Platform
from kubelambda.devcluster._ports import bindable
from kubelambda.kube import KubeClient, resource_path

logger = logging.getLogger(__name__)

STATE_FILE = "dev.json"


@dataclass
class DevState:
    """The machine-readable description of a running local cluster (``<state>/dev.json``, the state folder of docs/local-cluster.md)."""

    state: str  # starting | running | stopped | failed
    pid: int
    kubeconfig: str = ""
    server: str = ""
    node: str = ""
    kubelet_port: int = 0
    node_ip: str = ""
    components: dict[str, int] = field(default_factory=dict)
    logs: str = ""
    started_at: float = 0.0
    startup_seconds: float = 0.0
    pod_network: str = ""
    gateway_url: str | None = None
    nats_url: str | None = None  # NATS JetStream of Event invocations, dead letters (`kubelambda dlq`), logs
    code_store_url: str | None = None  # the S3 endpoint of the control-plane API's code store (SeaweedFS)
    endpoints: dict[str, str] = field(default_factory=dict)  # every URL the platform serves, by name
    moved: list[str] = field(default_factory=list)  # fixed ports that were taken, and where they went instead
    kubectl: str = ""  # the kubectl of the server's version (`dev env` puts its folder first on PATH)
    limits: str = ""  # whether the node enforces memory and CPU limits, and how
    aws_access_key_id: str = ""  # the developer's access key: may invoke every Function (docs/security.md)
    aws_secret_access_key: str = ""
    error: str = ""
    node_kind: str = "process"  # process (the default) | container (docs/local-cluster.md)
    gateway_access: str = ""  # how the gateway is reached (the container node: NodePort on the node address)

    def write(self, state_dir: Path) -> None:
        tmp = state_dir / f".{STATE_FILE}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o600)  # it holds the developer's secret access key
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(state_dir / STATE_FILE)

    @classmethod
    def read(cls, state_dir: Path) -> DevState | None:
        path = state_dir / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _ports_free(ports: Endpoints) -> bool:
    return all(bindable("127.0.0.1", port) for port in asdict(ports).values())


def _ports(state_dir: Path) -> Endpoints:
    """The ports of the last run when they are still free (etcd remembers its peer URL), else new ones."""
    path = state_dir / "ports.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        previous = Endpoints(**json.loads(path.read_text()))
        if _ports_free(previous):
            return previous
    ports = Endpoints.allocate()
    path.write_text(json.dumps(asdict(ports)))
    return ports


async def wait_until_usable(kubeconfig: Path, node_name: str, *, timeout_seconds: float = 60.0) -> None:
    """Until pods can be created: the node is Ready and the ``default`` ServiceAccount exists (the
    ServiceAccount admission plugin refuses pods before the controller-manager has created it)."""
    deadline = time.monotonic() + timeout_seconds
    last = ""
    async with KubeClient.from_kubeconfig(kubeconfig) as kube:
        while time.monotonic() < deadline:
            sa = await kube.get_or_none(
                resource_path("v1", "serviceaccounts", namespace="default", name="default")
            )
            node = await kube.get_or_none(resource_path("v1", "nodes", name=node_name))
            ready = node is not None and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            if sa is not None and ready:
                return
            last = f"default ServiceAccount {'present' if sa else 'absent'}, node Ready={ready}"
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the local cluster was not usable after {timeout_seconds:.0f} s: {last}")


class _Running(Protocol):
    def check_running(self) -> None: ...


async def _run_until_stopped(
    state: DevState,
    state_dir: Path,
    started: float,
    plane: ControlPlane,
    stop: asyncio.Event,
    components: Sequence[_Running],
) -> None:
    """Records the cluster as up, then checks every second that each of ``components`` still runs (their
    ``check_running`` raises when one died) until ``stop`` is set."""
    state.startup_seconds = round(time.monotonic() - started, 2)
    state.write(state_dir)
    logger.info("The local cluster is up in %.1f s; kubeconfig: %s", state.startup_seconds, plane.kubeconfig)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        for component in components:
            component.check_running()


async def serve(
    state_dir: Path,
    *,
    node_name: str = "kubelambda-local",
    backoff_seconds: float = 10.0,
    pod_network: str = "auto",
    platform: bool = True,
    limits: str = "auto",
    node_memory_mb: int | None = None,
    node_cpus: int | None = None,
    node_kind: str = "process",
    gateway_port: int = DEFAULT_GATEWAY_PORT,
    nats_port: int = DEFAULT_NATS_PORT,
) -> int:
    """``platform=False`` runs only Kubernetes (the test suites run their own operator and gateway);
    ``node_memory_mb``, ``node_cpus``: what the process node offers pods (default the machine's);
    ``gateway_port``/``nats_port``: the fixed ports the gateway and NATS keep when free."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    state = DevState(state="starting", pid=os.getpid(), started_at=time.time(), logs=str(state_dir / "logs"))
    state.write(state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    if node_kind not in ("process", "container"):
        raise ValueError(f"node kind must be process or container, not {node_kind!r}")
    if node_kind == "container":
        return await _serve_container(state_dir, state, stop, node_name=node_name, platform=platform)
    binaries = await asyncio.to_thread(ensure_binaries)
    plane = ControlPlane(state_dir, binaries, node_name=node_name, ports=_ports(state_dir))
    node: LocalNode | None = None
    kubelambda: Platform | None = None
    code = 0
    try:
        logger.info("Starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
        await plane.start()
        # The ports it bound (new ones when one was taken while it started) are the ones to try next time.
        (state_dir / "ports.json").write_text(json.dumps(asdict(plane.ports)))
        addresses = PodAddresses(state_dir, mode=pod_network)
        await addresses.cleanup_previous()
        node_ip = await addresses.take_node_address()
        serving = plane.kubelet_serving_cert(node_ip)
        node = LocalNode(
            kubeconfig=plane.node_kubeconfig(),
            state_dir=state_dir,
            node_name=node_name,
            kube_version=binaries.kube_apiserver.parent.name,
            serving_cert=serving.cert,
            serving_key=serving.key,
            ca=plane.ca.pair.cert,
            api_host="127.0.0.1",
            api_port=plane.ports.apiserver,
            backoff_seconds=backoff_seconds,
            addresses=addresses,
            node_ip=node_ip,
            limits=limits,
            memory_mb=node_memory_mb,
            cpus=node_cpus,
        )
        await node.start()
        await wait_until_usable(plane.kubeconfig, node_name)
        if platform:
            logger.info("Starting the kubelambda operator and gateway")
            kubelambda = Platform(
                state_dir, binaries, plane.kubeconfig, gateway_port=gateway_port, nats_port=nats_port
            )
            await kubelambda.start()
            state.gateway_url = kubelambda.gateway_url
            # The CLI's (kubelambda logs, kubelambda dlq): the admin user's; dev.json is the user's own (0600).
            state.nats_url = kubelambda.nats.url_as("admin") if kubelambda.nats is not None else None
            store = kubelambda.code_store
            state.code_store_url = store.endpoint if store is not None else None
            state.moved = list(kubelambda.moved)
            state.aws_access_key_id = kubelambda.access_key_id
            state.aws_secret_access_key = kubelambda.secret_access_key
        state.state = "running"
        state.kubeconfig = str(plane.kubeconfig)
        state.server = plane.server
        state.kubectl = str(binaries.kubectl)
        state.node = node_name
        state.kubelet_port = node.kubelet_port
        state.node_ip = node_ip
        state.components = {
            **plane.pids(),
            "local-node": os.getpid(),
            **(kubelambda.pids() if kubelambda else {}),
        }
        state.pod_network = f"{node.addresses.mode} {node.addresses.network}"
        state.endpoints = {
            "api server": plane.server,
            "kubelet": f"https://{node_ip}:{node.kubelet_port}",
            **({"gateway": state.gateway_url} if state.gateway_url else {}),
            **({"nats": natsauth.redacted(state.nats_url)} if state.nats_url else {}),
            **({"code store": state.code_store_url} if state.code_store_url else {}),
        }
        state.limits = node.cgroups.describe() if node.cgroups is not None else ""
        await _run_until_stopped(
            state, state_dir, started, plane, stop, [plane, *([kubelambda] if kubelambda is not None else [])]
        )
    except Exception as e:
        logger.exception("The local cluster failed")
        state.state = "failed"
        state.error = str(e)
        code = 1
    finally:
        logger.info("Stopping the local cluster")
        if kubelambda is not None:
            await kubelambda.stop()
        if node is not None:
            try:
                await node.stop()
            except Exception:
                logger.exception("The local node did not stop cleanly")
        await plane.stop()
        if state.state != "failed":
            state.state = "stopped"
        state.write(state_dir)
        logger.info("Stopped the local cluster")
    return code


async def _serve_container(
    state_dir: Path, state: DevState, stop: asyncio.Event, *, node_name: str, platform: bool
) -> int:
    """``serve`` with the container node (containerd + kubelet + CNI + kube-proxy) instead of the process node;
    with ``platform``, kubelambda runs from its Helm chart as pods (:mod:`kubelambda.devcluster._chart`)."""
    from kubelambda.devcluster._containernode import (
        ContainerNode,
        check_host,
        ensure_node_binaries,
        node_address,
        proxy_kubeconfig,
    )

    started = time.monotonic()
    state.node_kind = "container"
    code = 0
    plane: ControlPlane | None = None
    node: ContainerNode | None = None
    chart: Any = None
    try:
        check_host()
        binaries = await asyncio.to_thread(ensure_binaries)
        node_binaries = await asyncio.to_thread(ensure_node_binaries)
        node_ip = node_address()
        plane = ControlPlane(
            state_dir, binaries, node_name=node_name, ports=_ports(state_dir), advertise_address=node_ip
        )
        logger.info("Starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
        await plane.start()
        (state_dir / "ports.json").write_text(json.dumps(asdict(plane.ports)))
        serving = plane.kubelet_serving_cert(node_ip)
        from kubelambda.devcluster._chart import chart_images

        images = await asyncio.to_thread(chart_images, control_plane=platform)
        node = ContainerNode(
            state_dir=state_dir,
            node_name=node_name,
            node_ip=node_ip,
            kubeconfig=plane.node_kubeconfig(),
            admin_kubeconfig=plane.kubeconfig,
            proxy_kubeconfig=proxy_kubeconfig(plane.ca, state_dir, plane.server, plane.ca.pair.cert),
            ca=plane.ca.pair.cert,
            serving_cert=serving.cert,
            serving_key=serving.key,
            binaries=node_binaries,
            images=images,
        )
        logger.info("Starting the container node (containerd, CoreDNS, kubelet, kube-proxy, kube-router)")
        await node.start()
        await wait_until_usable(plane.kubeconfig, node_name)
        if platform:
            from kubelambda.devcluster._chart import ChartPlatform

            logger.info("Installing kubelambda from its Helm chart")
            chart = ChartPlatform(
                state_dir,
                binaries,
                plane.kubeconfig,
                node_ip=node_ip,
                nats_image=node.images[1],
                api_server_port=plane.ports.apiserver,
            )
            await chart.install()
            state.gateway_url = chart.gateway_url
            state.gateway_access = chart.access
            state.aws_access_key_id = chart.access_key_id
            state.aws_secret_access_key = chart.secret_access_key
        state.state = "running"
        state.kubeconfig = str(plane.kubeconfig)
        state.server = plane.server
        state.node = node_name
        state.kubelet_port = node.kubelet_port
        state.node_ip = node_ip
        state.components = {**plane.pids(), **node.pids()}
        state.pod_network = node.describe()
        state.limits = "enforced by the kubelet and runc (each container's cgroup)"
        await _run_until_stopped(state, state_dir, started, plane, stop, [plane, node])
    except Exception as e:
        logger.exception("The local cluster failed")
        state.state = "failed"
        state.error = str(e)
        code = 1
    finally:
        logger.info("Stopping the local cluster")
        if chart is not None:
            with contextlib.suppress(Exception):
                await chart.stop()
        if node is not None:
            try:
                await node.stop()
            except Exception:
                logger.exception("The container node did not stop cleanly")
        if plane is not None:
            await plane.stop()
        if state.state != "failed":
            state.state = "stopped"
        state.write(state_dir)
        logger.info("Stopped the local cluster")
    return code
