"""What every command shares: errors with hints, exit codes, finding the cluster and the gateway, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIELD_MANAGER = "kubelambda-cli"

# Exit codes (docs/cli.md): argparse already exits with 2 on a usage error.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `dev status` only: no local cluster is running
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one line (and a hint) on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


DEFAULT_PLATFORM = "default"


def state_home(env: Mapping[str, str] = os.environ) -> Path:
    """Where every local platform keeps its state: ``$XDG_STATE_HOME/kubelambda`` (``~/.local/state/kubelambda``)."""
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(base) / "kubelambda"


def valid_platform_name(name: str) -> str:
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise CliError(
            f"bad platform name {name!r}",
            hint="use letters, digits, '-', '_' and '.' (e.g. --platform-name staging)",
            code=EXIT_USAGE,
        )
    return name


def default_state_dir(env: Mapping[str, str] = os.environ, *, name: str | None = None) -> str:
    """``$KUBELAMBDA_STATE_DIR``, else the named platform's folder under :func:`state_home` (the name from
    ``name``, else ``$KUBELAMBDA_PLATFORM_NAME``, else ``default``): the same from every folder."""
    if name is None and env.get("KUBELAMBDA_STATE_DIR"):
        return env["KUBELAMBDA_STATE_DIR"]
    name = valid_platform_name(name or env.get("KUBELAMBDA_PLATFORM_NAME") or DEFAULT_PLATFORM)
    return str(state_home(env) / name)


def state_dir_of(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Path:
    """The state folder a command works with: ``--state-dir``, else ``--platform-name``'s, else the default."""
    explicit = getattr(args, "state_dir", None)
    if explicit:
        return Path(explicit).expanduser().resolve()
    return Path(default_state_dir(env, name=getattr(args, "platform_name", None))).resolve()


STATE_HELP = (
    "where the local platform keeps its state (default: $KUBELAMBDA_STATE_DIR, else "
    "$XDG_STATE_HOME/kubelambda/NAME, i.e. ~/.local/state/kubelambda/default)"
)


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, help=STATE_HELP)
    parser.add_argument(
        "--platform-name",
        default=None,
        metavar="NAME",
        help="which local platform, when several run (default: $KUBELAMBDA_PLATFORM_NAME, else default)",
    )


def add_cluster_options(parser: argparse.ArgumentParser, *, namespace: bool = True) -> None:
    """``--kubeconfig``, ``--state-dir`` and ``-n/--namespace``: how a command finds the cluster."""
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else the running `kubelambda dev up` cluster, else ~/.kube/config)",
    )
    add_state_dir(parser)
    if namespace:
        parser.add_argument(
            "-n",
            "--namespace",
            default=None,
            help="namespace (default: $KUBELAMBDA_NAMESPACE, else the kubeconfig context's, else default)",
        )


def add_gateway_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="the gateway (default: $KUBELAMBDA_GATEWAY_URL, else the running `kubelambda dev up` cluster's)",
    )


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="output format (default table)",
    )


@dataclass(frozen=True)
class Target:
    """The cluster a command talks to."""

    kubeconfig: str
    namespace: str
    source: str  # where the kubeconfig came from, for error messages


def _dev_state(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Any:
    from kubelambda.devcluster import DevState

    return DevState.read(state_dir_of(args, env))


def _context_namespace(kubeconfig: str) -> str | None:
    try:
        config = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    current = config.get("current-context")
    for ctx in config.get("contexts") or []:
        if ctx.get("name") == current:
            ns = (ctx.get("context") or {}).get("namespace")
            return str(ns) if ns else None
    return None


def resolve_target(
    args: argparse.Namespace, *, env: Mapping[str, str] = os.environ, home: Path | None = None
) -> Target:
    """``--kubeconfig`` > ``$KUBECONFIG`` > the dev cluster's (dev.json) > ``~/.kube/config``."""
    home = home if home is not None else Path.home()
    kubeconfig, source = args.kubeconfig, "--kubeconfig"
    if not kubeconfig and env.get("KUBECONFIG"):
        kubeconfig, source = env["KUBECONFIG"].split(os.pathsep)[0], "$KUBECONFIG"
    if not kubeconfig:
        state = _dev_state(args, env)
        if state is not None and state.state == "running" and state.kubeconfig:
            kubeconfig, source = state.kubeconfig, "the local cluster (kubelambda dev up)"
    if not kubeconfig and (home / ".kube" / "config").exists():
        kubeconfig, source = str(home / ".kube" / "config"), "~/.kube/config"
    if not kubeconfig:
        raise CliError(
            "no cluster: no --kubeconfig, no $KUBECONFIG, no running local cluster, no ~/.kube/config",
            hint="start one with `kubelambda dev up`, or pass --kubeconfig",
        )
    if not Path(kubeconfig).exists():
        raise CliError(f"kubeconfig {kubeconfig} (from {source}) does not exist", hint="check the path")
    namespace = (
        getattr(args, "namespace", None)
        or env.get("KUBELAMBDA_NAMESPACE")
        or _context_namespace(kubeconfig)
        or "default"
    )
    return Target(kubeconfig=kubeconfig, namespace=namespace, source=source)


def resolve_gateway(args: argparse.Namespace, *, env: Mapping[str, str] = os.environ) -> str:
    """``--endpoint-url`` > ``$KUBELAMBDA_GATEWAY_URL`` > the dev cluster's gateway."""
    if getattr(args, "endpoint_url", None):
        return str(args.endpoint_url).rstrip("/")
    if env.get("KUBELAMBDA_GATEWAY_URL"):
        return env["KUBELAMBDA_GATEWAY_URL"].rstrip("/")
    state = _dev_state(args, env)
    if state is not None and state.state == "running" and state.gateway_url:
        return str(state.gateway_url).rstrip("/")
    raise CliError(
        "no gateway: no --endpoint-url, no $KUBELAMBDA_GATEWAY_URL, no running local cluster",
        hint="start one with `kubelambda dev up`, or pass --endpoint-url http://GATEWAY",
        code=EXIT_USAGE,
    )


def resolve_credentials(
    args: argparse.Namespace, gateway_url: str, *, env: Mapping[str, str] = os.environ
) -> tuple[str, str] | None:
    """The access key to sign with: the local cluster's developer key when talking to its gateway, else
    ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``, else none (only a gateway with auth off answers)."""
    state = _dev_state(args, env)
    if (
        state is not None
        and state.state == "running"
        and str(state.gateway_url or "").rstrip("/") == gateway_url
        and state.aws_access_key_id
    ):
        return str(state.aws_access_key_id), str(state.aws_secret_access_key)
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return None


def sign(
    method: str, url: str, body: bytes, headers: dict[str, str], credentials: tuple[str, str], *, region: str
) -> dict[str, str]:
    """``headers`` plus AWS SigV4's (service ``lambda``), signed with botocore as every AWS SDK signs."""
    from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(Credentials(*credentials), "lambda", region).add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


def split_name(name: str, namespace: str) -> tuple[str, str]:
    """``ns/name`` or ``name`` (in ``namespace``) → ``(namespace, name)``."""
    if "/" in name:
        ns, _, short = name.partition("/")
        if not ns or not short or "/" in short:
            raise CliError(f"bad function name {name!r}", hint="use NAME or NAMESPACE/NAME", code=EXIT_USAGE)
        return ns, short
    return namespace, name


def print_structured(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=True, default_flow_style=False))


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
