"""``kubelambda local invoke DIR``: run a function's handler once through the agent, on this machine, without a
cluster (as ``sam local invoke``, without Docker)."""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubelambda.cli._common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError


def _write_code(spec: dict[str, Any], folder: Path, runtime: str, into: Path) -> None:
    """The code the function would run: ``spec.code.inline`` as written in function.yaml, else the folder as
    ``deploy`` packages it (built for its runtime: pip, Go, Maven)."""
    from kubelambda.cli._package import built_code

    code = spec.get("code") or {}
    if code.get("inline"):
        for name, text in code["inline"].items():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_text(str(text))
        return
    if code:
        raise CliError(
            f"spec.code of {folder} is not inline ({', '.join(code)}): local invoke runs a folder's code",
            hint="remove spec.code from function.yaml to run the folder's files",
            code=EXIT_USAGE,
        )

    def say(message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    with built_code(folder, runtime, progress=say) as package:
        for name, (data, executable) in package.files.items():
            path = into / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if executable:
                path.chmod(0o755)


def cmd_local_invoke(args: argparse.Namespace) -> int:
    from kubelambda.cli.functions import read_payload
    from kubelambda.cli.project import read_manifest
    from kubelambda.devcluster._interpreters import RuntimeUnavailable, resolve
    from kubelambda.devcluster._ports import free_port
    from kubelambda.runtimes import LocalFunction, LocalFunctionError, agent_binary, local_command
    from kubelambda.runtimes.table import RUNTIMES

    folder = Path(args.dir)
    doc = read_manifest(folder)
    folder = folder if folder.is_dir() else folder.parent
    spec = dict(doc["spec"])
    runtime, handler = str(spec.get("runtime") or ""), str(spec.get("handler") or "")
    if runtime not in RUNTIMES:
        raise CliError(
            f"spec.runtime {runtime!r} of {folder} is not a runtime",
            hint=f"one of {', '.join(RUNTIMES)}",
            code=EXIT_USAGE,
        )
    payload = read_payload(args.payload)
    try:
        interpreter = resolve(runtime, substitute=args.substitute_runtime)
    except RuntimeUnavailable as e:
        raise CliError(str(e).split(". ")[0], hint="or pass --substitute-runtime") from e
    if interpreter.substitute_for:
        print(f"warning: {runtime} runs on {interpreter.describe()}", file=sys.stderr)
    try:
        agent = agent_binary()
    except RuntimeError as e:
        raise CliError(
            f"the agent could not be built: {str(e).splitlines()[0]}", hint="`kubelambda doctor` checks Go"
        ) from e
    environment = {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
    with tempfile.TemporaryDirectory(prefix="kubelambda-local-") as tmp:
        code = Path(tmp)
        _write_code(spec, folder, runtime, code)
        command = local_command(
            runtime,
            code,
            handler,
            agent=agent,
            listen=f"127.0.0.1:{free_port()}",
            runtime_api=f"127.0.0.1:{free_port()}",
            timeout_s=float(spec.get("timeoutSeconds") or 3),
            memory_mb=int(spec.get("memoryMB") or 128),
            function_name=str(doc["metadata"]["name"]),
            environment=environment,
            base_env=os.environ,
            interpreter=interpreter.path or None,
        )
        started = time.monotonic()
        with LocalFunction(command) as fn:
            try:
                fn.wait_ready(timeout=args.timeout)
                result = fn.invoke(
                    payload,
                    headers={"X-Amz-Log-Type": "Tail"},
                    timeout=float(spec.get("timeoutSeconds") or 3) + 10,
                )
            except (LocalFunctionError, OSError) as e:
                raise CliError(
                    f"the agent did not answer: {str(e).splitlines()[0]}",
                    hint="run with -v, or see the agent's output with `python -m kubelambda.runtimes`",
                ) from e
    elapsed = (time.monotonic() - started) * 1000
    sys.stdout.write(result.body.decode(errors="replace") + "\n")
    error = result.function_error
    print(
        f"status {result.status}{f' ({error})' if error else ''}, {elapsed:.0f} ms with the start",
        file=sys.stderr,
    )
    if result.headers.get("x-amz-log-result"):
        print(base64.b64decode(result.headers["x-amz-log-result"]).decode(errors="replace"), file=sys.stderr)
    return EXIT_OK if result.status < 300 and not error else EXIT_ERROR


def register(commands: Any) -> None:
    local = commands.add_parser("local", help="run a function on this machine, without a cluster")
    local_commands = local.add_subparsers(dest="local_command", required=True)
    invoke = local_commands.add_parser(
        "invoke",
        help="run DIR's handler once through the agent (as `sam local invoke`, without Docker)",
        description="Build DIR as `deploy` would, start the agent with its runtime, invoke it once with the "
        "payload and stop. The response goes to stdout; the status and the log tail to stderr.",
    )
    invoke.add_argument(
        "dir", metavar="DIR", help="the function's folder (with function.yaml), or the yaml file"
    )
    invoke.add_argument(
        "--payload", default="{}", help="the event: JSON, or @file, or @- for stdin (default {})"
    )
    invoke.add_argument(
        "--substitute-runtime",
        action="store_true",
        help="run on another version of the runtime's interpreter when its own is not installed",
    )
    invoke.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the agent (default 60)"
    )
    invoke.set_defaults(func=cmd_local_invoke)
