"""What the benchmarks share: a local cluster of their own, percentiles, and waiting on a condition."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from kubelambda.devcluster import DevState
from kubelambda.kube import KubeClient, resource_path


def py_spy_binary() -> str:
    """py-spy's path (``pip install py-spy``; not a dependency): on PATH or beside this Python."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    return spy


def py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording process ``pid`` until sent SIGINT, writing collapsed stacks (``--format raw``) to
    ``output`` then."""
    spy = py_spy_binary()
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking"]
    return subprocess.Popen(
        [*command, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_spies(spies: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stops :func:`py_spy` recorders (each writes its file as it exits)."""
    for proc in spies:
        proc.send_signal(signal.SIGINT)
    for proc in spies:
        proc.wait(60)


BRIDGE_PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("(logging/",)),
    ("metrics", ("(prometheus_client/",)),
    ("JSON", ("(json/",)),
    ("records (shaping, sizes, ids)", ("queues/_batch.py", "streams/_batch.py")),
    ("bridge's HTTP server (/metrics, health)", ("aiohttp/web",)),
    ("invocation (HTTP client)", ("(aiohttp/", "bridge/_context.py", "kubelambda/plainhttp.py")),
    ("status writes (API server)", ("(kubelambda/kube",)),
    (
        "broker client library",
        ("(nats/", "(aio_pika/", "(aiormq/", "(pamqp/", "(redis/", "botocore/", "(aiokafka/"),
    ),
    (
        "broker module (messages, acks)",
        ("bridge/queues/", "bridge/streams/kafka.py", "bridge/streams/redis.py"),
    ),
    ("event loop", ("(asyncio/", "(uvloop/")),
)
"""What a bridge process was doing in a py-spy sample: the first category, from the innermost frame out, that
one of its frames matches (a JSON encode inside the invocation counts as JSON)."""


def profile_breakdown(path: Path) -> list[tuple[str, float]]:
    """Shares of the samples of a :func:`py_spy` profile by :data:`BRIDGE_PROFILE_CATEGORIES`, largest first;
    start-up (imports) left out."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "_find_and_load" in stack:
            continue
        frames = stack.split(";")
        kind = next(
            (
                name
                for frame in reversed(frames)
                for name, keys in BRIDGE_PROFILE_CATEGORIES
                if any(k in frame for k in keys)
            ),
            "other",
        )
        counts[kind] = counts.get(kind, 0) + int(n)
    total = sum(counts.values()) or 1
    return sorted(((k, c / total) for k, c in counts.items()), key=lambda kv: -kv[1])


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


ECHO_HANDLER = "def handler(event, context):\n    return event\n"


def inline_function(name: str, namespace: str, handler: str = ECHO_HANDLER, **spec: Any) -> dict[str, Any]:
    """A python3.11 Function running ``handler`` (default: answers its event) as app.handler, with ``spec``
    fields added."""
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": handler}},
            **spec,
        },
    }


def start_cluster(
    state_dir: Path, *args: str, timeout: float = 180
) -> tuple[subprocess.Popen[bytes], DevState]:
    """``kubelambda dev serve [args]`` (the whole platform) in ``state_dir``; returns once its dev.json says
    running (``timeout``: a container node imports its images first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelambda", "dev", "serve", "--state-dir", str(state_dir), *args],
        stdout=(state_dir / "serve.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = DevState.read(state_dir)
        if state is not None and state.state == "running" and state.pid == proc.pid:
            return proc, state
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError((state_dir / "serve.log").read_text()[-3000:])


async def developer_headers(state: DevState) -> dict[str, str]:
    """``Authorization: Bearer`` with a token of the local cluster's developer ServiceAccount (allowed to invoke
    every Function; the gateway runs with auth on, docs/security.md): a static header costs the load generator
    nothing per request, unlike signing each one."""
    from kubelambda.devcluster._platform import DEVELOPER_ACCOUNT, DEVELOPER_NAMESPACE
    from kubelambda.kube import KubeClient, resource_path

    async with KubeClient.from_kubeconfig(state.kubeconfig) as kube:
        answer = await kube.create(
            resource_path(
                "v1",
                "serviceaccounts",
                namespace=DEVELOPER_NAMESPACE,
                name=DEVELOPER_ACCOUNT,
                subresource="token",
            ),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 7200},
            },
        )
    return {"Authorization": f"Bearer {answer['status']['token']}"}


