"""What every command shares: errors with hints, exit codes, finding the cluster and the gateway, output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubelambda.jsonobj import JSON

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
        help="the gateway (default: $KUBELAMBDA_GATEWAY_URL, else the gateway of the kubeconfig's cluster: a "
        "running local platform's, or the one the cluster's gateway Service publishes)",
    )
    if (
        "--kubeconfig" not in parser._option_string_actions
    ):  # a command of the cluster too (add_cluster_options)
        parser.add_argument(
            "--kubeconfig",
            default=None,
            help="the cluster whose gateway to use (default: $KUBECONFIG, else the running local platform, "
            "else ~/.kube/config)",
        )


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="output format (default table)",
    )


LOCAL_SOURCE = "the local cluster (kubelambda dev up)"


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
    kubeconfig, source = getattr(args, "kubeconfig", None), "--kubeconfig"
    if not kubeconfig and env.get("KUBECONFIG"):
        kubeconfig, source = env["KUBECONFIG"].split(os.pathsep)[0], "$KUBECONFIG"
    if not kubeconfig:
        state = _dev_state(args, env)
        if state is not None and state.state == "running" and state.kubeconfig:
            kubeconfig, source = state.kubeconfig, LOCAL_SOURCE
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


# How a cluster publishes its gateway to the CLI (docs/cli.md#finding-the-gateway): the chart's gateway Service
# carries these labels; an annotation on it names the URL to use from outside (an Ingress, a load balancer).
GATEWAY_SELECTOR = "app.kubernetes.io/name=kubelambda,app.kubernetes.io/component=gateway"
GATEWAY_URL_ANNOTATION = "kubelambda.io/gateway-url"


def kubeconfig_server(kubeconfig: str) -> str | None:
    """The API server of the kubeconfig's current context."""
    try:
        config = yaml.safe_load(Path(kubeconfig).read_text()) or {}
        context = next(c["context"] for c in config["contexts"] if c["name"] == config.get("current-context"))
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        return str(cluster["server"]).rstrip("/")
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError):
        return None


