"""The ``kubelambda`` command line.

One module per command group, each with a ``register(commands)`` that adds its subcommands:

- ``project``: ``init``, ``deploy``
- ``functions``: ``invoke``, ``logs``, ``list``, ``describe``, ``delete``
- ``versions``: ``publish``, ``versions``, ``alias`` (through the gateway's control-plane API)
- ``dev``: ``dev up|down|status|serve``
- ``platform``: ``operator``, ``gateway``, ``async-worker``, ``fetch-code``, ``fetch-layers``, ``dlq``
- ``accesskeys``: ``access-key create|list|delete``
- ``doctor``: what the local platform needs on this machine
- ``local``: ``local invoke``, a handler run once without a cluster

A new group (for instance ``bridge``) is a module with a ``register`` function added to ``GROUPS`` below.
Exit codes: 0 ok, 1 error, 2 usage (bad arguments or configuration), 3 ``dev status``: not running,
130 interrupted. Errors are one line on stderr, then a ``hint:`` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from kubelambda import __version__
from kubelambda.cli import accesskeys, bridge, dev, doctor, functions, local, platform, project, versions
from kubelambda.cli._common import EXIT_ERROR, EXIT_INTERRUPTED, CliError

GROUPS: tuple[Callable[[Any], None], ...] = (
    project.register,
    functions.register,
    versions.register,
    dev.register,
    platform.register,
    bridge.register,
    accesskeys.register,
    doctor.register,
    local.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubelambda",
        description="kubelambda: AWS-Lambda-compatible functions on Kubernetes. See docs/cli.md.",
        epilog="exit status: 0 ok, 1 error, 2 usage, 3 (dev status) not running, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"kubelambda {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in GROUPS:
        register(commands)
    return parser


def _fail(message: str, hint: str | None) -> None:
    print(f"kubelambda: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        result: int = args.func(args)
    except CliError as e:
        _fail(e.message, e.hint)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `kubelambda list -o json | head`: the reader left. Silence the flush at exit, as the Python docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as e:
        # An ApiError can only come from kubelambda.kube, imported lazily by the commands that talk to the cluster.
        client = sys.modules.get("kubelambda.kube._client")
        if client is None or not isinstance(e, client.ApiError):
            raise
        hint = None
        if e.status in (401, 403):
            hint = "check your permissions (kubectl auth can-i)"
        elif e.status == 404:  # a list of Functions is only a 404 when the CRD is missing
            hint = "are kubelambda's CRDs installed? (helm install, or kubelambda dev up)"
        _fail(f"the API server answered {e.status} {e.reason}: {' '.join(e.message.split())}", hint)
        return EXIT_ERROR
    return result