def stop_cluster(proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    """SIGTERM to the supervisor; whatever of this cluster still runs after 90 s (every process of it names
    the state dir on its command line) is killed, before the state dir is removed under it."""
    proc.terminate()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        print(
            "warning: the local cluster did not stop within 90 s; killing what is left of it", file=sys.stderr
        )
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(state_dir).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@dataclass
class Platform:
    """A whole local platform of a benchmark's own (see :func:`platform`)."""

    state: DevState
    state_dir: Path
    proc: subprocess.Popen[bytes]
    kube: KubeClient
    http: aiohttp.ClientSession  # sends the developer's token (see developer_headers)

    @property
    def gateway(self) -> str:
        assert self.state.gateway_url
        return self.state.gateway_url


def warm_function(
    name: str, namespace: str, handler: str, *, per_instance: int, **spec: Any
) -> dict[str, Any]:
    """A python3.11 Function of one always-warm instance (min = max = 1) running ``handler`` as app.handler,
    with ``spec`` fields added."""
    return inline_function(
        name,
        namespace,
        handler,
        scaling={"minInstances": 1, "maxInstances": 1},
        concurrency={"perInstance": per_instance},
        **spec,
    )


@contextlib.asynccontextmanager
async def platform(
    name: str, namespace: str, *, connections: int = 100, serve_args: Sequence[str] = ()
) -> AsyncIterator[Platform]:
    """Builds what is missing, starts ``kubelambda dev serve`` in a temporary state dir, and yields it with an
    API client, an HTTP session with the developer's token (``connections``: its connection limit, 0 = none) and
    ``namespace`` created. On a failure the tails of the gateway's and operator's logs go to stderr; the cluster
    is always stopped (:func:`stop_cluster`)."""
    from kubelambda.devcluster._binaries import ensure_binaries

    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix=f"kl-bench-{name}-") as tmp:
        state_dir = Path(tmp)
        proc, state = start_cluster(state_dir, *serve_args)
        try:
            assert state.gateway_url
            headers = await developer_headers(state)
            async with (
                KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                aiohttp.ClientSession(
                    headers=headers, connector=aiohttp.TCPConnector(limit=connections)
                ) as http,
            ):
                await create_namespace(kube, namespace)
                yield Platform(state, state_dir, proc, kube, http)
        except BaseException:
            print_platform_logs(state_dir)
            raise
        finally:
            stop_cluster(proc, state_dir)


def print_platform_logs(state_dir: Path) -> None:
    """The tails of the gateway's and the operator's logs of ``kubelambda dev serve`` in ``state_dir``, on
    stderr (what a failed benchmark shows)."""
    for log_name in ("kubelambda-gateway", "kubelambda-operator"):
        log = state_dir / "logs" / f"{log_name}.log"
        if log.exists():
            print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)


async def create_function_ready(kube: KubeClient, doc: Mapping[str, Any], timeout: float = 180) -> None:
    """Creates the Function ``doc`` and waits until its ``Ready`` condition is True."""
    meta = doc["metadata"]
    await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=meta["namespace"]), doc)
    path = resource_path(
        "kubelambda.io/v1alpha1", "functions", namespace=meta["namespace"], name=meta["name"]
    )
    await wait(
        lambda: kube.get(path),
        lambda f: any(
            c["type"] == "Ready" and c["status"] == "True" for c in f.get("status", {}).get("conditions", [])
        ),
        f"the function {meta['name']} Ready",
        timeout,
        tolerate_errors=True,
    )


def load_average() -> str:
    """The 1-minute load average now, as printed beside each figure (2 cores: above 2, processes queue)."""
    return f"load {os.getloadavg()[0]:.0f}"


def add_bridge_bench_options(parser: argparse.ArgumentParser) -> None:
    """``--batch`` (repeatable; default 100 and 10), ``--rounds`` and ``--function-mb`` of the queue and stream
    benches."""
    from kubelambda.resources.deployment import MB_PER_VCPU

    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 100 and 10)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every case (default 3): median and range"
    )
    parser.add_argument(
        "--function-mb",
        type=int,
        default=MB_PER_VCPU,
        help=f"memoryMB of the no-op function (default {MB_PER_VCPU}: one vCPU; its CPU limit is memoryMB /"
        f" {MB_PER_VCPU} cores, and at 128 MB, 73m, the function's quota bounded the rate, not the bridge)",
    )


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """The median of ``values`` and, with more than one, their range: ``median (min to max)``."""
    median = fmt.format(statistics.median(values))
    return median if len(values) < 2 else f"{median} ({fmt.format(min(values))} to {fmt.format(max(values))})"


