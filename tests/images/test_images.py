"""The images `make images` builds, run for real in Docker (`make images-test`; not part of `make test` yet).

Each runtime image runs a hello Function the way the operator runs a function pod (non-root uid 65532, read-only
root filesystem with a tmpfs /tmp, no capabilities, a memory limit): the agent answers POST /invoke, the handler
reports the interpreter that ran it, which must be the one the image's runtime names, and the container sees
its memory limit. The control-plane image runs its CLI. No image holds a compiler or a build tool.

Docker is required: without a daemon that answers, or without an image, the tests fail (make docker-up, make images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kubelambda

REGISTRY = os.environ.get("IMAGE_REGISTRY", "ghcr.io/kubelambda")
CONTROL_PLANE = f"{REGISTRY}/kubelambda:{kubelambda.__version__}"
POD_USER = "65532:65532"  # the uid/gid the operator's function pods run as (resources/deployment.py RUN_AS)
# Compilers and build systems (the stages that compile the agent and the Java client carry them, not the images).
# Package managers that come with an interpreter (pip, npm, gem) are part of its distribution, as on Lambda.
BUILD_TOOLS = ("gcc", "cc", "c++", "make", "go", "mvn", "gradle", "javac")


@dataclass(frozen=True)
class RuntimeImage:
    tag: str  # runtime-<family>:<tag>
    runtime: str  # the runtime it serves (KUBELAMBDA_RUNTIME_NAME, AWS_EXECUTION_ENV)
    family: str
    version: str  # the interpreter's version must start with this ("" = no interpreter)

    @property
    def ref(self) -> str:
        return f"{REGISTRY}/runtime-{self.tag}"


# What `make images` builds on this machine's Debian bases (hack/images.sh), and the two that need the official
# base, tested when present.
OFFLINE = [
    RuntimeImage("python:3.11", "python3.11", "python", "3.11."),
    RuntimeImage("python:3.13", "python3.13", "python", "3.13."),
    RuntimeImage("nodejs:18", "nodejs18", "nodejs", "18."),
    RuntimeImage("nodejs:20", "nodejs20", "nodejs", "20."),
    RuntimeImage("java:17", "java17", "java", "17"),
    RuntimeImage("java:21", "java21", "java", "21"),
    RuntimeImage("ruby:3.1", "ruby3.1", "ruby", "3.1."),
    RuntimeImage("ruby:3.3", "ruby3.3", "ruby", "3.3."),
    RuntimeImage("provided:latest", "provided", "provided", ""),
    RuntimeImage("provided:go", "go", "provided", ""),
]
OFFICIAL_ONLY = [
    RuntimeImage("python:3.12", "python3.12", "python", "3.12."),
    RuntimeImage("nodejs:22", "nodejs22", "nodejs", "22."),
]


def _present(ref: str) -> bool:
    try:
        return (
            subprocess.run(["docker", "image", "inspect", ref], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


IMAGES = OFFLINE + [image for image in OFFICIAL_ONLY if _present(image.ref)]

PYTHON = """\
import os, sys
def handler(event, context):
    return {"hello": event["name"], "version": "%d.%d.%d" % sys.version_info[:3],
            "env": os.environ["AWS_EXECUTION_ENV"], "memory": context.memory_limit_in_mb}
"""
NODE = """\
exports.handler = async (event, context) => ({
  hello: event.name, version: process.versions.node,
  env: process.env.AWS_EXECUTION_ENV, memory: Number(context.memoryLimitInMB),
});
"""
RUBY = """\
def handler(event:, context:)
  { "hello" => event["name"], "version" => RUBY_VERSION, "env" => ENV["AWS_EXECUTION_ENV"],
    "memory" => context.memory_limit_in_mb.to_i }
