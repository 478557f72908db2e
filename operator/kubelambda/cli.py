"""The ``kubelambda`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubelambda import __version__
from kubelambda.devcluster._process import alive

DEFAULT_STATE_DIR = ".kubelambda"


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).resolve()


def _print_state(state_dir: Path) -> None:
    from kubelambda.devcluster import DevState

    state = DevState.read(state_dir)
    if state is None:
        print(f"no local cluster recorded in {state_dir}")
        return
    print(f"state:       {state.state} (supervisor pid {state.pid})")
    if state.state == "running":
        print(f"kubeconfig:  {state.kubeconfig}")
        print(f"api server:  {state.server}")
        print(f"node:        {state.node} (kubelet endpoint https://{state.node_ip}:{state.kubelet_port})")
        print(f"pod network: {state.pod_network}")
        for name, pid in sorted(state.components.items()):
            print(f"  {name:<24} pid {pid}")
        print(f"logs:        {state.logs}")
        print(f"started in:  {state.startup_seconds:.1f} s")
        if state.gateway_url:
            print(f"gateway:     {state.gateway_url}")
        print(f"\n  export KUBECONFIG={state.kubeconfig}")
    if state.error:
        print(f"error:       {state.error}")


def cmd_dev_up(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import DevState
    from kubelambda.devcluster._binaries import ensure_binaries

    state_dir = _state_dir(args)
    state = DevState.read(state_dir)
    if state is not None and state.state in ("running", "starting") and alive(state.pid):
        print(f"The local cluster is already {state.state}.")
        _print_state(state_dir)
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    print("==> Checking the pinned Kubernetes binaries (built once from Go modules, then cached)", flush=True)
    ensure_binaries()
    log = state_dir / "logs" / "dev.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    (state_dir / "dev.json").unlink(missing_ok=True)
    print(f"==> Starting the local cluster in the background (log: {log})", flush=True)
    argv = [sys.executable, "-m", "kubelambda", "dev", "serve", "--state-dir", str(state_dir)]
    if args.backoff is not None:
        argv += ["--backoff", str(args.backoff)]
    argv += ["--pod-network", args.pod_network]
    if not args.platform:
        argv.append("--no-platform")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
        for line in chunk.decode(errors="replace").splitlines():
            print(f"    {line}", flush=True)
        state = DevState.read(state_dir)
        if state is not None and state.state == "running":
            print("==> The local cluster is running\n")
            _print_state(state_dir)
            return 0
        if proc.poll() is not None or (state is not None and state.state == "failed"):
            print(f"The local cluster failed to start; see {log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"The local cluster did not start within {args.timeout:.0f} s; see {log}", file=sys.stderr)
    proc.send_signal(signal.SIGTERM)
    return 1


def cmd_dev_down(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import DevState

    state_dir = _state_dir(args)
    state = DevState.read(state_dir)
    if state is None or not alive(state.pid):
        print("The local cluster is not running.")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(state.pid):
        os.kill(state.pid, signal.SIGKILL)
        print(f"The supervisor did not stop within {args.timeout:.0f} s and was killed.")
    leftovers = [f"{name} ({pid})" for name, pid in state.components.items() if alive(pid)]
    for name_pid in leftovers:
        print(f"warning: {name_pid} is still running", file=sys.stderr)
    print("The local cluster is stopped." if not leftovers else "The local cluster stopped with leftovers.")
    return 0 if not leftovers else 1


def cmd_dev_status(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import DevState

    state_dir = _state_dir(args)
    state = DevState.read(state_dir)
    running = state is not None and state.state == "running" and alive(state.pid)
    if state is not None and state.state == "running" and not running:
        print(
            f"The local cluster recorded in {state_dir} is not running (its supervisor {state.pid} is gone)."
        )
        return 3
    _print_state(state_dir)
    return 0 if running else 3


def cmd_dev_serve(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import serve

    return asyncio.run(
        serve(
            _state_dir(args),
            node_name=args.node_name,
            backoff_seconds=args.backoff or 10.0,
            pod_network=args.pod_network,
            platform=args.platform,
        )
    )


def cmd_operator(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda.operator import default_login, run
    from kubelambda.settings import OperatorSettings

    try:
        settings = OperatorSettings()
    except ValidationError as e:
        print(f"kubelambda operator: bad settings (environment KUBELAMBDA_*):\n{e}", file=sys.stderr)
        return 2
    asyncio.run(run(settings, login=default_login(settings.kubeconfig)))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda.gateway.app import serve
    from kubelambda.gateway.config import GatewaySettings
    from kubelambda.operator import default_login

    try:
        settings = GatewaySettings()
    except ValidationError as e:
        print(f"kubelambda gateway: bad settings (environment KUBELAMBDA_GATEWAY_*):\n{e}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with default_login(settings.kubeconfig).client() as kube:
            await serve(settings, kube)

    import uvloop  # the invoke path is event-loop bound: uvloop's loop is markedly faster than asyncio's

    uvloop.run(main())
    return 0


def cmd_async_worker(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda.asyncworker.remote import run_worker
    from kubelambda.asyncworker.worker import WorkerSettings
    from kubelambda.gateway.config import GatewaySettings
    from kubelambda.operator import default_login

    try:
        settings = GatewaySettings()
    except ValidationError as e:
        print(
            f"kubelambda async-worker: bad settings (environment KUBELAMBDA_GATEWAY_*):\n{e}", file=sys.stderr
        )
        return 2
    if settings.nats_url is None or not args.gateway_url:
        print(
            "kubelambda async-worker: needs KUBELAMBDA_GATEWAY_NATS_URL and a gateway "
            "(--gateway-url or KUBELAMBDA_GATEWAY_URL)",
            file=sys.stderr,
        )
        return 2
    nats_url = settings.nats_url

    async def main() -> None:
        async with default_login(settings.kubeconfig).client() as kube:
            await run_worker(
                kube=kube,
                gateway_url=args.gateway_url,
                nats_url=nats_url,
                stream=settings.async_stream,
                region=settings.region,
                settings=WorkerSettings(
                    concurrency=settings.async_worker_concurrency,
                    retry_delays=settings.async_retry_delays_seconds,
                    backoff_min=settings.async_backoff_min_seconds,
                    backoff_max=settings.async_backoff_max_seconds,
                    ack_wait=settings.async_ack_wait_seconds,
                ),
            )

    asyncio.run(main())
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    import json

    from kubelambda.asyncworker.dlq import list_dead_letters, redrive
    from kubelambda.asyncworker.queue import EventQueue

    async def main() -> int:
        queue = await EventQueue.connect(args.nats_url, stream=args.stream)
        try:
            if args.dlq_command == "list":
                for letter in await list_dead_letters(queue, args.namespace):
                    print(json.dumps({"sequence": letter.sequence, "function": letter.function,
                                      "reason": letter.reason, "record": letter.record}))  # fmt: skip
                return 0
            count = await redrive(queue, args.namespace, function=args.function)
            print(f"Re-drove {count} record(s) of {args.namespace} as new Event invocations")
            return 0
        finally:
            await queue.close()

    return asyncio.run(main())


def _gateway_url(args: argparse.Namespace) -> str | None:
    from kubelambda.devcluster import DevState

    if args.endpoint_url:
        return str(args.endpoint_url)
    if os.environ.get("KUBELAMBDA_GATEWAY_URL"):
        return os.environ["KUBELAMBDA_GATEWAY_URL"]
    state = DevState.read(Path(args.state_dir).resolve())
    return state.gateway_url if state is not None else None


def cmd_invoke(args: argparse.Namespace) -> int:
    import base64
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url = _gateway_url(args)
    if not url:
        print(
            "kubelambda invoke: no gateway: pass --endpoint-url, set KUBELAMBDA_GATEWAY_URL, or run `kubelambda dev up`",
            file=sys.stderr,
        )
        return 2
    payload = args.payload
    if payload.startswith("@"):
        payload = Path(payload[1:]).read_text()
    try:
        json.loads(payload)
    except ValueError as e:
        print(f"kubelambda invoke: --payload is not JSON: {e}", file=sys.stderr)
        return 2
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Invocation-Type": "Event" if args.async_ else "RequestResponse",
    }
    if args.log and not args.async_:
        headers["X-Amz-Log-Type"] = "Tail"
    target = f"{url.rstrip('/')}/2015-03-31/functions/{urllib.parse.quote(args.name, safe='/')}/invocations"
    request = urllib.request.Request(target, data=payload.encode(), headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=960) as resp:
            status, answer, body = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, answer, body = e.code, dict(e.headers), e.read()
    elapsed = (time.monotonic() - started) * 1000
    sys.stdout.write(body.decode(errors="replace") + "\n")
    error = answer.get("X-Amz-Function-Error") or answer.get("x-amzn-ErrorType")
    cold = answer.get("X-Kubelambda-Cold-Start") == "true"
    print(
        f"status {status}{f' ({error})' if error else ''}, {elapsed:.0f} ms{', cold start' if cold else ''}",
        file=sys.stderr,
    )
    if answer.get("X-Amz-Log-Result"):
        print(base64.b64decode(answer["X-Amz-Log-Result"]).decode(errors="replace"), file=sys.stderr)
    return 0 if status < 300 and not error else 1


def cmd_fetch_code(args: argparse.Namespace) -> int:
    from kubelambda.fetchcode import main as fetch_code

    return fetch_code(
        dest=args.dest,
        url=args.url,
        sha256=args.sha256,
        s3_endpoint=args.s3_endpoint,
        bucket=args.bucket,
        key=args.key,
        region=args.region,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubelambda", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubelambda {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="the local development cluster (no Docker needed)")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    state_help = f"where the cluster keeps its state (default: {DEFAULT_STATE_DIR}, or $KUBELAMBDA_STATE_DIR)"
    default_state = os.environ.get("KUBELAMBDA_STATE_DIR", DEFAULT_STATE_DIR)

    up = dev_commands.add_parser("up", help="start the local cluster in the background")
    up.add_argument("--state-dir", default=default_state, help=state_help)
    up.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the cluster (default 180)"
    )
    up.add_argument(
        "--backoff", type=float, default=None, help="crash-loop back-off base in seconds (default 10)"
    )
    up.add_argument(
        "--pod-network", choices=("auto", "alias", "loopback"), default="auto", help="see `dev serve`"
    )
    up.add_argument(
        "--no-platform",
        dest="platform",
        action="store_false",
        help="only Kubernetes: no kubelambda operator and gateway (the test suites run their own)",
    )
    up.set_defaults(func=cmd_dev_up)

    down = dev_commands.add_parser("down", help="stop the local cluster and every pod process")
    down.add_argument("--state-dir", default=default_state, help=state_help)
    down.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait before killing (default 60)"
    )
    down.set_defaults(func=cmd_dev_down)

    status = dev_commands.add_parser("status", help="what runs where; exit status 3 when not running")
    status.add_argument("--state-dir", default=default_state, help=state_help)
    status.set_defaults(func=cmd_dev_status)

    serve = dev_commands.add_parser(
        "serve", help="run the local cluster in the foreground (what `up` starts)"
    )
    serve.add_argument("--state-dir", default=default_state, help=state_help)
    serve.add_argument("--node-name", default="kubelambda-local", help="name of the local node")
    serve.add_argument(
        "--backoff", type=float, default=None, help="crash-loop back-off base in seconds (default 10)"
    )
    serve.add_argument(
        "--pod-network",
        choices=("auto", "alias", "loopback"),
        default="auto",
        help="alias: pod addresses from 10.244.0.0/16 added to lo (needs root); loopback: 127.0.x.y; auto: alias when possible",
    )
    serve.add_argument(
        "--no-platform",
        dest="platform",
        action="store_false",
        help="only Kubernetes: no kubelambda operator and gateway (the test suites run their own)",
    )
    serve.set_defaults(func=cmd_dev_serve)

    operator = commands.add_parser(
        "operator", help="run the operator (reconciles Functions); settings from KUBELAMBDA_* variables"
    )
    operator.set_defaults(func=cmd_operator)

    gateway = commands.add_parser(
        "gateway", help="run the gateway (Lambda Invoke API); settings from KUBELAMBDA_GATEWAY_* variables"
    )
    gateway.set_defaults(func=cmd_gateway)

    invoke = commands.add_parser(
        "invoke", help="invoke a function through the gateway, like `aws lambda invoke`"
    )
    invoke.add_argument("name", help="function name, namespace/name, or ARN")
    invoke.add_argument("--payload", default="{}", help="the event: JSON, or @file (default {})")
    invoke.add_argument("--log", action="store_true", help="print the invocation's log tail")
    invoke.add_argument(
        "--async", dest="async_", action="store_true", help="an Event (asynchronous) invocation"
    )
    invoke.add_argument(
        "--endpoint-url", default=None, help="the gateway (default: $KUBELAMBDA_GATEWAY_URL, or dev.json)"
    )
    invoke.add_argument("--state-dir", default=default_state, help=state_help)
    invoke.set_defaults(func=cmd_invoke)

    fetch = commands.add_parser(
        "fetch-code",
        help="download a function's zip (HTTP(S) or S3), check its SHA-256 and unpack it (the init container)",
    )
    source = fetch.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="an http(s) URL of the zip")
    source.add_argument("--s3-endpoint", help="an S3 endpoint (path-style; credentials from AWS_* variables)")
    fetch.add_argument("--bucket", help="the S3 bucket (with --s3-endpoint)")
    fetch.add_argument("--key", help="the S3 object key (with --s3-endpoint)")
    fetch.add_argument("--region", default="us-east-1", help="the region S3 requests are signed for")
    fetch.add_argument("--sha256", help="the zip's hex SHA-256 (required with --url)")
    fetch.add_argument(
        "--dest", required=True, help="the folder to unpack into (under $KUBELAMBDA_ROOTFS when set)"
    )
    fetch.set_defaults(func=cmd_fetch_code)

    worker = commands.add_parser(
        "async-worker",
        help="consume Event invocations and invoke through a gateway; settings from KUBELAMBDA_GATEWAY_* variables",
    )
    worker.add_argument(
        "--gateway-url",
        default=os.environ.get("KUBELAMBDA_GATEWAY_URL"),
        help="the gateway to invoke through (default: $KUBELAMBDA_GATEWAY_URL)",
    )
    worker.set_defaults(func=cmd_async_worker)

    dlq = commands.add_parser("dlq", help="the dead-letter stream of a namespace's failed Event invocations")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (
        ("list", "print each record as a JSON line"),
        ("redrive", "queue each record's requestPayload again as a new Event invocation"),
    ):
        sub = dlq_commands.add_parser(name, help=help_text)
        sub.add_argument("namespace")
        sub.add_argument(
            "--nats-url",
            default=os.environ.get("KUBELAMBDA_GATEWAY_NATS_URL", "nats://127.0.0.1:4222"),
            help="NATS with JetStream (default: $KUBELAMBDA_GATEWAY_NATS_URL, or kubelambda dev up's 4222)",
        )
        sub.add_argument(
            "--stream", default="KUBELAMBDA_ASYNC", help="the events stream (default KUBELAMBDA_ASYNC)"
        )
        if name == "redrive":
            sub.add_argument("--function", default=None, help="only this Function's records")
        sub.set_defaults(func=cmd_dlq)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    result: int = args.func(args)
    return result
