"""Pure builders: which command runs a runtime, and the agent's argv and environment around it."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubelambda.runtimes import table
from kubelambda.runtimes.table import FamilyName


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime of the Function API and how its worker process is started (a view of the runtime table)."""

    name: str  # Function.spec.runtime, e.g. python3.12
    family: FamilyName
    image: str  # repository of its runtime image
    folder: str  # runtime-images/<folder>: the runtime client
    entry: str  # the client's entry file inside that folder (java: the class path inside it)


RUNTIMES: Mapping[str, RuntimeSpec] = {
    rt.name: RuntimeSpec(rt.name, rt.family, f"kubelambda/{rt.spec.image}", rt.family, rt.spec.entry)
    for rt in table.RUNTIMES.values()
}


def _spec(runtime: str) -> RuntimeSpec:
    table.runtime(runtime)  # the error naming the known runtimes
    return RUNTIMES[runtime]


def runtime_for_image(image: str) -> RuntimeSpec | None:
    """The runtime whose image ``image`` is (tag and registry host ignored), for the local node.

    ``ghcr.io/x/kubelambda/runtime-python:3.13`` → python3.13, ``runtime-provided:go`` → go; an unknown tag
    picks the family's first.
    """
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    candidates = [s for s in RUNTIMES.values() if name == s.image or name.endswith("/" + s.image)]
    for spec in candidates:
        if tag and table.RUNTIMES[spec.name].tag == tag:
            return spec
    return candidates[0] if candidates else None


def default_interpreter(runtime: str) -> str:
    """The interpreter ``runtime`` runs on when none is named: this Python for Python runtimes (``kubelambda
    invoke --local`` and the tests), the family's program on PATH otherwise; "" when it needs none."""
    family = table.runtime(runtime).spec
    return sys.executable if family.name == "python" else family.program


def worker_command(runtime: str, *, runtime_dir: Path | str, interpreter: str | None = None) -> list[str]:
    """argv of one worker process for ``runtime`` whose client lies in ``runtime_dir``, on ``interpreter``
    (default :func:`default_interpreter`).

    In an image ``runtime_dir`` is /opt/kubelambda/runtime; locally runtime-images/<folder>, except for
    Java, whose client is compiled: the folder ``hack/build-runtime-java.sh`` prints (``java_runtime_dir()``).
    ``provided`` and ``go`` run ``launch``, which execs ``$LAMBDA_TASK_ROOT/bootstrap`` (or ``/opt/bootstrap``).
    """
    spec = _spec(runtime)
    fill = {
        "interpreter": interpreter if interpreter is not None else default_interpreter(runtime),
        "entry": str(Path(runtime_dir) / spec.entry),
    }
    return [part.format_map(fill) for part in table.FAMILIES[spec.family].worker]


