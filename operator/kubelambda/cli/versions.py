"""Versions and aliases through the gateway's Lambda control-plane API: ``publish``, ``versions``, ``alias``
(docs/versions.md). Calls are signed as ``invoke``'s are; the gateway's RBAC check decides."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kubelambda.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_gateway_option,
    add_output_option,
    print_structured,
    resolve_credentials,
    resolve_gateway,
    sign,
)
from kubelambda.cli._format import render_table


def _function(args: argparse.Namespace) -> str:
    name = str(args.name)
    qualified = "/" in name or name.startswith("arn:")
    return name if qualified or not args.namespace else f"{args.namespace}/{name}"


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control-plane call; a Lambda error becomes a one-line CliError with its type."""
    url = resolve_gateway(args)
    target = f"{url}{path}"
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json"}
    credentials = resolve_credentials(args, url)
    if credentials is not None:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        headers = sign(method, target, data, headers, credentials, region=region)
    request = urllib.request.Request(
        target, data=data if body is not None else None, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            text = resp.read()
    except urllib.error.HTTPError as e:
        error = e.headers.get("x-amzn-ErrorType", str(e.code))
        try:
            message = json.loads(e.read()).get("message", "")
        except ValueError:
            message = ""
        raise CliError(f"{error}: {message}") from e
    except urllib.error.URLError as e:
        raise CliError(f"cannot reach the gateway {url}: {e.reason}", hint="`kubelambda dev status`") from e
    return json.loads(text) if text else None


def _path(args: argparse.Namespace, tail: str = "") -> str:
    return f"/2015-03-31/functions/{urllib.parse.quote(_function(args), safe='')}{tail}"


def _routing(config: dict[str, Any]) -> str:
    weights = (config.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return ", ".join(f"{v}: {w:g}" for v, w in weights.items())


def _print_aliases(aliases: list[dict[str, Any]], output: str) -> None:
    if output != "table":
        print_structured(aliases, output)
        return
    rows = [(a["Name"], a["FunctionVersion"], _routing(a), a.get("Description", "")) for a in aliases]
    print(render_table(("alias", "version", "additional (weight)", "description"), rows))


def cmd_publish(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.description:
        body["Description"] = args.description
    config = call(args, "POST", _path(args, "/versions"), body)
    if args.output != "table":
        print_structured(config, args.output)
    else:
        print(f"{config['FunctionArn']}  version {config['Version']}  ({config['State']})")
    return EXIT_OK


def cmd_versions(args: argparse.Namespace) -> int:
    versions = call(args, "GET", _path(args, "/versions"))["Versions"]
    if args.output != "table":
        print_structured(versions, args.output)
        return EXIT_OK
    rows = [
        (v["Version"], v["State"], v["CodeSha256"][:12], v["LastModified"], v.get("Description", ""))
        for v in versions
    ]
    print(render_table(("version", "state", "code sha256", "last modified", "description"), rows))
    return EXIT_OK


def _weights(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.additional_version is None and args.weight is None:
        return None
    if args.additional_version is None or args.weight is None:
        raise CliError("--additional-version and --weight go together", code=EXIT_USAGE)
    if not 0 <= args.weight <= 1:
        raise CliError(f"--weight {args.weight} must be between 0 and 1", code=EXIT_USAGE)
    return {"AdditionalVersionWeights": {args.additional_version: args.weight}}


def cmd_alias(args: argparse.Namespace) -> int:
    if args.action == "list":
        _print_aliases(call(args, "GET", _path(args, "/aliases"))["Aliases"], args.output)
        return EXIT_OK
    if args.alias is None:
        raise CliError(f"alias {args.action} needs the alias name: --alias NAME", code=EXIT_USAGE)
    alias_path = _path(args, f"/aliases/{urllib.parse.quote(args.alias, safe='')}")
    if args.action == "delete":
        call(args, "DELETE", alias_path)
        print(f"alias {args.alias} deleted", file=sys.stderr)
        return EXIT_OK
    body: dict[str, Any] = {}
    if args.version is not None:
        body["FunctionVersion"] = args.version
    routing = _weights(args)
    if routing is not None:
        body["RoutingConfig"] = routing
    elif args.no_routing:
        body["RoutingConfig"] = {}
    if args.action == "create":
        if args.version is None:
            raise CliError("alias create needs --version", code=EXIT_USAGE)
        config = call(args, "POST", _path(args, "/aliases"), {"Name": args.alias, **body})
    else:
        config = call(args, "PUT", alias_path, body)
    _print_aliases([config], args.output)
    return EXIT_OK


def register(commands: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="function name, namespace/name, or ARN")
        parser.add_argument("-n", "--namespace", default=None, help="namespace of NAME (default: yours)")
        add_gateway_option(parser)
        parser.add_argument(
            "--state-dir", default=None, help="the local cluster's state folder (default .kubelambda)"
        )
        add_output_option(parser)

    publish = commands.add_parser(
        "publish", help="publish a version: an immutable snapshot of the function's code and configuration"
    )
    common(publish)
    publish.add_argument("--description", default=None, help="the version's description")
    publish.set_defaults(func=cmd_publish)

    versions = commands.add_parser("versions", help="a function's versions ($LATEST first)")
    common(versions)
    versions.set_defaults(func=cmd_versions)

    alias = commands.add_parser(
        "alias", help="create, update, list or delete aliases (weighted routing for canaries)"
    )
    alias.add_argument("action", choices=("create", "update", "list", "delete"))
    common(alias)
    alias.add_argument("--alias", default=None, help="the alias name (create, update, delete)")
    alias.add_argument("--version", default=None, help="the version the alias names (a number or $LATEST)")
    alias.add_argument(
        "--additional-version", default=None, help="a second version taking --weight of the calls"
    )
    alias.add_argument("--weight", type=float, default=None, help="the additional version's share, 0..1")
    alias.add_argument("--no-routing", action="store_true", help="update: remove the additional version")
    alias.set_defaults(func=cmd_alias)
