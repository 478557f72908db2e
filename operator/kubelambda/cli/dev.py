"""``kubelambda dev up|down|status|serve``: the local development cluster (no Docker needed)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubelambda import natsauth
from kubelambda.cli._common import CliError, add_state_dir, state_dir_of


def alive(pid: int) -> bool:
    from kubelambda.devcluster._process import alive as process_alive  # lazy: the devcluster package is heavy

    return process_alive(pid)


def _state_dir(args: argparse.Namespace) -> Path:
    return state_dir_of(args)


def _print_state(state_dir: Path) -> None:
    from kubelambda.devcluster import DevState

    state = DevState.read(state_dir)
    if state is None:
        print(f"no local cluster recorded in {state_dir}")
        return
    print(f"state:       {state.state} (supervisor pid {state.pid})")
    print(f"state dir:   {state_dir}")
    if state.state == "running":
        print(f"kubeconfig:  {state.kubeconfig}")
        print(f"api server:  {state.server}")
        kind = "container node" if state.node_kind == "container" else "process node"
        print(
            f"node:        {state.node}, {kind} (kubelet endpoint https://{state.node_ip}:{state.kubelet_port})"
        )
        print(f"pod network: {state.pod_network}")
        if state.limits:
            print(f"limits:      {state.limits}")
        for name, pid in sorted(state.components.items()):
            print(f"  {name:<24} pid {pid}")
        print(f"logs:        {state.logs}")
        print(f"started in:  {state.startup_seconds:.1f} s")
        if state.gateway_url:
            print(f"gateway:     {state.gateway_url}")
        if state.nats_url:
            print(f"nats:        {natsauth.redacted(state.nats_url)}")
        if state.code_store_url:
            # The control-plane API's zips (docs/local-cluster.md): bucket kubelambda-code; S3Bucket may name uploads.
            print(f"code store:  {state.code_store_url} (S3, SeaweedFS; CreateFunction's S3Bucket: uploads)")
        if state.gateway_access:
            print(f"reached by:  {state.gateway_access}")
        for note in state.moved:
            print(f"moved:       {note}")
        print()
        for line in env_lines(state, nats_password=False):  # also `eval "$(kubelambda dev env)"`
            print(f"  {line}")
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
    try:
        ensure_binaries()
    except FileNotFoundError as e:
        raise CliError(str(e), hint="`kubelambda doctor` says what the local platform needs") from e
    except subprocess.CalledProcessError as e:
        raise CliError(
            f"building the Kubernetes binaries failed (exit status {e.returncode}; its output is above)",
            hint="they are built from Go modules: `kubelambda doctor` checks Go and the module proxy",
        ) from e
    log = state_dir / "logs" / "dev.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    (state_dir / "dev.json").unlink(missing_ok=True)
    print(f"==> Starting the local cluster in the background (log: {log})", flush=True)
    argv = [sys.executable, "-m", "kubelambda", "dev", "serve", "--state-dir", str(state_dir)]
    if args.backoff is not None:
        argv += ["--backoff", str(args.backoff)]
    argv += ["--pod-network", args.pod_network, "--limits", args.limits, "--node", args.node]
    if not args.platform:
        argv.append("--no-platform")
    if args.substitute_runtimes:
        argv.append("--substitute-runtimes")
    argv += ["--gateway-port", str(args.gateway_port), "--nats-port", str(args.nats_port)]
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
            error = state.error.splitlines()[0] if state is not None and state.error else "see the log"
            raise CliError(
                f"the local cluster failed to start: {error}",
                hint=f"the whole story is in {log}; `kubelambda doctor` checks what it needs",
            )
        time.sleep(0.2)
    print(f"The local cluster did not start within {args.timeout:.0f} s; see {log}", file=sys.stderr)
    proc.send_signal(signal.SIGTERM)
    return 1


def cmd_dev_down(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import DevState
    from kubelambda.devcluster._cgroups import cleanup_recorded

    state_dir = _state_dir(args)
    state = DevState.read(state_dir)
    if state is None or not alive(state.pid):
        # A supervisor that was killed leaves its cgroups (its pods died with it): remove them. The container
        # node's containers outlive it (their shims are not its children): they, their mounts, network
        # namespaces and iptables rules go too.
        left = cleanup_recorded(state_dir) + _container_leftovers(state_dir)
        for path in left:
            print(f"warning: could not remove the cgroup {path}", file=sys.stderr)
        print("The local cluster is not running.")
        return 0 if not left else 1
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(state.pid):
        os.kill(state.pid, signal.SIGKILL)
        print(f"The supervisor did not stop within {args.timeout:.0f} s and was killed.")
    leftovers = [f"{name} ({pid})" for name, pid in state.components.items() if alive(pid)]
    leftovers += [f"cgroup {path}" for path in cleanup_recorded(state_dir)]
    leftovers += _container_leftovers(state_dir)
    for name_pid in leftovers:
        print(f"warning: {name_pid} is still running", file=sys.stderr)
    print("The local cluster is stopped." if not leftovers else "The local cluster stopped with leftovers.")
    return 0 if not leftovers else 1


def _container_leftovers(state_dir: Path) -> list[str]:
    """Removes what a container node recorded in ``state_dir`` left on the host; returns what stayed."""
    from kubelambda.devcluster._containernode import RECORD, cleanup_host

    if not (state_dir / RECORD).exists():
        return []
    return cleanup_host(state_dir)


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


def env_lines(state: Any, *, nats_password: bool = True) -> list[str]:
    """``export`` lines for a shell: the kubeconfig, PATH with kubelambda and the server's kubectl first, the
    developer key for the AWS CLI and SDKs, and the platform's NATS (its password hidden without
    ``nats_password``)."""
    lines = [f"export KUBECONFIG={state.kubeconfig}"]
    first = [str(Path(sys.executable).parent)]
    if state.kubectl:
        first.insert(0, str(Path(state.kubectl).parent))
    lines.append(f"export PATH={os.pathsep.join(first)}{os.pathsep}$PATH")
    if state.aws_access_key_id:
        lines += [
            f"export AWS_ENDPOINT_URL_LAMBDA={state.gateway_url}",
            f"export AWS_ACCESS_KEY_ID={state.aws_access_key_id}",
            f"export AWS_SECRET_ACCESS_KEY={state.aws_secret_access_key}",
            "export AWS_REGION=us-east-1",
            "export AWS_DEFAULT_REGION=us-east-1",  # the AWS CLI v1 reads only this one
        ]
    if state.gateway_url:
        lines.append(f"export GW={state.gateway_url}")
    if state.nats_url:
        # The platform's NATS as its admin user, for the developer's own tools and examples (the `nats` CLI reads
        # NATS_URL); `dev status` shows it with the password hidden.
        url = state.nats_url if nats_password else natsauth.redacted(state.nats_url)
        lines.append(f"export NATS_URL={url}")
    return lines


def cmd_dev_env(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import DevState

    state_dir = _state_dir(args)
    state = DevState.read(state_dir)
    if state is None or state.state != "running" or not alive(state.pid):
        raise CliError(
            f"no running local platform in {state_dir}",
            hint="start it with `kubelambda dev up` (or name it: --platform-name)",
            code=3,
        )
    print("\n".join(env_lines(state)))
    return 0


def cmd_dev_serve(args: argparse.Namespace) -> int:
    from kubelambda.devcluster import serve
    from kubelambda.devcluster._interpreters import SUBSTITUTE_ENV, substitution_allowed

    if args.substitute_runtimes:
        os.environ[SUBSTITUTE_ENV] = "1"  # read by the node when it starts a runtime container
    if substitution_allowed():
        print(
            f"warning: runtime substitution is on ({SUBSTITUTE_ENV}): a Function whose runtime's interpreter is "
            "not installed runs on another version of it (the agent's log and REPORT lines say which)",
            file=sys.stderr,
            flush=True,
        )

    return asyncio.run(
        serve(
            _state_dir(args),
            node_name=args.node_name,
            backoff_seconds=args.backoff or 10.0,
            pod_network=args.pod_network,
            platform=args.platform,
            limits=args.limits,
            node_memory_mb=args.node_memory_mb,
            node_cpus=args.node_cpus,
            node_kind=args.node,
            gateway_port=args.gateway_port,
            nats_port=args.nats_port,
        )
    )


def _positive(option: str, unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ 1, else an error naming ``option`` and the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(
                f"{option} must be a positive whole number of {unit}, not {text!r}"
            )
        return value

    return parse


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from 1 to 65535, not {text!r}")
    return port


# devcluster._platform's DEFAULT_GATEWAY_PORT and DEFAULT_NATS_PORT (not imported here: the CLI starts without
# loading the local cluster's code; tests/unit/test_cli_parse.py checks they agree).
FIXED_PORTS = (("gateway", 8090), ("nats", 4222))


def _add_port_options(parser: argparse.ArgumentParser) -> None:
    for what, default in FIXED_PORTS:
        parser.add_argument(
            f"--{what}-port",
            type=_port,
            default=default,
            metavar="PORT",
            help=f"the {'gateway' if what == 'gateway' else 'NATS'} port kept when free (default {default}); "
            "taken: another, which dev up and dev status announce",
        )


def register(commands: Any) -> None:
    dev = commands.add_parser("dev", help="the local development cluster (no Docker needed)")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)

    up = dev_commands.add_parser("up", help="start the local cluster in the background")
    add_state_dir(up)
    up.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the cluster (default 180)"
    )
    up.add_argument(
        "--backoff", type=float, default=None, help="crash-loop back-off base in seconds (default 10)"
    )
    up.add_argument(
        "--pod-network", choices=("auto", "alias", "loopback"), default="auto", help="see `dev serve`"
    )
    up.add_argument("--limits", choices=("auto", "off"), default="auto", help="see `dev serve`")
    up.add_argument("--node", choices=("process", "container"), default="process", help="see `dev serve`")
    up.add_argument(
        "--no-platform",
        dest="platform",
        action="store_false",
        help="only Kubernetes: no kubelambda operator and gateway (the test suites run their own)",
    )
    up.add_argument(
        "--substitute-runtimes",
        action="store_true",
        help="dev opt-in: run a runtime whose interpreter version is not installed on another version of it "
        "(e.g. python3.13 on Python 3.11; logged, and named in every REPORT line); also "
        "KUBELAMBDA_DEV_SUBSTITUTE_RUNTIMES=1. Default: such a Function waits with reason RuntimeUnavailable",
    )
    _add_port_options(up)
    up.set_defaults(func=cmd_dev_up)

    down = dev_commands.add_parser("down", help="stop the local cluster and every pod process")
    add_state_dir(down)
    down.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait before killing (default 60)"
    )
    down.set_defaults(func=cmd_dev_down)

    status = dev_commands.add_parser("status", help="what runs where; exit status 3 when not running")
    add_state_dir(status)
    status.set_defaults(func=cmd_dev_status)

    env = dev_commands.add_parser(
        "env",
        help='export lines for a shell: eval "$(kubelambda dev env)" sets KUBECONFIG, PATH (kubectl), AWS_*, GW, NATS_URL',
    )
    add_state_dir(env)
    env.set_defaults(func=cmd_dev_env)

    serve = dev_commands.add_parser(
        "serve", help="run the local cluster in the foreground (what `up` starts)"
    )
    add_state_dir(serve)
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
        "--limits",
        choices=("auto", "off"),
        default="auto",
        help="auto: each container gets a cgroup with its memory and CPU limits when /sys/fs/cgroup is "
        "writable (root), else a warning; off: limits are not enforced",
    )
    serve.add_argument(
        "--node-memory-mb",
        type=_positive("--node-memory-mb", "MB"),
        default=None,
        help="process node: the memory it offers pods (capacity and allocatable), default the machine's; more "
        "than the machine has lets many small pods be scheduled (a burst of 200 instances at 128 MB)",
    )
    serve.add_argument(
        "--node-cpus",
        type=_positive("--node-cpus", "CPUs"),
        default=None,
        help="process node: the CPUs it offers pods (capacity and allocatable), default the machine's",
    )
    serve.add_argument(
        "--node",
        choices=("process", "container"),
        default="process",
        help="process (default): pods run as processes of this supervisor; container: a real kubelet with its "
        "own containerd, CNI bridge and kube-proxy (root; images from make images; docs/local-cluster.md)",
    )
    serve.add_argument(
        "--no-platform",
        dest="platform",
        action="store_false",
        help="only Kubernetes: no kubelambda operator and gateway (the test suites run their own)",
    )
    serve.add_argument(
        "--substitute-runtimes",
        action="store_true",
        help="dev opt-in: run a runtime whose interpreter version is not installed on another version of it "
        "(e.g. python3.13 on Python 3.11; logged, and named in every REPORT line); also "
        "KUBELAMBDA_DEV_SUBSTITUTE_RUNTIMES=1. Default: such a Function waits with reason RuntimeUnavailable",
    )
    _add_port_options(serve)
    serve.set_defaults(func=cmd_dev_serve)