@dataclass(frozen=True)
class LocalCommand:
    """What to start: argv and the full environment of the agent, and where it answers."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    invoke_url: str  # POST here
    base_url: str  # /readyz, /healthz and /metrics live here
    runtime_api: str  # worker 0's Runtime API; worker i uses port+i
    workers: int = 1
    timeout_s: float = 3.0
    function_name: str = "function"


def local_command(
    runtime: str,
    code_dir: Path | str,
    handler: str,
    *,
    agent: Path | str,
    listen: str = "127.0.0.1:8080",
    runtime_api: str | None = None,
    workers: int = 1,
    timeout_s: float = 3.0,
    memory_mb: int = 128,
    function_name: str = "function",
    function_version: str = "$LATEST",
    region: str = "us-east-1",
    environment: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    runtime_dir: Path | str | None = None,
    runtime_cmd: Sequence[str] | None = None,
    interpreter: str | None = None,
) -> LocalCommand:
    """The agent's command line for running ``handler`` from ``code_dir`` locally.

    ``listen`` is the invoke address; the Runtime API defaults to the same IP at port 9001, so that
    a pod given its own loopback IP (127.0.x.y) binds everything there. ``environment`` is the
    function's own environment; ``base_env`` what the agent inherits (PATH and the like; default
    empty, pass ``os.environ`` to inherit everything). ``runtime_cmd`` replaces the runtime client,
    e.g. with AWS's own ``python -m awslambdaric app.handler``.
    """
    spec = _spec(runtime)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    host = listen.rpartition(":")[0] or "127.0.0.1"
    api = runtime_api or f"{host}:9001"
    rdir = Path(runtime_dir) if runtime_dir is not None else _default_runtime_dir(spec)
    cmd = (
        list(runtime_cmd)
        if runtime_cmd is not None
        else worker_command(runtime, runtime_dir=rdir, interpreter=interpreter)
    )
    code = str(Path(code_dir).resolve())
    argv = [
        str(agent),
        f"--listen={listen}",
        f"--runtime-api={api}",
        f"--workers={workers}",
        f"--timeout={timeout_s:g}",
        f"--memory-mb={memory_mb}",
        f"--function-name={function_name}",
        f"--function-version={function_version}",
        f"--region={region}",
        f"--handler={handler}",
        f"--task-root={code}",
        f"--runtime-dir={rdir}",
        f"--runtime-name={spec.name}",
        "--opt-dir=",  # no layers: neither this machine's /opt on the paths nor its /opt/extensions
        "--",
        *cmd,
    ]
    env = {k: v for k, v in (base_env or {}).items() if not k.startswith("KUBELAMBDA_")}
    env.update(environment or {})
    env = dict(sorted(env.items()))
    url_host = host if host not in ("", "0.0.0.0") else "127.0.0.1"
    port = listen.rpartition(":")[2]
    base_url = f"http://{url_host}:{port}"
    return LocalCommand(
        argv=argv,
        env=env,
        cwd=code,
        invoke_url=base_url + "/invoke",
        base_url=base_url,
        runtime_api=api,
        workers=workers,
        timeout_s=timeout_s,
        function_name=function_name,
    )


def _default_runtime_dir(spec: RuntimeSpec) -> Path:
    from kubelambda.runtimes._build import java_runtime_dir, python_runtime_dir, runtime_images_dir

    if spec.family == "java":
        return java_runtime_dir()  # compiled: the cached Maven build (built on first use)
    if spec.family == "python":
        return python_runtime_dir()  # bootstrap.py beside its private orjson (made on first use)
    return runtime_images_dir() / spec.folder


def local_runtime_dir(runtime: str) -> Path:
    """This machine's folder for ``runtime``'s client (``LAMBDA_RUNTIME_DIR`` outside an image):
    ``runtime-images/<folder>``, for Java the cached Maven build (built on first call), for Python the cached folder
    of ``hack/python-runtime.sh`` (bootstrap.py and its private orjson, made on first call)."""
    return _default_runtime_dir(_spec(runtime))


def _rehost(address: str | None, ip: str, default_port: int) -> str:
    port = address.rpartition(":")[2] if address and ":" in address else str(default_port)
    return f"{ip}:{port}"


def pod_command(
    image: str,
    *,
    env: Mapping[str, str],
    pod_ip: str,
    task_root: Path | str,
    agent: Path | str,
    args: Sequence[str] = (),
    runtime_dir: Path | str | None = None,
    interpreter: str | None = None,
) -> LocalCommand | None:
    """How the local node runs a container of a runtime image as processes; None for other images.

    ``env`` is the container's environment (the agent's ``KUBELAMBDA_*`` settings among it),
    ``task_root`` the folder that stands for the pod's /var/task, ``pod_ip`` the pod's own loopback IP:
    the invoke endpoint and the Runtime API bind there, keeping the ports the settings name. What the
    image's ENV would have provided (runtime client, its folder, the runtime name) is filled in.
    """
    spec = runtime_for_image(image)
    if spec is None:
        return None
    rdir = Path(runtime_dir) if runtime_dir is not None else _default_runtime_dir(spec)
    listen = _rehost(env.get("KUBELAMBDA_LISTEN"), pod_ip, 8080)
    out = dict(env)
    out.update(
        {
            "KUBELAMBDA_LISTEN": listen,
            "KUBELAMBDA_RUNTIME_API": _rehost(env.get("KUBELAMBDA_RUNTIME_API"), pod_ip, 9001),
            "KUBELAMBDA_TASK_ROOT": str(task_root),
            "KUBELAMBDA_RUNTIME_DIR": str(rdir),
            "KUBELAMBDA_RUNTIME_CMD": json.dumps(
                worker_command(spec.name, runtime_dir=rdir, interpreter=interpreter)
            ),
            "LAMBDA_TASK_ROOT": str(task_root),
            "LAMBDA_RUNTIME_DIR": str(rdir),
        }
    )
    out.setdefault("KUBELAMBDA_RUNTIME_NAME", spec.name)
    base_url = f"http://{listen}"
    workers = out.get("KUBELAMBDA_WORKERS", "1")
    timeout = out.get("KUBELAMBDA_TIMEOUT", "3")
    return LocalCommand(
        argv=[str(agent), *args],
        env=dict(sorted(out.items())),
        cwd=str(task_root),
        invoke_url=base_url + "/invoke",
        base_url=base_url,
        runtime_api=out["KUBELAMBDA_RUNTIME_API"],
        workers=int(workers) if workers.isdigit() else 1,
        timeout_s=float(timeout) if timeout.replace(".", "", 1).isdigit() else 3.0,
        function_name=out.get("KUBELAMBDA_FUNCTION_NAME", "function"),
    )
