"""The image → command table: how the local node runs a container image as a local process.

There is no container runtime here, so an image is a name for a command that already exists on this machine.
Each entry gives the image's ENTRYPOINT and CMD as local argv, with Kubernetes' usual override rules:
a container's ``command`` replaces the entrypoint and its ``args`` replace the CMD. ``paths`` translates
paths inside the image (``/usr/local/bin/python``) to local programs; other programs are looked up on PATH.

An image that is not in this table cannot run locally: its pod stays Pending with the container waiting
for reason ``ImageNotRunnableLocally`` (the local equivalent of ``ErrImagePull``). A runtime image runs only on an
interpreter of its runtime's version (``_interpreters``); without one its container waits with ``RuntimeUnavailable``.

This is the one place that lists what the local node can run; docs/local-cluster.md shows it as a table.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubelambda.runtimes.table import FAMILIES

IMAGE_NOT_RUNNABLE = "ImageNotRunnableLocally"
COMMAND_NOT_FOUND = "CommandNotFoundLocally"

_PYTHON = sys.executable
_PYTHON_PATHS = {
    "python": _PYTHON,
    "python3": _PYTHON,
    "/usr/bin/python3": _PYTHON,
    "/usr/local/bin/python": _PYTHON,
    "/usr/local/bin/python3": _PYTHON,
}


@dataclass(frozen=True)
class LocalImage:
    description: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict)
    # An entrypoint that depends on the pod (its address, its root folder), computed from the container's
    # environment, which it may extend; used instead of ``entrypoint`` when the container sets no command.
    prepare: Callable[[dict[str, str]], list[str]] | None = None


def _runtime_entrypoint(env: dict[str, str]) -> list[str]:
    """A runtime image's entrypoint on the local node: the agent, bound to the pod's address, with the task root
    under ``$KUBELAMBDA_ROOTFS`` and this machine's runtime client, on the interpreter of the runtime's version
    (``_interpreters``: none installed = ``RuntimeUnavailable``). Computed in the node (no interpreter starts
    just to work out the agent's command line: that cost ≈0.3 s of every cold start)."""
    from kubelambda.devcluster import _interpreters
    from kubelambda.runtimes import RUNTIMES, agent_binary, local_runtime_dir, worker_command

    runtime = env.get("KUBELAMBDA_RUNTIME_NAME", "")
    if runtime not in RUNTIMES:
        raise NotRunnable(
            COMMAND_NOT_FOUND,
            f"runtime {runtime!r} (KUBELAMBDA_RUNTIME_NAME) cannot run locally; known: {', '.join(RUNTIMES)}",
        )
    try:
        interpreter = _interpreters.resolve(runtime, substitute=_interpreters.substitution_allowed())
    except _interpreters.RuntimeUnavailable as e:
        raise NotRunnable(_interpreters.RUNTIME_UNAVAILABLE, str(e)) from None
    if interpreter.substitute_for:
        # The agent logs it and adds it to every REPORT line.
        env["KUBELAMBDA_RUNTIME_SUBSTITUTE"] = f"{runtime} on {interpreter.describe()}"
    rootfs = Path(env["KUBELAMBDA_ROOTFS"])
    ip = env["KUBELAMBDA_POD_IP"]
    task_root = rootfs / env.get("LAMBDA_TASK_ROOT", "/var/task").lstrip("/")
    runtime_dir = local_runtime_dir(runtime)  # runtime-images/<folder>, or the cached build (Java)
    env["TMPDIR"] = str(rootfs / "tmp")
    return [
        str(agent_binary()),
        f"--listen={ip}:8080",
        f"--runtime-api={ip}:9001",
        f"--task-root={task_root}",
        f"--runtime-dir={runtime_dir}",
        # The pod's /opt (its layers, extensions in /opt/extensions), never this machine's.
        f"--opt-dir={rootfs / 'opt'}",
        "--",
        *worker_command(runtime, runtime_dir=runtime_dir, interpreter=interpreter.path),
    ]


class _AgentInImage(Mapping[str, str]):
    """The agent's path in a runtime image, ``/opt/kubelambda/bin/kubelambda-agent`` (a Function with layers runs
    it as ``copy-opt`` in an init container), as this machine's agent build, looked up only when asked for."""

    key = "/opt/kubelambda/bin/kubelambda-agent"

    def __getitem__(self, k: str) -> str:
        if k != self.key:
            raise KeyError(k)
        from kubelambda.runtimes import agent_binary

        return str(agent_binary())

    def __iter__(self) -> Iterator[str]:
        return iter([self.key])

    def __len__(self) -> int:
        return 1


def _runtime_images() -> dict[str, LocalImage]:
    """One runtime image per family of the runtime table (the tag picks the runtime: KUBELAMBDA_RUNTIME_NAME)."""
    out = {}
    for family in FAMILIES.values():
        client = f"runtime-images/{family.name}" if family.programs else "the function's bootstrap"
        out[f"ghcr.io/kubelambda/{family.image}"] = LocalImage(
            f"the {family.title} runtime: the agent on $KUBELAMBDA_POD_IP:8080 + {client}"
            + (f", on this machine's {family.title} of the runtime's version" if family.programs else ""),
            prepare=_runtime_entrypoint,
            paths=_AgentInImage(),
        )
    return out


# Keys are repositories without tag or digest. Keep sorted; each line is documented in docs/local-cluster.md.
# The runtime images (ghcr.io/kubelambda/runtime-<family>) come from the runtime table.
IMAGES: dict[str, LocalImage] = {
    "alpine": LocalImage("a shell; commands resolve against this machine's PATH", cmd=("sh",)),
    "busybox": LocalImage("a shell; commands resolve against this machine's PATH", cmd=("sh",)),
    "ghcr.io/kubelambda/kubelambda": LocalImage(
        "the kubelambda control plane image (operator, gateway, bridge, ...)",
        entrypoint=(_PYTHON, "-m", "kubelambda"),
        paths={"kubelambda": _PYTHON, **_PYTHON_PATHS},
    ),
    **_runtime_images(),
    "kubelambda.io/dev/httpserver": LocalImage(
        "a tiny HTTP server on $KUBELAMBDA_POD_IP:8080 that answers with the pod's name (tests, demo)",
        entrypoint=(_PYTHON, "-m", "kubelambda.devcluster.httpserver"),
    ),
    "python": LocalImage("this machine's Python interpreter", cmd=("python3",), paths=_PYTHON_PATHS),
    "registry.k8s.io/pause": LocalImage("sleeps until stopped", entrypoint=("sleep", "infinity")),
}


def repository(image: str) -> str:
    """``docker.io/library/busybox:1.36@sha256:...`` → ``busybox``; ``host:5000/a/b:tag`` → ``host:5000/a/b``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class NotRunnable(Exception):
    """The container cannot run here; ``reason`` becomes the container's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def lookup(image: str) -> LocalImage:
    entry = IMAGES.get(repository(image))
    if entry is None:
        known = ", ".join(sorted(IMAGES))
        raise NotRunnable(
            IMAGE_NOT_RUNNABLE,
            f"image {image!r} has no local command on this node (known images: {known}); "
            "see docs/local-cluster.md",
        )
    return entry


def container_argv(
    image: str,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    *,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The local argv for a container, following Docker's ENTRYPOINT/CMD and Kubernetes' override rules.
    ``env`` is the container's environment (an image's ``prepare`` reads and may extend it)."""
    entry = lookup(image)
    if command:
        argv = [*command, *(args or [])]
    elif entry.prepare is not None:
        argv = [*entry.prepare(env if env is not None else {}), *(args if args else entry.cmd)]
    else:
        argv = [*entry.entrypoint, *(args if args else entry.cmd)]
    if not argv:
        raise NotRunnable(
            COMMAND_NOT_FOUND, f"image {image!r} has no entrypoint and the container sets no command"
        )
    program = entry.paths.get(argv[0], argv[0])
    resolved = shutil.which(program)
    if resolved is None:
        raise NotRunnable(
            COMMAND_NOT_FOUND,
            f"command {argv[0]!r} of image {image!r} is not a program on this machine",
        )
    return [resolved, *argv[1:]]
