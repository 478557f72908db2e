"""Agent benchmarks, side by side with the AWS Lambda Runtime Interface Emulator (RIE), or with OpenFaaS'
of-watchdog (``--peer``).

    .venv/bin/python bench/agent_bench.py [--requests 3000] [--rounds 3] [--peer]

- Warm invocations of a no-op Python handler, one worker, one client connection (closed loop):
  throughput and p50/p99 latency through the agent and through the RIE, with the same handler and
  the same runtime client (ours, then AWS's awslambdaric), interleaved in rounds so that a noisy
  neighbour hurts both alike.
- Agent overhead: p50 through the agent minus p50 of calling the handler in-process.
- Idle RSS of the agent (and of the RIE) with one initialised worker.
- The same for a no-op Node.js handler with our Node.js client (skip with --no-node).

With ``--peer`` (``make bench-agent-peer``), instead of the RIE rows: the same no-op handler behind OpenFaaS'
of-watchdog in HTTP mode (``mode=http``: the watchdog forwards each request to the function's own HTTP server,
here Python's ``http.server`` calling the handler, HTTP/1.1 kept alive), interleaved with the agent in the same
rounds; idle RSS of the agent or watchdog alone and with its runtime or function process. (That HTTP server called
directly answered slower than through the watchdog at load 60, p50 5-20 ms, for a reason not found: not shown.)

CPU per call (``--records``, ``--before-agent``/``--before-client``): the "CPU us/call" columns are the target
process's own CPU (the agent, the RIE or the watchdog) and its children's (the runtime or function process) per
measured call, from /proc (psutil), over the same load. ``--records N`` sends an event of N DynamoDB stream records
(~527 bytes each, as the PostgreSQL bridge sends them) instead of ``{}``, to a handler that returns None. The agent is
called with the pod's token as the gateway does (the agent then does not check the body again). ``--before-agent
BINARY`` (and ``--before-client BOOTSTRAP_PY``) add a target with an older agent (and runtime client) into the same
rounds: a before/after in one run. Our Python client runs from the local node's runtime folder (bootstrap.py beside
its private orjson, ``kubelambda.runtimes.local_runtime_dir``); a ``--before-client`` file runs where it lies, without
it (e.g. main's: ``git show main:runtime-images/python/bootstrap.py > /tmp/before.py``).

The RIE is built from its Go module into the cache on first use; of-watchdog by hack/of-watchdog.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from _common import pct
from kubelambda.runtimes import agent_binary, local_command, local_runtime_dir, runtime_images_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kltest.ric import cache_dir, ensure_awslambdaric

RIE_MODULE = "github.com/aws/aws-lambda-runtime-interface-emulator"
RIE_VERSION = "v0.0.0-20261030222936-bef5c4ba774d"
HANDLER = "def handler(event, context):\n    return None\n"
# The function process of the of-watchdog rows: the same handler behind an HTTP server of the standard library,
# one request at a time per connection (argv: port, code directory), chunked request bodies read.
WATCHDOG_UPSTREAM = """
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, sys.argv[2])
from app import handler


