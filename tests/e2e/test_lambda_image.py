"""An unmodified image in the layout of AWS's Python base image (``imageLayout: lambda``) on real containers.

The image is built here from a plain Debian base: Debian's python3, AWS's awslambdaric (PyPI) in /var/runtime, a
``/lambda-entrypoint.sh`` that execs ``python3 -m awslambdaric "$@"`` when ``AWS_LAMBDA_RUNTIME_API`` is set, the
handler in /var/task, ``ENTRYPOINT ["/lambda-entrypoint.sh"]`` and ``CMD ["app.handler"]``: no agent and none of our
runtime clients in it. An external extension in its ``/opt/extensions`` (the Python recorder of the agent's tests)
starts as on Lambda. The operator injects the agent (docs/extensions.md, "Lambda container images")."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
from typing import Any

import pytest

from kltest import Cluster
from kltest.e2e import REPO, example, function_pods, import_image, invoke, ready
from kltest.ric import AWSLAMBDARIC_VERSION, ensure_awslambdaric
from kubelambda.kube import KubeClient

RECORDER = REPO / "runtime-images" / "agent" / "testdata" / "recorder_extension.py"

# The convention of AWS's base images: the runtime interface emulator when run alone, the client under Lambda.
ENTRYPOINT = """#!/bin/sh
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ]; then
  echo "no AWS_LAMBDA_RUNTIME_API: this image has no runtime interface emulator" >&2
  exit 64
fi
export E2E_ENTRYPOINT_RAN="$0 $*"
exec python3 -m awslambdaric "$@"
"""

HANDLER = """\
import os
import sys


def handler(event, context):
    with open(os.environ["EXT_OUT"], encoding="utf-8") as f:
        extension = f.read().splitlines()
    if "fail" in event:
        raise ValueError("boom: " + event["fail"])
    return {
        "hello": event.get("name"),
        "entrypoint": os.environ.get("E2E_ENTRYPOINT_RAN"),
        "image_env": os.environ.get("E2E_IMAGE_ENV"),
        "executable": sys.executable,
        "client": sys.modules["awslambdaric"].__file__,
        "our_runtime": os.path.exists("/opt/kubelambda"),
        "runtime_api": bool(os.environ.get("AWS_LAMBDA_RUNTIME_API")),
        "function": context.function_name,
        "request_id": context.aws_request_id,
        "extension": extension,
    }
"""

DOCKERFILE = """\
FROM kubelambda/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
COPY runtime/ /var/runtime/
COPY lambda-entrypoint.sh /lambda-entrypoint.sh
COPY app.py /var/task/app.py
COPY recorder /opt/extensions/recorder
ENV LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime PYTHONPATH=/var/runtime \\
    E2E_IMAGE_ENV=set-by-the-image EXT_OUT=/tmp/extension.out
WORKDIR /var/task
ENTRYPOINT ["/lambda-entrypoint.sh"]
CMD ["app.handler"]
"""


@pytest.fixture(scope="module")
def lambda_layout_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built with Docker and imported into the node's containerd. awslambdaric is the one the
    compatibility tests install (pip, this machine's Python 3.11 = bookworm's python3)."""
    if sys.version_info[:2] != (3, 11):  # awslambdaric's native client is built for one CPython version
        raise RuntimeError(
            f"awslambdaric is installed for this machine's Python {sys.version_info.major}.{sys.version_info.minor}; "
            "the image's python3 is Debian bookworm's 3.11: run the e2e suite with a Python 3.11 venv"
        )
    work = tmp_path_factory.mktemp("lambda-image")
    shutil.copytree(ensure_awslambdaric(), work / "runtime")
    entry = work / "lambda-entrypoint.sh"
    entry.write_text(ENTRYPOINT)
    entry.chmod(0o755)
    (work / "app.py").write_text(HANDLER)
    recorder = work / "recorder"
    recorder.write_bytes(RECORDER.read_bytes())
    recorder.chmod(0o755)
    (work / "Dockerfile").write_text(DOCKERFILE)
    digest = hashlib.sha256(
        (DOCKERFILE + ENTRYPOINT + HANDLER + AWSLAMBDARIC_VERSION).encode() + RECORDER.read_bytes()
    ).hexdigest()[:12]
    image = f"kubelambda.io/e2e/lambda-layout-python:{digest}"
    subprocess.run(["docker", "build", "-q", "-t", image, str(work)], check=True, timeout=900)
    # Nothing of ours in it: the agent is injected by the operator.
    listing = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "ls", image, "-a", "/opt"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert "kubelambda" not in listing, listing
    import_image(image)
    return image


