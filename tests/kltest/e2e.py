"""Helpers of the e2e suite (tests/e2e): Functions from the examples, invokes with boto3, the host's state."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kltest.cluster import Cluster
from kltest.wait import wait_for
from kubelambda.devcluster._containernode import BRIDGE, import_image
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


def host_snapshot() -> dict[str, set[str]]:
    """What the container node could leave behind, as lines to compare before ``up`` and after ``down``."""

    def lines(*argv: str) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        return {line for line in out.splitlines() if line and not line.startswith("#")}

    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    links = set()
    for line in lines("ip", "-o", "link"):
        words = line.split()
        # Docker's containers (image builds, other users of this machine) come and go on Docker's own bridges:
        # a link enslaved to a bridge other than the node's is never the node's.
        master = words[words.index("master") + 1] if "master" in words else None
        if master is None or master == BRIDGE:
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
