"""Benchmarks of versions, aliases and the control-plane API (issue 19). Figures, never assertions.

1. Warm invoke latency through an alias (``fn:live`` → version 1) beside ``$LATEST`` and the version by number
   (``fn:1``), each with one warm instance, interleaved rounds in the same run (target: no measurable
   difference: the alias costs one dictionary lookup in the resolve step).
2. Time from CreateFunction (the control-plane API, a zip) to the first successful invoke, beside the same
   Function created directly with the Kubernetes API (what kubectl does) and invoked, interleaved.

Run: ``make bench-versions`` (or ``.venv/bin/python bench/versions_bench.py --requests 2000 --creates 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import time
import urllib.parse
import zipfile
from typing import Any

import aiohttp

from _common import pct, platform, post_load
from kubelambda.kube import KubeClient, resource_path

NS = "bench"
HANDLER = "def handler(event, context):\n    return event\n"
SCALING = {"minInstances": 1, "maxInstances": 1}


def zipped() -> str:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("app.py", HANDLER)
    return base64.b64encode(out.getvalue()).decode()


async def api(http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    async with http.request(method, url, json=body) as resp:
        text = await resp.text()
        assert resp.status < 300, (method, url, resp.status, text)
        return await resp.json() if text else None


def invoke_url(gateway: str, name: str) -> str:
    return f"{gateway}/2015-03-31/functions/{urllib.parse.quote(f'{NS}/{name}', safe='/')}/invocations"


async def first_ok(http: aiohttp.ClientSession, url: str, started: float) -> float:
    """Seconds from ``started`` to the first 200 of ``url`` (any other answer: try again)."""
    while True:
        async with http.post(url, data=b"{}") as resp:
            await resp.read()
            if resp.status == 200:
                return time.monotonic() - started
        await asyncio.sleep(0.05)


async def alias_latency(
    http: aiohttp.ClientSession, kube: KubeClient, gateway: str, requests: int, connections: int
) -> None:
    functions = f"{gateway}/2015-03-31/functions"
    await api(
        http,
        "POST",
        functions,
        {
            "FunctionName": f"arn:aws:lambda:us-east-1:{NS}:function:warm",
            "Runtime": "python3.11",
            "Role": f"arn:aws:iam::{NS}:role/default",
            "Handler": "app.handler",
            "Code": {"ZipFile": zipped()},
        },
    )
    path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS, name="warm")
    await kube.patch(path, {"spec": {"scaling": SCALING}})
    await api(http, "POST", f"{functions}/{NS}%2Fwarm/versions", {})
    await api(http, "POST", f"{functions}/{NS}%2Fwarm/aliases", {"Name": "live", "FunctionVersion": "1"})
    urls = {
        "$LATEST": invoke_url(gateway, "warm"),
        "version :1": invoke_url(gateway, "warm:1"),
        "alias :live": invoke_url(gateway, "warm:live"),
    }
    for url in urls.values():
        await asyncio.wait_for(first_ok(http, url, time.monotonic()), 180)
        await post_load(http, url, 200, connections)  # warm up
    rows: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in urls}
    for _ in range(3):  # interleaved rounds: the machine's noise hits every path alike
        for name, url in urls.items():
            rows[name].append(await post_load(http, url, requests, connections))
    print(
        f"\n== 1. warm invocations, {connections} connections, 3 x {requests} requests each, one instance per target"
    )
    summary = {}
    for name, results in rows.items():
        rps = pct([r for r, _ in results], 0.5)
        lat = [v for _, ls in results for v in ls]
        summary[name] = pct(lat, 0.5)
        print(f"  {name:<12} {rps:8.0f} req/s   p50 {pct(lat, 0.5):6.2f} ms   p99 {pct(lat, 0.99):6.2f} ms")
    print(
        f"  alias - $LATEST p50 {summary['alias :live'] - summary['$LATEST']:+.2f} ms; "
        f"alias - version p50 {summary['alias :live'] - summary['version :1']:+.2f} ms (target: no measurable difference)"
    )


async def create_to_invoke(http: aiohttp.ClientSession, kube: KubeClient, gateway: str, runs: int) -> None:
    functions = f"{gateway}/2015-03-31/functions"
    times: dict[str, list[float]] = {"CreateFunction (API)": [], "kubectl create (baseline)": []}
    for i in range(runs):
        name = f"via-api-{i}"
        started = time.monotonic()
        await api(
            http,
            "POST",
            functions,
            {
                "FunctionName": f"arn:aws:lambda:us-east-1:{NS}:function:{name}",
                "Runtime": "python3.11",
                "Role": f"arn:aws:iam::{NS}:role/default",
                "Handler": "app.handler",
                "Code": {"ZipFile": zipped()},
            },
        )
        times["CreateFunction (API)"].append(
            await asyncio.wait_for(first_ok(http, invoke_url(gateway, name), started), 180)
        )
        name = f"via-kube-{i}"
        started = time.monotonic()
        await kube.create(
            resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS),
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Function",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "runtime": "python3.11",
                    "handler": "app.handler",
                    "code": {"inline": {"app.py": HANDLER}},
                },
            },
        )
        times["kubectl create (baseline)"].append(
            await asyncio.wait_for(first_ok(http, invoke_url(gateway, name), started), 180)
        )
    print(
        f"\n== 2. create to first successful invoke (scaled to zero: includes the cold start), {runs} runs each"
    )
    for name, values in times.items():
        print(f"  {name:<26} p50 {pct(values, 0.5) * 1000:7.0f} ms   max {max(values) * 1000:7.0f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--creates", type=int, default=5)
    args = parser.parse_args()
    async with platform("versions", NS, connections=max(100, args.connections)) as p:
        await alias_latency(p.http, p.kube, p.gateway, args.requests, args.connections)
        await create_to_invoke(p.http, p.kube, p.gateway, args.creates)


if __name__ == "__main__":
    asyncio.run(main())
