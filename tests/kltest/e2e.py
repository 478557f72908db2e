"""Helpers of the e2e suite (tests/e2e): Functions from the examples, invokes with boto3, the host's state."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kltest.cluster import Cluster, backend
from kltest.wait import wait_for
from kubelambda.devcluster import _containernode
from kubelambda.devcluster._containernode import BRIDGE
from kubelambda.kube import KubeClient, resource_path

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]


def example(name: str, **spec: Any) -> JSON:
    doc: JSON = copy.deepcopy(yaml.safe_load((REPO / "examples" / name / "function.yaml").read_text()))
    doc["spec"].update(spec)
    return doc


def python(name: str, code: str, **spec: Any) -> JSON:
    doc = example("hello-python3.11", **spec)
    doc["metadata"]["name"] = name
    doc["spec"]["code"] = {"inline": {"app.py": code}}
    return doc


def code_image(name: str, work: Path, dockerfile: str) -> str:
    """``dockerfile`` built by Docker in the context ``work``, tagged ``kubelambda.io/e2e/<name>:<hash of the
    context>`` and imported into the running node's containerd; returns the image."""
    (work / "Dockerfile").write_text(dockerfile)
    digest = hashlib.sha256()
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(work)).encode() + b"\0" + path.read_bytes())
    image = f"kubelambda.io/e2e/{name}:{digest.hexdigest()[:12]}"
    subprocess.run(["docker", "build", "-q", "-t", image, str(work)], check=True, timeout=900)
    import_image(image)
    return image


def copy_distributions(names: list[str], target: Path) -> None:
    """The files of these installed distributions (this venv's: CPython 3.11, as the python3.11 image's) into
    ``target``, as a Lambda deployment package bundles its dependencies."""
    for name in names:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or "__pycache__" in file.parts or not source.is_file():
                continue
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / file)


def invoke(client: Any, function: str, payload: JSON | None = None, **kwargs: Any) -> JSON:
    response = client.invoke(
        FunctionName=function, Payload=json.dumps(payload or {}).encode(), LogType="Tail", **kwargs
    )
    raw = response["Payload"].read()
    response["body"] = json.loads(raw) if raw else None
    response["log"] = base64.b64decode(response.get("LogResult", "")).decode()
    return response


def report(log: str) -> JSON:
    line = next(line for line in log.splitlines() if line.startswith("REPORT "))
    return {k.strip(): v for k, v in re.findall(r"([A-Za-z ]+): ([^\t]+)\t", line.removeprefix("REPORT "))}


async def ready(cluster: Cluster, namespace: str, name: str, timeout: float = 240) -> None:
    await wait_for(
        lambda: asyncio.to_thread(cluster.kubectl_json, "get", "function", "-n", namespace, name),
        lambda fn: any(
            c["type"] == "Ready" and c["status"] == "True" for c in fn.get("status", {}).get("conditions", [])
        ),
        what=f"Function {namespace}/{name} Ready",
        timeout=timeout,
    )


async def function_pods(kube: KubeClient, namespace: str) -> list[JSON]:
    pods = await kube.get(resource_path("v1", "pods", namespace=namespace))
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def kind_node() -> str:
    """The kind backend's node container (one node: the control plane's)."""
    return f"{os.environ.get('KUBELAMBDA_KIND_CLUSTER', 'kubelambda')}-control-plane"


def import_image(image: str) -> None:
    """A Docker image into the node under test: the container node's containerd
    (``_containernode.import_image``), or on kind hack/kind-load.sh into the kind node (imported, unpacked when a
    container first uses it; ``kind load docker-image`` unpacked every layer and outlived tests' timeouts)."""
    if backend() != "kind":
        _containernode.import_image(image)
        return
    load = ["bash", str(REPO / "hack" / "kind-load.sh"), kind_node(), image]
    result = subprocess.run(load, capture_output=True, text=True, check=False, timeout=900)
    assert result.returncode == 0, f"hack/kind-load.sh {image} failed: {result.stderr[-500:]}"


def on_node(*argv: str, check: bool = True) -> str:
    """``argv`` run where the pods run, its stdout: this host for the container node, inside the kind node's
    container (``docker exec``) for the kind backend."""
    prefix = ["docker", "exec", kind_node()] if backend() == "kind" else []
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join([*prefix, *argv])} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def node_bridge() -> str:
    """The pods' bridge on the node: the container node's, or the kind node's (hack/kind-node/default-cni.yaml)."""
    return "cni0" if backend() == "kind" else BRIDGE


