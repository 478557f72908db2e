"""Layers and extensions on the local node, end to end: a Function whose layers (ConfigMaps holding zips) bring a
Python package, a later layer overriding an earlier one, and an external extension in /opt/extensions that the
agent starts beside the runtime. Deployed through the operator; invoked on its pod."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.files import zip_bytes
from kltest.platform import start_operator
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration

HANDLER = b"""import os

import only_first
import shared


def handler(event, context):
    log = os.path.join(os.environ.get("TMPDIR", "/tmp"), "extension.log")
    seen = open(log).read().split() if os.path.exists(log) else []
    return {"version": shared.VERSION, "first": only_first.FIRST, "seen": seen, "id": context.aws_request_id}
"""

# An external extension in Python: registers, then records every INVOKE's request id in $TMPDIR/extension.log.
EXTENSION = b"""#!/usr/bin/env python3
import json, os, sys, urllib.request

base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
req = urllib.request.Request(base + "/register", data=b'{"events": ["INVOKE", "SHUTDOWN"]}',
                             headers={"Lambda-Extension-Name": os.path.basename(sys.argv[0])}, method="POST")
with urllib.request.urlopen(req) as resp:
    ext_id = resp.headers["Lambda-Extension-Identifier"]
print("recorder extension registered", flush=True)
log = os.path.join(os.environ.get("TMPDIR", "/tmp"), "extension.log")
while True:
    req = urllib.request.Request(base + "/event/next", headers={"Lambda-Extension-Identifier": ext_id})
    with urllib.request.urlopen(req) as resp:
        event = json.load(resp)
    if event["eventType"] == "SHUTDOWN":
        break
    with open(log, "a") as f:
        f.write(event["requestId"] + "\\n")
"""


def layer_configmap(name: str, files: dict[str, tuple[bytes, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "binaryData": {"layer.zip": base64.b64encode(zip_bytes(files)).decode()},
    }


async def test_layers_and_an_extension_on_the_local_node(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    cluster.apply(
        layer_configmap(
            "layer-one",
            {
                "python/shared.py": (b"VERSION = 1\n", 0o100644),
                "python/only_first.py": (b"FIRST = True\n", 0o100644),
            },
        ),
        namespace,
    )
    cluster.apply(layer_configmap("layer-two", {"python/shared.py": (b"VERSION = 2\n", 0o100644)}), namespace)
    cluster.apply(layer_configmap("layer-ext", {"extensions/recorder": (EXTENSION, 0o100755)}), namespace)
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0)
    try:
        doc = {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "layered"},
            "spec": {
                "runtime": "python3.11",
                "handler": "app.handler",
                "code": {"inline": {"app.py": HANDLER.decode()}},
                "layers": [
                    {"configMap": {"name": "layer-one"}},
                    {"configMap": {"name": "layer-two"}},
                    {"configMap": {"name": "layer-ext"}},
                ],
                "scaling": {"minInstances": 1},
            },
        }
        cluster.apply(doc, namespace)
        path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="layered")
        await wait_for(
            lambda: kube.get(path),
            lambda fn: any(
                c["type"] == "Ready" and c.get("reason") == "InstancesReady"
                for c in (fn.get("status") or {}).get("conditions", [])
            ),
            what="the layered function's first instance ready",
            timeout=120,
        )
        pods = await kube.list(
            resource_path("v1", "pods", namespace=namespace),
            params={"labelSelector": "kubelambda.io/function=layered"},
        )
        (pod,) = pods["items"]
        assert [s["name"] for s in pod["status"]["initContainerStatuses"]] == ["fetch-layers", "copy-opt"]
        assert all(s["state"]["terminated"]["exitCode"] == 0 for s in pod["status"]["initContainerStatuses"])
        ip = pod["status"]["podIP"]
        bodies = []
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(f"http://{ip}:8080/invoke", json={}) as resp:
                    assert resp.status == 200, await resp.text()
                    bodies.append(await resp.json())
        first, second = bodies
        assert first["version"] == 2  # the later layer's shared.py
        assert first["first"] is True  # the earlier layer's other module is still there
        # The extension saw the first invocation before the environment took the second.
        assert first["id"] in second["seen"]
    finally:
        await operator.stop()