def local_platform_serving(server: str, args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Any:
    """The running local platform whose API server is ``server``: the command's own state folder first, then
    every named platform under :func:`state_home`."""
    return next((s for s in _local_platforms(args, env) if str(s.server or "").rstrip("/") == server), None)


def gateway_of_service(service: JSON, server: str) -> tuple[str | None, str]:
    """``(url, what was found)`` for one gateway Service: its annotation's URL; a LoadBalancer's address; a
    NodePort on the API server's host (kind and single-node clusters map it there); a ClusterIP: none."""
    meta, spec = service.get("metadata") or {}, service.get("spec") or {}
    name = f"Service {meta.get('namespace')}/{meta.get('name')}"
    annotated = (meta.get("annotations") or {}).get(GATEWAY_URL_ANNOTATION)
    if annotated:
        return str(annotated).rstrip("/"), f"{name} (annotation {GATEWAY_URL_ANNOTATION})"
    ports = spec.get("ports") or [{}]
    port = next((p for p in ports if p.get("name") == "http"), ports[0])
    kind = spec.get("type", "ClusterIP")
    if kind == "LoadBalancer":
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            host = ingress.get("hostname") or ingress.get("ip")
            if host:
                return f"http://{host}:{port.get('port')}", f"{name} (LoadBalancer)"
        return None, f"{name} is a LoadBalancer without an address yet"
    if kind == "NodePort" and port.get("nodePort"):
        host = urllib.parse.urlsplit(server).hostname or "127.0.0.1"
        return f"http://{host}:{port['nodePort']}", f"{name} (NodePort on the API server's host)"
    return None, f"{name} is {kind}: not reachable from outside the cluster"


async def _gateway_services(kubeconfig: str) -> tuple[list[JSON], str]:
    """The cluster's gateway Services (every namespace, else ``kubelambda-system`` when listing all is not
    allowed), and how they were looked for."""
    from kubelambda.kube import ApiError, KubeClient

    params = {"labelSelector": GATEWAY_SELECTOR}
    async with KubeClient.from_kubeconfig(kubeconfig) as kube:
        try:
            found = await kube.list("/api/v1/services", params=params)
            return list(found.get("items") or []), "in every namespace"
        except ApiError as e:
            if e.status != 403:
                raise
        found = await kube.list("/api/v1/namespaces/kubelambda-system/services", params=params)
        return list(found.get("items") or []), "in kubelambda-system (listing every namespace is not allowed)"


def discover_gateway(kubeconfig: str, server: str) -> tuple[str | None, list[str]]:
    """The gateway the cluster publishes (:func:`gateway_of_service`), and what was tried."""
    import aiohttp

    from kubelambda.kube import ApiError

    where = f"Services labelled {GATEWAY_SELECTOR}"
    try:
        services, scope = asyncio.run(_gateway_services(kubeconfig))
    except (ApiError, aiohttp.ClientError, OSError, ValueError, KeyError, StopIteration) as e:
        return None, [f"{where}: the lookup at the API server {server} failed ({type(e).__name__}: {e})"]
    if not services:
        return None, [f"{where} {scope}: none"]
    found = [gateway_of_service(svc, server) for svc in services]
    urls = sorted({url for url, _ in found if url})
    if len(urls) > 1:
        raise CliError(
            f"the cluster at {server} publishes several gateways: {', '.join(urls)}",
            hint="pick one with --endpoint-url (or $KUBELAMBDA_GATEWAY_URL)",
            code=EXIT_USAGE,
        )
    return (urls[0] if urls else None), [note for _, note in found]


def resolve_gateway(
    args: argparse.Namespace, *, env: Mapping[str, str] = os.environ, home: Path | None = None
) -> str:
    """``--endpoint-url`` > ``$KUBELAMBDA_GATEWAY_URL`` > the gateway of the cluster the command talks to (as
    :func:`resolve_target` picks it): a running local platform of that API server (its dev.json), else the
    gateway the cluster publishes (its gateway Service: :func:`discover_gateway`)."""
    if getattr(args, "endpoint_url", None):
        return str(args.endpoint_url).rstrip("/")
    if env.get("KUBELAMBDA_GATEWAY_URL"):
        return env["KUBELAMBDA_GATEWAY_URL"].rstrip("/")
    tried = ["no --endpoint-url", "no $KUBELAMBDA_GATEWAY_URL"]
    try:
        target = resolve_target(args, env=env, home=home)
    except CliError as e:
        raise CliError(
            f"no gateway: {', '.join(tried)}, and no cluster ({e.message})",
            hint="start one with `kubelambda dev up`, or pass --endpoint-url http://GATEWAY",
            code=EXIT_USAGE,
        ) from e
    if target.source == LOCAL_SOURCE:  # the command's own local platform (its dev.json)
        state = _dev_state(args, env)
        if state is not None and state.gateway_url:
            return str(state.gateway_url).rstrip("/")
    server = kubeconfig_server(target.kubeconfig) or "?"
    local = local_platform_serving(server, args, env)
    if local is not None and local.gateway_url:
        return str(local.gateway_url).rstrip("/")
    tried.append(f"no running local platform under {state_home(env)} serves {server}")
    url, notes = discover_gateway(target.kubeconfig, server)
    if url is not None:
        return url
    raise CliError(
        f"no gateway for the cluster at {server} (kubeconfig from {target.source}): {'; '.join(tried + notes)}",
        hint=f"pass --endpoint-url http://GATEWAY, or annotate the gateway Service with {GATEWAY_URL_ANNOTATION}: "
        "URL (docs/cli.md#finding-the-gateway); a local platform: `kubelambda dev status`",
        code=EXIT_USAGE,
    )


def _local_platforms(args: argparse.Namespace, env: Mapping[str, str]) -> list[Any]:
    """Every running local platform's state: the command's own, then each under :func:`state_home`."""
    from kubelambda.devcluster import DevState

    home = state_home(env)
    folders = [state_dir_of(args, env), *(sorted(home.iterdir()) if home.is_dir() else [])]
    states = [DevState.read(folder) for folder in folders]
    return [s for s in states if s is not None and s.state == "running"]


def resolve_credentials(
    args: argparse.Namespace, gateway_url: str, *, env: Mapping[str, str] = os.environ
) -> tuple[str, str] | None:
    """The access key to sign with: a local platform's developer key when talking to its gateway, else
    ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``, else none (only a gateway with auth off answers)."""
    for state in _local_platforms(args, env):
        if str(state.gateway_url or "").rstrip("/") == gateway_url and state.aws_access_key_id:
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
