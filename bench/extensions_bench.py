"""Extensions and layers, measured beside their absence in the same run.

    .venv/bin/python bench/extensions_bench.py [--requests 2000] [--rounds 3] [--cold 10]

- Warm invoke latency (p50, p99) of a no-op Python handler through the agent, one worker, one kept-alive
  connection, without extensions and with one registered no-op external extension (a Go binary built here that
  registers for INVOKE and SHUTDOWN and calls next again at once): the extension's cost is the difference, since
  the environment is reused only after the extension has called next. Rounds are interleaved.
- Cold start (agent start to the first answer) of a handler that imports a module from each of two layers
  (``--opt-dir`` holding them), beside the same handler with its modules in the task root, interleaved.

This is the agent on this machine, not a pod: the layers' init containers (fetch-layers, copy-opt) are not in it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import pct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_bench import HANDLER, Target, agent_target, load

NOOP_EXTENSION = """package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
)

func main() {
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2020-01-01/extension"
	req, _ := http.NewRequest("POST", base+"/register", bytes.NewBufferString(`{"events":["INVOKE","SHUTDOWN"]}`))
	req.Header.Set("Lambda-Extension-Name", filepath.Base(os.Args[0]))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		os.Exit(1)
	}
	resp.Body.Close()
	id := resp.Header.Get("Lambda-Extension-Identifier")
	for {
		req, _ := http.NewRequest("GET", base+"/event/next", nil)
		req.Header.Set("Lambda-Extension-Identifier", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			os.Exit(0)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(body, []byte(`"SHUTDOWN"`)) {
			os.Exit(0)
		}
	}
}
"""

LAYERED_HANDLER = "import layer_one\nimport layer_two\n\n\ndef handler(event, context):\n    return None\n"


def build_extension(workdir: Path) -> Path:
    src = workdir / "noop-src"
    src.mkdir()
    (src / "main.go").write_text(NOOP_EXTENSION)
    (src / "go.mod").write_text("module noopext\n\ngo 1.22\n")
    out = workdir / "extensions" / "noop"
    out.parent.mkdir()
    subprocess.run(
        ["go", "build", "-o", str(out), "."], cwd=src, check=True, env={**os.environ, "CGO_ENABLED": "0"}
    )
    return out.parent


def with_flags(target: Target, *flags: str) -> Target:
    cut = target.argv.index("--")
    target.argv[cut:cut] = list(flags)
    return target


def cold_start(target: Target) -> float:
    t0 = time.perf_counter()
    target.start()  # returns at the first 200
    elapsed = time.perf_counter() - t0
    target.stop()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=10, help="cold starts per variant")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code = work / "code"
        code.mkdir()
        (code / "app.py").write_text(HANDLER)
        extensions = build_extension(work)

        plain = agent_target("no extension", code, None, env)
        noop = with_flags(
            agent_target("one no-op extension", code, None, env), f"--extensions-dir={extensions}"
        )
        targets = [plain, noop]
        for t in targets:
            t.start()
            load(t, 200)  # warm-up
            t.latencies.clear()
            t.seconds = 0.0
        try:
            for _ in range(args.rounds):
                for t in targets:
                    load(t, args.requests)
        finally:
            for t in targets:
                t.stop()
        print(f"warm invoke, no-op Python handler, {args.rounds} x {args.requests} requests, interleaved")
        for t in targets:
            print(
                f"  {t.name:22} p50 {pct(t.latencies, 0.5) * 1e3:6.3f} ms  p99 {pct(t.latencies, 0.99) * 1e3:6.3f} ms"
                f"  {len(t.latencies) / t.seconds:7.0f} req/s"
            )
        print(
            f"  extension cost at p50: {(pct(noop.latencies, 0.5) - pct(plain.latencies, 0.5)) * 1e3:+.3f} ms"
        )

        # Cold start with two layers beside the same modules in the task root.
        opt = work / "opt"
        for name in ("one", "two"):
            (opt / "python").mkdir(parents=True, exist_ok=True)
            (opt / "python" / f"layer_{name}.py").write_text(f"NAME = {name!r}\n")
        layered_code = work / "layered"
        layered_code.mkdir()
        (layered_code / "app.py").write_text(LAYERED_HANDLER)
        flat_code = work / "flat"
        flat_code.mkdir()
        (flat_code / "app.py").write_text(LAYERED_HANDLER)
        for name in ("one", "two"):
            (flat_code / f"layer_{name}.py").write_text(f"NAME = {name!r}\n")
        layered_runs: list[float] = []
        flat_runs: list[float] = []
        for _ in range(args.cold):
            layered_runs.append(
                cold_start(with_flags(agent_target("layers", layered_code, None, env), f"--opt-dir={opt}"))
            )
            flat_runs.append(cold_start(agent_target("flat", flat_code, None, env)))
        print(f"cold start to the first answer, {args.cold} runs each, interleaved")
        print(
            f"  two layers in --opt-dir   p50 {pct(layered_runs, 0.5) * 1e3:7.1f} ms  max {max(layered_runs) * 1e3:7.1f} ms"
        )
        print(
            f"  same modules in task root p50 {pct(flat_runs, 0.5) * 1e3:7.1f} ms  max {max(flat_runs) * 1e3:7.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
