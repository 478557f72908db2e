"""What tracing costs on the invoke path (issue 20). Figures, never assertions.

``kubelambda gateway`` processes (auth off) alike in everything but ``KUBELAMBDA_TRACING_*`` route to the same
warm instance of a no-op function (python3.11, 1769 MB = 1 vCPU) on the local platform; the same client, in interleaved rounds,
measures warm invoke p50/p99 and throughput through each:

- ``off``: no endpoint (the default: no SDK loaded, one shared no-op context manager per span);
- ``off, 2nd gateway``: a second process alike, the noise between two gateway processes;
- ``on, sampling 0``, ``on, sampling 0.01``, ``on, sampling 1``: spans to a real Jaeger v2 on loopback
  (OTLP/HTTP, batched), a new trace kept with that probability (the callers send no ``traceparent``).

Target (the issue): <= 5 % added at p50 with sampling 1 %.

Run: ``make bench-tracing`` (``.venv/bin/python bench/tracing_bench.py --rounds 8 --requests 300``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from _common import (
    create_namespace,
    create_warm_function,
    gateway_process,
    interleaved,
    print_rows,
    start_cluster,
    stop_cluster,
    wait_answering,
)
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.kube import KubeClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kltest.jaeger import JaegerServer

NS = "bench"
BODY = b'{"x": 1}'


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="requests per case per round")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-tracing-") as tmp:
        root = Path(tmp)
        proc, state = start_cluster(root)
        gateways: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            async with (
                JaegerServer(root / "jaeger") as jaeger,
                KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            ):
                await create_namespace(kube, NS)
                await create_warm_function(kube, NS, per_instance=args.connections)
                on = {"KUBELAMBDA_TRACING_ENDPOINT": jaeger.otlp_endpoint}
                configs = {
                    "off": {},
                    "off, 2nd gateway": {},
                    "on, sampling 0": {**on, "KUBELAMBDA_TRACING_SAMPLE_RATIO": "0"},
                    "on, sampling 0.01": {**on, "KUBELAMBDA_TRACING_SAMPLE_RATIO": "0.01"},
                    "on, sampling 1": {**on, "KUBELAMBDA_TRACING_SAMPLE_RATIO": "1"},
                }
                path = f"/2015-03-31/functions/{NS}/warm/invocations"
                for i, (name, env) in enumerate(configs.items()):  # auth off: only tracing differs
                    gateways[name] = gateway_process(
                        root, f"tracing-{i}", {"KUBELAMBDA_GATEWAY_AUTH_MODE": "none", **env}
                    )

                for name, (_, url) in gateways.items():
                    await wait_answering(http, url + path, f"the {name} gateway", body=BODY, timeout=180)
                cases = {name: (url + path, [{}]) for name, (_, url) in gateways.items()}
                rows = await interleaved(
                    http,
                    cases,
                    rounds=args.rounds,
                    requests=args.requests,
                    connections=args.connections,
                    body=BODY,
                )
                print(
                    f"== warm invocations, {args.connections} connections, {args.rounds} x {args.requests} "
                    "requests per case, same instance, gateways alike but for KUBELAMBDA_TRACING_*"
                )
                print_rows(rows)
                print("  target: <= 5 % added at p50 with sampling 0.01")
                services = await asyncio.to_thread(_services, jaeger)
                print(f"  (Jaeger received spans of: {', '.join(services) or 'nothing'})")
        except BaseException:
            for log in sorted((root / "logs").glob("bench-gateway-*.log")):
                print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            for gateway, _ in gateways.values():
                gateway.terminate()
                gateway.wait(30)
            stop_cluster(proc, root)


def _services(jaeger: JaegerServer) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{jaeger.query_url}/api/services", timeout=5) as resp:
        return sorted(json.load(resp).get("data") or [])


if __name__ == "__main__":
    asyncio.run(main())