end
"""
JAVA = """\
package hello;
import java.util.LinkedHashMap;
import java.util.Map;
public class Hello {
  public static Map<String, Object> handle(Map<String, Object> event) {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("hello", event.get("name"));
    out.put("version", System.getProperty("java.version"));
    out.put("env", System.getenv("AWS_EXECUTION_ENV"));
    out.put("memory", Integer.valueOf(System.getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")));
    return out;
  }
}
"""
BOOTSTRAP = """\
#!/bin/bash
# Lambda's custom runtime contract in bash + curl.
set -euo pipefail
api="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
headers="$(mktemp)"
while true; do
  event="$(curl -sS -D "$headers" "$api/invocation/next")"
  id="$(grep -i '^lambda-runtime-aws-request-id:' "$headers" | cut -d: -f2 | tr -d ' \\r')"
  name="$(printf '%s' "$event" | sed -n 's/.*"name": *"\\([^"]*\\)".*/\\1/p')"
  curl -sS -X POST "$api/invocation/$id/response" -d "{\\"hello\\": \\"$name\\", \\"version\\": \\"\\",
    \\"env\\": \\"$AWS_EXECUTION_ENV\\", \\"memory\\": $AWS_LAMBDA_FUNCTION_MEMORY_SIZE}" >/dev/null
done
"""


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        )
    return result


@pytest.fixture(scope="session", autouse=True)
def docker_daemon() -> None:
    if shutil.which("docker") is None:
        pytest.fail(
            "tests/images need Docker and no 'docker' command is on PATH: run make docker-up, then make images"
        )
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail(
            f"tests/images need Docker and the daemon does not answer: run make docker-up\n{info.stderr}"
        )


def require_image(ref: str) -> None:
    if not _present(ref):
        pytest.fail(f"image {ref} is missing: run make images")


def task_root(image: RuntimeImage, tmp: Path) -> tuple[Path, str]:
    """The hello Function's code for the image's family (world-readable: the container runs as another uid), and
    its handler."""
    root = tmp / "task"
    root.mkdir()
    if image.family == "python":
        (root / "app.py").write_text(PYTHON)
        handler = "app.handler"
    elif image.family == "nodejs":
        (root / "app.js").write_text(NODE)
        handler = "app.handler"
    elif image.family == "ruby":
        (root / "app.rb").write_text(RUBY)
        handler = "app.handler"
    elif image.family == "java":
        src = tmp / "Hello.java"
        src.write_text(JAVA)
        javac = shutil.which("javac")
        assert javac, "javac is needed to compile the Java hello Function (Debian: default-jdk-headless)"
        subprocess.run([javac, "--release", "17", "-d", str(root), str(src)], check=True, timeout=120)
        handler = "hello.Hello::handle"
    else:
        (root / "bootstrap").write_text(BOOTSTRAP)
        handler = "hello"
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755)
    return root, handler


@pytest.fixture
def container(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Names of the containers a test starts; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name, check=False)


def wait_ready(ip: str, name: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    logs = docker("logs", name, check=False)
    pytest.fail(
        f"the agent in {name} was not ready within {deadline_s}s ({last}); logs:\n{logs.stdout}{logs.stderr}"
    )


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.tag)
def test_runtime_image_invokes_a_hello_function(
    image: RuntimeImage, tmp_path: Path, container: list[str]
) -> None:
    require_image(image.ref)
    config = json.loads(docker("image", "inspect", image.ref).stdout)[0]["Config"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", config["User"]), f"{image.ref} runs as {config['User']!r}"
    assert config["Entrypoint"] == ["/opt/kubelambda/bin/kubelambda-agent"]
    assert f"KUBELAMBDA_RUNTIME_NAME={image.runtime}" in config["Env"]

    root, handler = task_root(image, tmp_path)
    name = f"kl-images-{image.tag.replace(':', '-').replace('.', '')}-{os.getpid()}"
    container.append(name)
    # As the operator runs a function pod: its uid, read-only root, /tmp writable, no capabilities, 256 MiB.
    docker(
        "run", "-d", "--name", name, "--user", POD_USER, "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", "256m",
        "-v", f"{root}:/var/task:ro", "-e", f"KUBELAMBDA_HANDLER={handler}", "-e", "KUBELAMBDA_MEMORY_MB=256",
        "-e", "KUBELAMBDA_TIMEOUT=30", image.ref,
    )  # fmt: skip
    ip = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
    ).stdout.strip()
    assert ip, f"{name} has no IP address"
    wait_ready(ip, name)

    request = urllib.request.Request(
        f"http://{ip}:8080/invoke", data=json.dumps({"name": "kubelambda"}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        assert response.status == 200, body
        assert response.headers.get("X-Amz-Function-Error") is None, body
    result = json.loads(body)
    assert result["hello"] == "kubelambda", result
    assert result["env"] == f"AWS_Lambda_{image.runtime}", result
    assert int(result["memory"]) == 256, result
    # No substitution: the interpreter that ran the handler is the one the runtime names.
    assert str(result["version"]).startswith(image.version), (
        f"{image.ref} ran {image.runtime} on version {result['version']}"
    )
    # The kernel's limit, as the function's container sees it (cgroup v1 or v2).
    limit = docker(
        "exec", name, "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    ).stdout.strip()  # fmt: skip
    assert limit == str(256 * 1024 * 1024), limit


@pytest.mark.parametrize("ref", [CONTROL_PLANE] + [i.ref for i in IMAGES], ids=lambda r: r.rsplit("/", 1)[-1])
def test_memory_limit_64m_holds_in_the_container(ref: str) -> None:
    require_image(ref)
    limit = docker(
        "run", "--rm", "--memory", "64m", "--entrypoint", "sh", ref, "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    ).stdout.strip()  # fmt: skip
    assert limit == "67108864", f"{ref}: --memory 64m shows {limit}"


@pytest.mark.parametrize("ref", [CONTROL_PLANE] + [i.ref for i in IMAGES], ids=lambda r: r.rsplit("/", 1)[-1])
def test_no_build_tools_and_not_root(ref: str) -> None:
    require_image(ref)
    found = docker(
        "run", "--rm", "--entrypoint", "sh", ref, "-c",
        f"id -u; for t in {' '.join(BUILD_TOOLS)}; do command -v $t || true; done",
    ).stdout.split()  # fmt: skip
    uid, tools = found[0], found[1:]
    assert uid != "0", f"{ref} runs as root"
    assert not tools, f"{ref} holds build tools: {tools}"


def test_control_plane_image_runs_its_commands() -> None:
    require_image(CONTROL_PLANE)
    for command in ("operator", "gateway", "async-worker", "bridge", "fetch-code"):
        result = docker("run", "--rm", "--read-only", "--user", POD_USER, CONTROL_PLANE, command, "--help")
        assert "usage:" in result.stdout, (command, result.stdout, result.stderr)
    version = docker("run", "--rm", CONTROL_PLANE, "--version").stdout
    assert kubelambda.__version__ in version, version
