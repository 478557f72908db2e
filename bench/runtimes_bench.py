"""Cold start and warm latency per runtime: the same echo handler in every language, through the agent.

    .venv/bin/python bench/runtimes_bench.py [--cold 5] [--requests 500] [--rounds 3]

- Cold start: agent process start → first response to an invoke sent as soon as the agent listens
  (worker start, runtime init, handler load, first call), median of --cold starts per runtime.
- Warm: --rounds x --requests invocations of a small JSON event over one kept-alive connection, one worker,
  closed loop; p50 and p99. Runtimes are interleaved round by round, so a noisy neighbour hurts all alike.
- Baseline: the Python runtime (our client), measured in the same run. Peers: AWS's own Java runtime interface
  client on our agent, and the aws-lambda-go bootstrap under the AWS Runtime Interface Emulator (RIE).

The handlers are the runtime tests' echo functions (tests/integration/runtimes/functions).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import pct
from agent_bench import ensure_rie, free_loopback
from kubelambda.runtimes import (
    agent_binary,
    build_go_function,
    compile_java_function,
    java_runtime_dir,
    local_command,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kltest.ric import aws_lambda_java_ric_command

FUNCTIONS = Path(__file__).resolve().parents[1] / "tests" / "integration" / "runtimes" / "functions"
EVENT = b'{"hello": "world", "n": [1, 2.5, null, true]}'


@dataclass
class Row:
    name: str
    runtime: str
    code: Path
    handler: str
    runtime_cmd: list[str] | None = None
    rie: bool = False
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)

    def launch(self, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, int, str]:
        ip = free_loopback([8080, 9001])
        if self.rie:
            argv = [
                str(ensure_rie()),
                "--log-level=error",
                f"--runtime-interface-emulator-address={ip}:8080",
                f"--runtime-api-address={ip}:9001",
                str(self.code / "bootstrap"),
            ]
            run_env = {
                **env,
                "_HANDLER": self.handler,
                "LAMBDA_TASK_ROOT": str(self.code),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
            }
            path = "/2015-03-31/functions/function/invocations"
        else:
            cmd = local_command(
                self.runtime,
                self.code,
                self.handler,
                agent=agent_binary(),
                listen=f"{ip}:8080",
                timeout_s=30,
                memory_mb=512,
                runtime_cmd=self.runtime_cmd,
                base_env=env,
            )
            argv, run_env, path = cmd.argv, cmd.env, "/invoke"
        proc = subprocess.Popen(
            argv, env=run_env, cwd=str(self.code), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return proc, ip, 8080, path


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cold_start(row: Row, env: dict[str, str]) -> float:
    """Seconds from process start to the first response (the connection is retried until the port listens)."""
    t0 = time.perf_counter()
    proc, host, port, path = row.launch(env)
    try:
        deadline = t0 + 60
        while True:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                conn.request("POST", path, body=EVENT, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or resp.getheader("X-Amz-Function-Error"):
                    raise RuntimeError(f"{row.name}: {resp.status} {body[:300]!r}")
                return time.perf_counter() - t0
            except ConnectionRefusedError:
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{row.name} did not come up") from None
                time.sleep(0.002)  # the port is not bound yet: part of what is measured
            finally:
                conn.close()
    finally:
        stop(proc)


def warm(row: Row, env: dict[str, str], *, requests: int, warmup: int) -> list[float]:
    proc, host, port, path = row.launch(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection(host, port, timeout=60)
                conn.connect()
                break
            except ConnectionRefusedError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{row.name} did not come up") from None
                time.sleep(0.01)
        lat = []
        clock = time.perf_counter
        headers = {"Content-Type": "application/json"}
        for i in range(warmup + requests):
            t0 = clock()
            conn.request("POST", path, body=EVENT, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{row.name} answered {resp.status}")
            if i >= warmup:
                lat.append(clock() - t0)
        conn.close()
        return lat
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=5, help="cold starts per runtime")
    parser.add_argument(
        "--requests", type=int, default=500, help="measured warm requests per runtime per round"
    )
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests before each round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    java_runtime_dir()
    java_code = compile_java_function(FUNCTIONS / "java")
    go_code = build_go_function(FUNCTIONS / "go")
    rows = [
        Row("python3.12 (baseline)", "python3.12", FUNCTIONS / "python", "app.echo"),
        Row("nodejs20", "nodejs20", FUNCTIONS / "nodejs", "app.echo"),
        Row("java21", "java21", java_code, "example.App::echo"),
        Row(
            "java21, AWS Java RIC",
            "java21",
            java_code,
            "example.App::echo",
            runtime_cmd=aws_lambda_java_ric_command("example.App::echo", code=java_code),
        ),
        Row("go (aws-lambda-go)", "go", go_code, "echo"),
        Row("go (aws-lambda-go), RIE", "go", go_code, "echo", rie=True),
        Row("ruby3.3", "ruby3.3", FUNCTIONS / "ruby", "app.echo"),
        Row("provided (bash + curl)", "provided", FUNCTIONS / "provided", "echo"),
    ]
    missing = [tool for tool in ("node", "java", "ruby", "curl") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"missing on PATH: {', '.join(missing)}")

    for _ in range(args.cold):
        for row in rows:
            row.cold.append(cold_start(row, env))
    for _ in range(args.rounds):
        for row in rows:
            row.warm += warm(row, env, requests=args.requests, warmup=args.warmup)

    cpu = os.cpu_count()
    print(
        f"echo handler, 1 worker, {cpu} CPUs shared; cold = median of {args.cold} starts (process start → first "
        f"response); warm = {args.rounds}x{args.requests} requests over one kept-alive connection"
    )
    print(
        f"{'runtime':28} {'cold ms':>9} {'cold min':>9} {'warm p50 ms':>12} {'warm p99 ms':>12} {'req/s':>8}"
    )
    for row in rows:
        p50 = pct(row.warm, 0.5)
        print(
            f"{row.name:28} {pct(row.cold, 0.5) * 1e3:9.1f} {min(row.cold) * 1e3:9.1f} "
            f"{p50 * 1e3:12.3f} {pct(row.warm, 0.99) * 1e3:12.3f} {len(row.warm) / sum(row.warm):8.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
