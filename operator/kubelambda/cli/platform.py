"""The platform's own processes: ``operator``, ``gateway``, ``async-worker``, ``fetch-code``, ``fetch-layers``, and ``dlq``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from kubelambda.cli._common import CliError, add_state_dir, state_dir_of

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def cmd_operator(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda.kube import default_login
    from kubelambda.operator import run
    from kubelambda.settings import OperatorSettings

    try:
        settings = OperatorSettings()
    except ValidationError as e:
        print(f"kubelambda operator: bad settings (environment KUBELAMBDA_*):\n{e}", file=sys.stderr)
        return 2
    import uvloop  # every reconcile is API requests over TLS: uvloop's loop and transports cost less CPU

    uvloop.run(run(settings, login=default_login(settings.kubeconfig)))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda import tracing
    from kubelambda.gateway.app import serve
    from kubelambda.gateway.config import GatewaySettings
    from kubelambda.kube import default_login

    try:
        settings = GatewaySettings()
    except ValidationError as e:
        print(f"kubelambda gateway: bad settings (environment KUBELAMBDA_GATEWAY_*):\n{e}", file=sys.stderr)
        return 2
    if (bad := tracing.from_environment("kubelambda-gateway")) is not None:
        print(f"kubelambda gateway: {bad}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with default_login(settings.kubeconfig).client() as kube:
            await serve(settings, kube)

    import uvloop  # the invoke path is event-loop bound: uvloop's loop is markedly faster than asyncio's

    uvloop.run(main())
    return 0


def cmd_async_worker(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda import tracing
    from kubelambda.asyncworker.worker import WorkerSettings
    from kubelambda.gateway.config import GatewaySettings
    from kubelambda.gateway.remoteworker import run_worker
    from kubelambda.kube import default_login

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
    if (bad := tracing.from_environment("kubelambda-async-worker")) is not None:
        print(f"kubelambda async-worker: {bad}", file=sys.stderr)
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
                settings=WorkerSettings.of(settings, api_server=kube.server),
                # Function destinations need the source's execution identity to may invoke the target.
                check_destinations=settings.auth_mode != "none",
                cache_seconds=settings.auth_cache_seconds,
                replicas=settings.async_replicas,
            )

    asyncio.run(main())
    return 0


def cmd_log_export(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kubelambda import logexport

    try:
        settings = logexport.LogExportSettings()  # type: ignore[call-arg]  # from the environment
    except ValidationError as e:
        print(
            f"kubelambda log-export: bad settings (environment KUBELAMBDA_LOG_EXPORT_*):\n{e}",
            file=sys.stderr,
        )
        return 2
    asyncio.run(logexport.main(settings))
    return 0


def nats_url_of(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(url, where it came from)``: ``--nats-url``, ``$KUBELAMBDA_GATEWAY_NATS_URL``, the running local
    platform's (dev.json), else ``nats://127.0.0.1:4222``."""
    if args.nats_url:
        return args.nats_url, "--nats-url"
    if env.get("KUBELAMBDA_GATEWAY_NATS_URL"):
        return env["KUBELAMBDA_GATEWAY_NATS_URL"], "$KUBELAMBDA_GATEWAY_NATS_URL"
    from kubelambda.devcluster import DevState

    state = DevState.read(state_dir_of(args, env))
    if state is not None and state.state == "running" and state.nats_url:
        return state.nats_url, "the local platform (kubelambda dev status)"
    return DEFAULT_NATS_URL, "the default"


def cmd_dlq(args: argparse.Namespace) -> int:
    import json

    import nats.errors

    from kubelambda.asyncworker.dlq import list_dead_letters, redrive
    from kubelambda.asyncworker.queue import EventQueue

    url, source = nats_url_of(args)

    async def main() -> int:
        try:
            queue = await EventQueue.connect(url, stream=args.stream, reconnect=False)
        except (OSError, TimeoutError, nats.errors.Error) as e:
            raise CliError(
                f"cannot reach NATS at {url} (from {source}): {str(e) or type(e).__name__}",
                hint="is the platform running? `kubelambda dev status` lists its NATS; or pass --nats-url",
            ) from e
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
        allow_cidrs=args.allow_cidr,
    )


def cmd_fetch_layers(args: argparse.Namespace) -> int:
    from kubelambda.fetchcode import main_layers

    return main_layers(dest=args.dest, layers_json=args.layers, allow_cidrs=args.allow_cidr)


def register(commands: Any) -> None:
    operator = commands.add_parser(
        "operator", help="run the operator (reconciles Functions); settings from KUBELAMBDA_* variables"
    )
    operator.set_defaults(func=cmd_operator)

    gateway = commands.add_parser(
        "gateway", help="run the gateway (Lambda Invoke API); settings from KUBELAMBDA_GATEWAY_* variables"
    )
    gateway.set_defaults(func=cmd_gateway)

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
        "--allow-cidr",
        action="append",
        default=[],
        help="a range the download may reach although it is loopback, link-local (metadata) or the API "
        "server's (repeatable; default none)",
    )
    fetch.add_argument(
        "--dest", required=True, help="the folder to unpack into (under $KUBELAMBDA_ROOTFS when set)"
    )
    fetch.set_defaults(func=cmd_fetch_code)

    layers = commands.add_parser(
        "fetch-layers",
        help="fetch a Function's layers (HTTP(S), S3 or a file) and unpack them in order (the init container)",
    )
    layers.add_argument("--layers", required=True, help="a JSON array of layers (kubelambda/fetchcode.py)")
    layers.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        help="a range downloads may reach although loopback, link-local (metadata) or the API server's",
    )
    layers.add_argument(
        "--dest", required=True, help="the folder to unpack into (under $KUBELAMBDA_ROOTFS when set)"
    )
    layers.set_defaults(func=cmd_fetch_layers)

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

    export = commands.add_parser(
        "log-export",
        help="send every namespace's function logs from the log store to an OpenTelemetry (OTLP/HTTP) endpoint; "
        "settings from KUBELAMBDA_LOG_EXPORT_* variables",
    )
    export.set_defaults(func=cmd_log_export)

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
            default=None,
            help="NATS with JetStream (default: $KUBELAMBDA_GATEWAY_NATS_URL, else the running local "
            f"platform's, else {DEFAULT_NATS_URL})",
        )
        add_state_dir(sub)
        sub.add_argument(
            "--stream", default="KUBELAMBDA_ASYNC", help="the events stream (default KUBELAMBDA_ASYNC)"
        )
        if name == "redrive":
            sub.add_argument("--function", default=None, help="only this Function's records")
        sub.set_defaults(func=cmd_dlq)