async def wait(
    probe: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    what: str,
    timeout: float = 120,
    *,
    tolerate_errors: bool = False,
) -> Any:
    """Calls ``probe`` until ``done(value)``; ``tolerate_errors`` treats a failing probe as "not yet"."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
        except Exception:
            if not tolerate_errors:
                raise
        else:
            if done(value):
                return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what}; last seen: {str(value)[:2000]}")


async def wait_answering(
    http: aiohttp.ClientSession,
    url: str,
    what: str,
    *,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> None:
    """POSTs ``body`` to ``url`` until it answers 200 (a refused connection counts as "not yet")."""

    async def status() -> int:
        try:
            async with http.post(url, data=body, headers=dict(headers or {})) as resp:
                return resp.status
        except aiohttp.ClientConnectionError:
            return 0

    await wait(status, lambda s: s == 200, what, timeout)


async def create_namespace(
    kube: KubeClient, name: str, timeout: float = 120, *, tolerate_errors: bool = False
) -> None:
    """Creates the namespace ``name`` and waits for its default ServiceAccount (a Function's pods need it)."""
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": name}})
    await wait(
        lambda: kube.get_or_none(resource_path("v1", "serviceaccounts", namespace=name, name="default")),
        lambda sa: sa is not None,
        f"the default ServiceAccount of namespace {name}",
        timeout,
        tolerate_errors=tolerate_errors,
    )


async def post_load(
    http: aiohttp.ClientSession,
    url: str,
    requests: int,
    connections: int,
    *,
    body: bytes = b'{"x": 1}',
    headers: Sequence[Mapping[str, str]] = ({},),
) -> tuple[float, list[float]]:
    """``requests`` POSTs of ``body`` to ``url`` over ``connections`` concurrent workers, request i with
    ``headers[i % len(headers)]``; returns (requests per second, latencies in ms). Every answer must be a 200."""
    latencies: list[float] = []
    work = iter(range(requests))

    async def worker() -> None:
        for i in work:
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers[i % len(headers)]) as resp:
                await resp.read()
                assert resp.status == 200, (resp.status, await resp.text())
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return requests / (time.perf_counter() - started), latencies


def gateway_process(
    state_dir: Path, name: str, env: Mapping[str, str], python_args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """A ``kubelambda gateway`` process of the local cluster in ``state_dir`` (as the gateway's ServiceAccount) on a
    free port of 127.0.0.1, with ``env`` over no other ``KUBELAMBDA_*`` variable; returns it and its URL. Its log
    is ``logs/bench-gateway-<name>.log``. ``python_args``: before ``-m kubelambda gateway`` (a wrapper script)."""
    from kubelambda.devcluster._ports import free_port

    port = free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")},
        "KUBELAMBDA_GATEWAY_KUBECONFIG": str(state_dir / "gateway.kubeconfig"),
        "KUBELAMBDA_GATEWAY_HOST": "127.0.0.1",
        "KUBELAMBDA_GATEWAY_PORT": str(port),
        # The platform's agent key (the cluster's own gateway has it): agents answer no one else (401).
        "KUBELAMBDA_GATEWAY_AGENT_KEY": (state_dir / "agent.key").read_text().strip(),
        **env,
    }
    log = (state_dir / "logs" / f"bench-gateway-{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, *python_args, "-m", "kubelambda", "gateway"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full,
    )
    return proc, f"http://127.0.0.1:{port}"


def print_rows(rows: Mapping[str, list[tuple[float, list[float]]]]) -> None:
    """Each case's median req/s and p50/p99 over all its rounds, beside the first case's."""

    base: tuple[float, float] | None = None
    first = next(iter(rows), "")
    for name, results in rows.items():
        rps = statistics.median(r for r, _ in results)
        lat = [v for _, ls in results for v in ls]
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        base = base or (p50, p99)
        print(
            f"  {name:<22} {rps:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
            f"   vs {first}: p50 {p50 - base[0]:+.3f} ms ({(p50 / base[0] - 1) * 100:+.1f} %),"
            f" p99 {p99 - base[1]:+.3f} ms"
        )