def request_id(answer: dict[str, Any]) -> str:
    return str(answer["ResponseMetadata"]["RequestId"])


async def test_a_lambda_layout_image_serves_invocations_through_the_gateway(
    cluster: Cluster, kube: KubeClient, client: Any, namespace: str, lambda_layout_image: str
) -> None:
    code = {
        "image": lambda_layout_image,
        "imageLayout": "lambda",
        "imageConfig": {
            "entryPoint": ["/lambda-entrypoint.sh"],
            "command": ["app.handler"],
            "workingDirectory": "/var/task",
        },
    }
    doc = example("hello-python3.11", handler="app.handler", code=code)
    doc["metadata"]["name"] = "lambda-image"
    doc["spec"]["timeoutSeconds"] = 30
    cluster.apply(doc, namespace)
    await ready(cluster, namespace, "lambda-image")
    function = f"{namespace}/lambda-image"

    answer = await asyncio.to_thread(invoke, client, function, {"name": "e2e"})
    assert "FunctionError" not in answer, answer["body"]
    first = answer["body"]
    assert first.pop("request_id") == request_id(answer), (first, answer["ResponseMetadata"])
    assert first.pop("extension")[0] == "REGISTERED lambda-image", first
    assert first == {
        "hello": "e2e",
        "entrypoint": "/lambda-entrypoint.sh app.handler",
        "image_env": "set-by-the-image",
        "executable": "/usr/bin/python3",
        "client": "/var/runtime/awslambdaric/__init__.py",
        "our_runtime": False,
        "runtime_api": True,
        "function": "lambda-image",
    }, first
    assert "REPORT RequestId:" in answer["log"], answer["log"]

    failed = await asyncio.to_thread(invoke, client, function, {"fail": "from the image"})
    assert failed.get("FunctionError") == "Unhandled", failed
    assert failed["body"]["errorType"] == "ValueError", failed["body"]
    assert failed["body"]["errorMessage"] == "boom: from the image", failed["body"]

    again = await asyncio.to_thread(invoke, client, function, {"name": "after the error"})
    assert "FunctionError" not in again, again["body"]
    assert again["body"]["hello"] == "after the error", again["body"]
    # The image's extension saw both earlier invocations, in order, before the environment was reused.
    seen = [line.split()[1] for line in again["body"]["extension"][1:]]
    assert seen[:2] == [request_id(answer), request_id(failed)], again["body"]["extension"]

    [pod] = [p for p in await function_pods(kube, namespace) if p["status"].get("phase") == "Running"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == lambda_layout_image
    assert container["command"][1:] == ["--", "/lambda-entrypoint.sh", "app.handler"], container["command"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["inject-agent"]


async def test_a_lambda_layout_image_without_image_config_runs_the_base_images_defaults(
    cluster: Cluster, client: Any, namespace: str, lambda_layout_image: str
) -> None:
    """No ``imageConfig``: ``/lambda-entrypoint.sh`` and the handler as its command, as AWS's base images."""
    doc = example(
        "hello-python3.11",
        handler="app.handler",
        code={"image": lambda_layout_image, "imageLayout": "lambda"},
    )
    doc["metadata"]["name"] = "lambda-image-defaults"
    doc["spec"]["timeoutSeconds"] = 30
    cluster.apply(doc, namespace)
    await ready(cluster, namespace, "lambda-image-defaults")
    answer = await asyncio.to_thread(
        invoke, client, f"{namespace}/lambda-image-defaults", {"name": "defaults"}
    )
    assert "FunctionError" not in answer, answer["body"]
    assert answer["body"]["hello"] == "defaults", answer["body"]
    assert answer["body"]["entrypoint"] == "/lambda-entrypoint.sh app.handler", answer["body"]
    assert answer["body"]["client"] == "/var/runtime/awslambdaric/__init__.py", answer["body"]