# What the node's pods leave when they are not cleaned up (test_zz_chart_and_down): lines of host_snapshot()
# holding one of these are the node's.
NODE_MARKS = {
    "local": ("klbr0", "10.245.", "KUBE-", "CNI-", "/run/kubelambda", "/var/lib/kubelambda", "veth"),
    "kind": ("cni0", "10.244.", "KUBE-", "CNI-", "/run/containerd", "/var/lib/kubelet/pods", "veth"),
}


POD_CHAIN = re.compile(r"KUBE-POD-FW-[A-Z0-9]+")


def host_snapshot() -> dict[str, set[str]]:
    """What the node could leave behind, as lines to compare before and after: on this host for the container
    node (before ``up``, after ``down``), inside the kind node for the kind backend."""

    def lines(*argv: str) -> set[str]:
        out = on_node(*argv, check=False)
        # kube-router renames a pod's firewall chain (KUBE-POD-FW-<hash>) when it rebuilds it, for pods that stay
        # (CoreDNS's on kind): the chain is compared by its rules, which name the pod and its address.
        return {
            POD_CHAIN.sub("KUBE-POD-FW-*", line)
            for line in out.splitlines()
            if line and not line.startswith("#")
        }

    mounts = {line.split()[4] for line in on_node("cat", "/proc/self/mountinfo").splitlines()}
    links = set()
    bridge = node_bridge()
    for line in lines("ip", "-o", "link"):
        words = line.split()
        # Docker's containers (image builds, other users of this machine) come and go on Docker's own bridges:
        # a link enslaved to a bridge other than the node's is never the node's.
        master = words[words.index("master") + 1] if "master" in words else None
        if master is None or master == bridge:
            links.add(line.split(":", 2)[1].split("@")[0].strip())
    return {
        "mounts": mounts,
        "links": links,
        "iptables filter": {
            line for line in lines("iptables-save", "-t", "filter") if not line.startswith(":")
        }
        | {line.split()[0] for line in lines("iptables-save", "-t", "filter") if line.startswith(":")},
        "iptables nat": {line for line in lines("iptables-save", "-t", "nat") if not line.startswith(":")}
        | {line.split()[0] for line in lines("iptables-save", "-t", "nat") if line.startswith(":")},
        "ipsets": lines("ipset", "list", "-n"),
    }


def new_on_node(before: dict[str, set[str]]) -> dict[str, list[str]]:
    """What host_snapshot() holds now and did not hold in ``before``, of the node's (NODE_MARKS)."""
    marks = NODE_MARKS[backend()]
    new = {
        what: sorted(line for line in lines - before[what] if any(mark in line for mark in marks))
        for what, lines in host_snapshot().items()
    }
    return {what: lines for what, lines in new.items() if lines}


def cpu_quota(container_id: str) -> tuple[int, int]:
    """A container's CFS quota and period (µs), read from its cgroup on the node (cgroup v1 or v2, either cgroup
    driver: the directory named after the container, ``<id>`` or ``cri-containerd-<id>.scope``)."""
    script = (
        f'for d in $(find /sys/fs/cgroup/ -type d -name "*{container_id}*"); do '
        'if [ -f "$d/cpu.max" ]; then cat "$d/cpu.max"; '
        'elif [ -f "$d/cpu.cfs_quota_us" ]; then echo "$(cat "$d/cpu.cfs_quota_us") $(cat "$d/cpu.cfs_period_us")"; '
        "fi; done"
    )
    found = set(on_node("sh", "-c", script).splitlines())
    assert len(found) == 1, f"the CPU settings of container {container_id} on the node: {found}"
    quota, period = found.pop().split()
    return -1 if quota == "max" else int(quota), int(period)


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except OSError as e:
    print(type(e).__name__, e)
"""


def connect(cluster: Cluster, namespace: str, pod: str, ip: str, port: int, container: str = "") -> str:
    """A TCP connect from inside ``pod`` (its image has python3) to ``ip``:``port``: ``connected`` or the error."""
    which = ["-c", container] if container else []
    out = cluster.kubectl(
        "exec", "-n", namespace, pod, *which, "--", "python3", "-c", CONNECT, ip, str(port)
    ).stdout.strip()
    return out
