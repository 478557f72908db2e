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

import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp

from _common import (
    compare_gateways,
    create_namespace,
    create_warm_function,
    gateway_process,
    gateway_processes,
    interleaved_arguments,
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
    args = interleaved_arguments(rounds=8).parse_args()
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-tracing-") as tmp:
        root = Path(tmp)
        proc, state = start_cluster(root)
        try:
            async with (
                JaegerServer(root / "jaeger") as jaeger,
                KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            ):
                with gateway_processes(root, "bench-gateway-*.log") as gateways:
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
                    await compare_gateways(
                        http,
                        cases,
                        args,
                        body=BODY,
                        differ="KUBELAMBDA_TRACING_*",
                        target="<= 5 % added at p50 with sampling 0.01",
                    )
                    services = await asyncio.to_thread(_services, jaeger)
                    print(f"  (Jaeger received spans of: {', '.join(services) or 'nothing'})")
        finally:
            stop_cluster(proc, root)


def _services(jaeger: JaegerServer) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{jaeger.query_url}/api/services", timeout=5) as resp:
        return sorted(json.load(resp).get("data") or [])


if __name__ == "__main__":
    asyncio.run(main())