async def create_warm_function(
    kube: KubeClient, namespace: str, *, per_instance: int, name: str = "warm"
) -> None:
    """A no-op python3.11 Function with one instance always up, ``per_instance`` concurrent invocations each."""
    await kube.create(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace),
        inline_function(
            name,
            namespace,
            # 1 vCPU: at the default 128 MB (73m CPU) the instance's CPU quota, not the gateway, caps
            # throughput and its throttling sets p99 (~90 ms) for every case
            memoryMB=1769,
            scaling={"minInstances": 1, "maxInstances": 1, "warmPool": False},
            concurrency={"perInstance": per_instance},
        ),
    )


async def interleaved(
    http: aiohttp.ClientSession,
    cases: Mapping[str, tuple[str, Sequence[Mapping[str, str]]]],
    *,
    rounds: int,
    requests: int,
    connections: int,
    body: bytes,
) -> dict[str, list[tuple[float, list[float]]]]:
    """Each case (name → URL and the headers to cycle through) warmed up with 300 requests, then ``rounds`` rounds
    of :func:`post_load` over every case in turn (the machine's noise hits every case alike); per case, each
    round's (req/s, latencies)."""
    for url, headers in cases.values():
        await post_load(http, url, 300, connections, body=body, headers=headers)
    rows: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (url, headers) in cases.items():
            rows[name].append(await post_load(http, url, requests, connections, body=body, headers=headers))
    return rows


Gateways = dict[str, tuple[subprocess.Popen[bytes], str]]
"""Gateway processes a bench started: name → process and URL (:func:`gateway_process`)."""


@contextlib.contextmanager
def gateway_processes(root: Path, logs: str) -> Iterator[Gateways]:
    """Holds the gateway processes a bench starts: the tails of their logs (``root/logs/<logs>``, a glob) are
    printed if the bench fails, and every one is stopped at the end."""
    gateways: Gateways = {}
    try:
        yield gateways
    except BaseException:
        for log in sorted((root / "logs").glob(logs)):
            print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        for gateway, _ in gateways.values():
            gateway.terminate()
            gateway.wait(30)


def interleaved_arguments(*, rounds: int) -> argparse.ArgumentParser:
    """The options of a bench comparing gateways in interleaved rounds (:func:`compare_gateways`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="requests per case per round")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


async def compare_gateways(
    http: aiohttp.ClientSession,
    cases: Mapping[str, tuple[str, Sequence[Mapping[str, str]]]],
    args: argparse.Namespace,
    *,
    body: bytes,
    differ: str,
    target: str,
) -> None:
    """:func:`interleaved` rounds over ``cases`` (gateways alike but for ``differ``, routing to the same warm
    instance) and their table beside the first case, with the issue's ``target``."""
    rows = await interleaved(
        http, cases, rounds=args.rounds, requests=args.requests, connections=args.connections, body=body
    )
    print(
        f"== warm invocations, {args.connections} connections, {args.rounds} x {args.requests} "
        f"requests per case, same instance, gateways alike but for {differ}"
    )
    print_rows(rows)
    print(f"  target: {target}")


def function_cpu(serve: psutil.Process, part: str = "pod") -> float:
    """CPU seconds so far of the local cluster's function pods (pods are processes here): each agent and the
    runtime under it (``part`` "pod"), the agents alone ("agent") or the runtimes alone ("runtime": the Python
    runtime client and the handler). All of them: the no-op function's pod may be one taken from the warm pool
    (its folder is named after the pool's pod), and the other pods idle meanwhile."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for proc in serve.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("kubelambda-agent" in arg for arg in proc.cmdline()[:1]):
                    agent = [proc] if part != "runtime" else []
                    runtimes = proc.children(recursive=True) if part != "agent" else []
                    total += sum(tree_cpu(p, children=False) for p in (*agent, *runtimes))
    return total


def tree_cpu(proc: psutil.Process, *, children: bool = True) -> float:
    """CPU seconds so far of ``proc`` and (``children``) its living descendants."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in (proc, *(proc.children(recursive=True) if children else ())):
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def gateway_cpu(serve: psutil.Process) -> float:
    """CPU seconds of the gateway so far (a child process of ``kubelambda dev serve``)."""
    with contextlib.suppress(psutil.Error):
        for child in serve.children():
            if "gateway" in child.cmdline():
                times = child.cpu_times()
                return float(times.user + times.system)
    return float("nan")