class Invoke(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []  # the watchdog streams the request body in chunks
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\\r\\n", b"\\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def do_POST(self):
        body = self.body()
        answer = json.dumps(handler(json.loads(body or b"null"), None)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Invoke).serve_forever()
"""
NODE_HANDLER = "exports.handler = async () => null;\n"
AGENT_TOKEN = "agent-bench-token"  # the pod's token, which the gateway shows (docs/security.md)


def stream_records(n: int) -> bytes:
    """An event of n DynamoDB stream records as the PostgreSQL bridge sends them (~527 bytes each); {} for 0."""
    if n == 0:
        return b"{}"
    records = [
        f'{{"eventID":"{i:032x}","eventName":"INSERT","eventVersion":"1.1","eventSource":"aws:dynamodb",'
        f'"awsRegion":"us-east-1","dynamodb":{{"ApproximateCreationDateTime":1796510000.{i % 1000:03d},'
        f'"Keys":{{"id":{{"N":"{i}"}}}},"NewImage":{{"id":{{"N":"{i}"}},"body":{{"S":"payload \u00e9"}},'
        f'"created":{{"S":"2026-12-06T00:00:00.{i:06d}Z"}}}},"SequenceNumber":"{i:021d}","SizeBytes":{100 + i % 50},'
        f'"StreamViewType":"NEW_AND_OLD_IMAGES"}},'
        f'"eventSourceARN":"arn:aws:dynamodb:us-east-1:bench:table/public.items/stream/2026-12-06T00:00:00.000"}}'
        for i in range(n)
    ]
    return ('{"Records":[' + ",".join(records) + "]}").encode()


def ensure_rie() -> Path:
    """aws-lambda-rie built with `go install` from the Go module proxy, cached by version."""
    binary = cache_dir().parent / "bin" / f"rie-{RIE_VERSION}" / "aws-lambda-rie"
    if not binary.is_file():
        print(f"building {RIE_MODULE}/cmd/aws-lambda-rie@{RIE_VERSION} ...", file=sys.stderr)
        env = {**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        subprocess.run(
            ["go", "install", "-trimpath", f"{RIE_MODULE}/cmd/aws-lambda-rie@{RIE_VERSION}"],
            env=env,
            check=True,
        )
    return binary


def free_loopback(ports: list[int]) -> str:
    for _ in range(50):
        ip = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind((ip, port))
            return ip
        except OSError:
            continue
    raise RuntimeError("no free loopback address")


@dataclass
class Target:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    host: str
    port: int
    path: str
    proc: subprocess.Popen[bytes] | None = None
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_own: float = 0.0  # CPU seconds of the process over the measured calls
    cpu_children: float = 0.0  # ... and of its runtime or function processes

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:  # the first successful invoke is the cold start
            try:
                status = invoke_once(self.host, self.port, self.path)
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not come up: {self.argv}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # of-watchdog drains for its write timeout
                self.proc.kill()
                self.proc.wait()
            for child in children:  # a function process the killed watchdog left
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) so far of the process and of its children, in seconds."""
        assert self.proc is not None
        me = psutil.Process(self.proc.pid)
        t = me.cpu_times()
        children = 0.0
        for c in me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                ct = c.cpu_times()
                children += ct.user + ct.system
        return t.user + t.system, children

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory of the process alone and with its children (runtime, function process), in MB."""
        assert self.proc is not None
        me = psutil.Process(self.proc.pid)
        own = me.memory_info().rss
        return own / 2**20, (own + sum(c.memory_info().rss for c in me.children(recursive=True))) / 2**20


def invoke_once(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {AGENT_TOKEN}"}
        conn.request("POST", path, body=b"{}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def load(target: Target, requests: int, body: bytes = b"{}") -> None:
    """Closed loop over one kept-alive connection; appends per-request latencies and adds the CPU they cost."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {AGENT_TOKEN}"}
    lat = target.latencies
    clock = time.perf_counter
    own, children = target.cpu_seconds()
    start = clock()
    for _ in range(requests):
        t0 = clock()
        conn.request("POST", target.path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        lat.append(clock() - t0)
        if resp.status != 200:
            raise RuntimeError(f"{target.name} answered {resp.status}")
    target.seconds += clock() - start
    conn.close()
    own_after, children_after = target.cpu_seconds()
    target.cpu_own += own_after - own
    target.cpu_children += children_after - children


def agent_target(
    name: str,
    code: Path,
    client_cmd: list[str] | None,
    env: dict[str, str],
    runtime: str = "python3.12",
    agent: Path | None = None,
) -> Target:
    ip = free_loopback([8080, 9001])
    cmd = local_command(
        runtime,
        code,
        "app.handler",
        agent=agent or agent_binary(),
        listen=f"{ip}:8080",
        timeout_s=30,
        runtime_cmd=client_cmd,
        base_env=env,
    )
    # The agent answers (and, for the gateway, skips checking the body) with the pod's token.
    return Target(
        name, cmd.argv, {**cmd.env, "KUBELAMBDA_AGENT_TOKEN": AGENT_TOKEN}, cmd.cwd, ip, 8080, "/invoke"
    )


def rie_target(
    name: str, code: Path, client_cmd: list[str], env: dict[str, str], runtime: str = "python3.12"
) -> Target:
    ip = free_loopback([8080, 9001])
    argv = [
        str(ensure_rie()),
        "--log-level=error",
        f"--runtime-interface-emulator-address={ip}:8080",
        f"--runtime-api-address={ip}:9001",
        *client_cmd,  # the RIE takes the last argument as the handler
    ]
    lambda_env = {
        **env,
        "_HANDLER": "app.handler",
        "LAMBDA_TASK_ROOT": str(code),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
    }
    return Target(name, argv, lambda_env, str(code), ip, 8080, "/2015-03-31/functions/function/invocations")


def ensure_of_watchdog() -> Path:
    """of-watchdog built by hack/of-watchdog.sh (cached); its path."""
    script = Path(__file__).resolve().parents[1] / "hack" / "of-watchdog.sh"
    built = subprocess.run([str(script)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(built.stdout.strip().splitlines()[-1])


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def watchdog_targets(code: Path, env: dict[str, str]) -> list[Target]:
    """of-watchdog in HTTP mode before the handler's HTTP server. The watchdog listens on every address and always
    serves its metrics on port 8081, which must be free."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", 8081))
        except OSError as e:
            raise RuntimeError(
                f"of-watchdog serves its metrics on port 8081, which is taken here: {e}"
            ) from e
    upstream = free_port()
    (code / "upstream.py").write_text(WATCHDOG_UPSTREAM)
    server = [sys.executable, str(code / "upstream.py")]  # of-watchdog splits fprocess at spaces
    port = free_port("0.0.0.0")
    watchdog_env = {
        **env,
        "mode": "http",
        "port": str(port),
        "fprocess": " ".join([*server, str(upstream), str(code)]),
        "upstream_url": f"http://127.0.0.1:{upstream}",
        "suppress_lock": "true",
        "exec_timeout": "30s",
        "write_timeout": "30s",
        "read_timeout": "30s",
    }
    binary = str(ensure_of_watchdog())
    return [Target("of-watchdog + http.server", [binary], watchdog_env, str(code), "127.0.0.1", port, "/")]


def direct_call_p50(code: Path, n: int = 20000) -> float:
    sys.path.insert(0, str(code))
    import app  # type: ignore[import-not-found]

    lat = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        app.handler({}, None)
        lat.append(clock() - t0)
    return pct(lat, 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--no-node", action="store_true", help="skip the Node.js rows")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="OpenFaaS' of-watchdog (HTTP mode) instead of the RIE rows, Python only",
    )
    parser.add_argument(
        "--records",
        type=int,
        default=0,
        help="events of N DynamoDB stream records (~527 B each) instead of {}",
    )
    parser.add_argument(
        "--before-agent", type=Path, help="also an older agent binary, in the same rounds (before/after)"
    )
    parser.add_argument(
        "--before-client", type=Path, help="the Python runtime client (bootstrap.py) of --before-agent's row"
    )
    args = parser.parse_args()
    if args.records < 0:
        parser.error(f"--records must be at least 0, got {args.records}")
    if args.before_client is not None and args.before_agent is None:
        parser.error("--before-client needs --before-agent")
    for option, path in (("--before-agent", args.before_agent), ("--before-client", args.before_client)):
        if path is not None and not path.is_file():
            parser.error(f"{option}: no such file: {path}")
    event = stream_records(args.records)

    workdir = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    code = workdir / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    (code / "app.js").write_text(NODE_HANDLER)
    base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    # The local node's Python runtime folder: bootstrap.py beside its private orjson (hack/python-runtime.sh).
    ours = [sys.executable, str(local_runtime_dir("python3.12") / "bootstrap.py"), "app.handler"]
    targets = [agent_target("agent + kubelambda client", code, ours, base_env)]
    if args.before_agent is not None:
        before = (
            ours if args.before_client is None else [sys.executable, str(args.before_client), "app.handler"]
        )
        targets.append(agent_target("BEFORE agent + client", code, before, base_env, agent=args.before_agent))
    if args.peer:
        targets += watchdog_targets(code, base_env)
    else:
        aws = [sys.executable, "-m", "awslambdaric", "app.handler"]
        aws_env = {**base_env, "PYTHONPATH": f"{ensure_awslambdaric()}:{code}"}
        targets += [
            rie_target("RIE   + kubelambda client", code, ours, base_env),
            agent_target("agent + awslambdaric", code, aws, aws_env),
            rie_target("RIE   + awslambdaric", code, aws, aws_env),
        ]
    node = shutil.which("node")
    if not args.no_node and not args.peer and node:
        ours_js = [node, str(runtime_images_dir() / "nodejs" / "index.mjs"), "app.handler"]
        targets += [
            agent_target("agent + kubelambda node client", code, ours_js, base_env, "nodejs20"),
            rie_target("RIE   + kubelambda node client", code, ours_js, base_env, "nodejs20"),
        ]
    try:
        for t in targets:
            t.start()
            load(t, args.warmup)
            t.latencies.clear()
            t.seconds = 0.0
        for _ in range(args.rounds):
            for t in targets:
                load(t, args.requests, event)
        idle = {}
        time.sleep(2)  # let the processes settle before reading their memory
        for t in targets:
            idle[t.name] = t.rss_mb()
        direct = direct_call_p50(code)
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"warm invocations, no-op Python handler, 1 worker, 1 connection, {args.rounds}x{args.requests} requests,"
        f" event {len(event)} bytes ({args.records} stream records)"
    )
    print(
        f"{'target':32} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'idle RSS MB':>12} {'+ children':>11}"
        f" {'CPU us/call':>12} {'children':>9}   (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)"
    )
    for t in targets:
        n = len(t.latencies)
        own, tree = idle[t.name]
        print(
            f"{t.name:32} {n / t.seconds:8.0f} {pct(t.latencies, 0.5) * 1e3:8.3f} "
            f"{pct(t.latencies, 0.99) * 1e3:8.3f} {own:12.1f} {tree:11.1f}"
            f" {t.cpu_own / n * 1e6:12.0f} {t.cpu_children / n * 1e6:9.0f}"
        )
    agent_p50 = pct(targets[0].latencies, 0.5)
    print(f"direct in-process call p50: {direct * 1e6:.2f} us")
    print(
        f"agent overhead (p50 through agent + kubelambda client - direct call): {(agent_p50 - direct) * 1e3:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
