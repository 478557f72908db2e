"""Benchmark of the bucket bridge (issue 8). Figures, never assertions.

On the local cluster (``kubelambda dev serve``: gateway with NATS JetStream for Event invocations) and a real
SeaweedFS, with a warm Function whose handler reports the moment it starts to a receiver in this process:

1. Upload → function start latency, p50 / p95, for
   - baseline A: ``PutObject`` alone (its own latency);
   - baseline B: an Event invocation sent straight to the gateway → function start (what every mode pays);
   - notification mode: PutObject, then the MinIO-format webhook POST to the bridge (SeaweedFS sends no S3
     notifications, so this process plays MinIO, which posts right after the write) → function start;
   - poll mode at ``--poll-interval`` seconds: PutObject → function start (expect about interval/2 more).
   Samples are spaced by a random 0..0.5 s (poll mode: 0..interval, so that uploads fall uniformly within the
   poll period and the figure is not biased by lining up with it).
2. Events per second through one bridge, beside the gateway's own Event invocations/s in the same run:
   - notification: ``--events`` webhook POSTs (one record each), ``--concurrency`` at a time, until all are
     answered (= accepted by the gateway); baseline: as many Event invocations straight to the gateway;
   - poll: ``--events`` objects uploaded at once (raw PutObject/s printed too), then the time from the bridge's
     first accepted invocation to its last (its ``kubelambda_bridge_events_total``).
   Before each phase the function has run every event queued by the previous one, so phases do not compete.

The bridges are the pods the operator runs for the two Triggers (the notification one with the token it generates).

Run: ``make bench-bucket`` (or ``.venv/bin/python bench/bucket_bench.py --samples 40 --events 1000``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from aiohttp import web
from botocore.config import Config

from _common import create_namespace, developer_headers, pct, start_cluster, wait
from kubelambda.devcluster import DevState
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import S3Server
from kubelambda.kube import KubeClient, resource_path

NS = "bench-bucket"
HANDLER = """
import json
import os
import time
import urllib.parse
import urllib.request

URL = os.environ["BENCH_URL"]


def report(key, started):
    body = json.dumps({"key": key, "t": started}).encode()
    req = urllib.request.Request(URL, data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def handler(event, context):
    started = time.time()
    if "probe" in event:
        report(event["probe"], started)
    for record in event.get("Records", []):
        report(urllib.parse.unquote_plus(record["s3"]["object"]["key"]), started)
    return None
"""


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {pct(ms, 0.5):8.1f} ms   p95 {pct(ms, 0.95):8.1f} ms   (n={len(ms)})"


class Receiver:
    """Where the function reports ``{"key", "t"}``: the first start time per key and how many reports came."""

    def __init__(self) -> None:
        self.port = free_port()
        self.started: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        self.count = 0

    async def _hit(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.count += 1
        self.runs[body["key"]] = self.runs.get(body["key"], 0) + 1
        self.started.setdefault(body["key"], body["t"])
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hit", self._hit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def started_at(self, key: str, timeout: float = 60) -> float:
        value: float = await wait(
            lambda: asyncio.sleep(0, result=self.started.get(key)), bool, f"{key} ran", timeout
        )
        return value


class Bridge:
    """The bridge pod the operator runs for Trigger ``name`` (Deployment ``<name>-bridge``), on its pod address."""

    def __init__(self, ip: str) -> None:
        self.url = f"http://{ip}:8080"

    @classmethod
    async def of(cls, kube: KubeClient, name: str) -> Bridge:
        async def ready_ip() -> str | None:
            pods = await kube.get(
                resource_path("v1", "pods", namespace=NS),
                params={"labelSelector": f"kubelambda.io/trigger={name}"},
            )
            for pod in pods["items"]:
                ready = any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions") or []
                )
                if ready and pod["status"].get("podIP"):
                    return str(pod["status"]["podIP"])
            return None

        return cls(await wait(ready_ip, bool, f"the bridge pod of Trigger {name} ready", 120))

    async def events_total(self, http: aiohttp.ClientSession) -> float:
        try:
            async with http.get(f"{self.url}/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return -1.0
        for line in text.splitlines():
            if line.startswith("kubelambda_bridge_events_total "):
                return float(line.split()[1])
        return 0.0


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


def trigger(name: str, endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"function": "probe", "bucket": {"endpoint": endpoint, "bucket": bucket, **extra}},
    }


def minio_notification(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": now,
        "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "bench"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": f"{random.getrandbits(64):016X}"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "bench"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": urllib.parse.quote_plus(key, safe=""),
                "size": size,
                "eTag": etag,
                "sequencer": "0",
            },
        },
    }
    return {"EventName": record["eventName"], "Key": f"{bucket}/{key}", "Records": [record]}


async def latency_runs(
    label: str, samples: int, action: Callable[[str], Awaitable[float]], receiver: Receiver, *, spacing: float
) -> list[float]:
    """``action(key)`` starts one event and returns when it started (epoch s); returns start → function start."""
    out = []
    for i in range(samples):
        key = f"{label}/{i:04d}-{random.getrandbits(32):08x}.bin"
        began = await action(key)
        out.append(await receiver.started_at(key) - began)
        await asyncio.sleep(random.uniform(0, spacing))
    return out


async def concurrent(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Runs ``one(i)`` for i < n with ``concurrency`` workers; returns the seconds it took."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def run(args: argparse.Namespace, state: DevState, tmp: Path) -> None:
    assert state.gateway_url
    gateway = state.gateway_url
    receiver = Receiver()
    runner = await receiver.start()
    s3_server = S3Server(tmp / "seaweedfs")
    await s3_server.start()
    s3 = s3_client(s3_server.endpoint)
    try:
        headers = await developer_headers(state)  # the gateway checks who calls
        async with (
            KubeClient.from_kubeconfig(state.kubeconfig) as kube,
            aiohttp.ClientSession(headers=headers) as http,
        ):
            await create_namespace(kube, NS)
            await kube.create(
                resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS),
                {
                    "apiVersion": "kubelambda.io/v1alpha1",
                    "kind": "Function",
                    "metadata": {"name": "probe"},
                    "spec": {
                        "runtime": "python3.11",
                        "handler": "app.handler",
                        "code": {"inline": {"app.py": HANDLER}},
                        "timeoutSeconds": 30,
                        "environment": {"BENCH_URL": f"http://127.0.0.1:{receiver.port}/hit"},
                        "concurrency": {"perInstance": 4},
                        "scaling": {"minInstances": 2, "maxInstances": 4},
                    },
                },
            )
            for bucket in ("pushed", "polled"):
                await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
            path = resource_path("kubelambda.io/v1alpha1", "triggers", namespace=NS)
            await kube.create(path, trigger("pushed", "http://127.0.0.1:9/unused", "pushed"))
            await kube.create(
                path,
                trigger(
                    "polled",
                    s3_server.endpoint,
                    "polled",
                    mode="poll",
                    pollIntervalSeconds=args.poll_interval,
                ),
            )
            pushed = await Bridge.of(kube, "pushed")
            polled = await Bridge.of(kube, "polled")
            token_secret = await kube.get(
                resource_path("v1", "secrets", namespace=NS, name="pushed-bucket-token")
            )
            token = base64.b64decode(token_secret["data"]["token"]).decode()  # generated by the operator
            await wait(
                lambda: kube.get_or_none(
                    resource_path("v1", "configmaps", namespace=NS, name="polled-checkpoint")
                ),
                lambda cm: cm is not None and (cm.get("data") or {}).get("objects"),
                "the poll bridge's first listing",
            )
            invoke_url = f"{gateway}/2015-03-31/functions/{NS}%2Fprobe/invocations"
            event_headers = {"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}
            webhook_headers = {"Authorization": f"Bearer {token}"}

            async def invoke_event(payload: dict[str, Any]) -> None:
                async with http.post(invoke_url, json=payload, headers=event_headers) as resp:
                    assert resp.status == 202, (resp.status, await resp.text())

            # Warm-up: the function instances answer before anything is timed.
            await invoke_event({"probe": "warm-up"})
            await receiver.started_at("warm-up", timeout=120)

            # ---- 1. latency
            put_times: list[float] = []

            async def put(bucket: str, key: str) -> tuple[float, str]:
                began = time.time()
                answer = await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=key.encode())
                put_times.append(time.time() - began)
                return began, answer["ETag"].strip('"')

            async def direct(key: str) -> float:
                began = time.time()
                await invoke_event({"probe": key})
                return began

            async def notified(key: str) -> float:
                began, etag = await put("pushed", key)
                body = minio_notification("pushed", key, len(key.encode()), etag)
                async with http.post(f"{pushed.url}/events", json=body, headers=webhook_headers) as resp:
                    assert resp.status == 200, (resp.status, await resp.text())
                return began

            async def polled_put(key: str) -> float:
                began, _ = await put("polled", key)
                return began

            print(f"\n== Upload → function start, {args.samples} samples each (warm function, local cluster)")
            baseline_event = await latency_runs("direct", args.samples, direct, receiver, spacing=0.5)
            notification = await latency_runs("notification", args.samples, notified, receiver, spacing=0.5)
            put_only = list(put_times)
            poll = await latency_runs("poll", args.samples, polled_put, receiver, spacing=args.poll_interval)
            print(f"  baseline A: PutObject alone                     {summary(put_only)}")
            print(f"  baseline B: Event invoke → function start       {summary(baseline_event)}")
            print(f"  notification: PutObject + webhook → start        {summary(notification)}")
            print(f"  poll every {args.poll_interval} s: PutObject → start        {summary(poll)}")

            # ---- 2. throughput
            n, c = args.events, args.concurrency
            print(f"\n== Events/s through one bridge: {n} events, {c} concurrent senders")

            async def raw(i: int) -> None:
                await invoke_event({"probe": f"raw-{i}"})

            async def drained(expected: int) -> None:
                # The function runs every queued event before the next phase, so phases do not share the CPU.
                await wait(
                    lambda: asyncio.sleep(0, result=receiver.count), lambda v: v >= expected, "drain", 900
                )

            expected = 3 * args.samples + 1
            await drained(expected)
            raw_seconds = await concurrent(n, c, raw)
            expected += n
            await drained(expected)

            async def webhook(i: int) -> None:
                body = minio_notification("pushed", f"hook/{i:06d}", 1, "0" * 32)
                async with http.post(f"{pushed.url}/events", json=body, headers=webhook_headers) as resp:
                    assert resp.status == 200, (resp.status, await resp.text())

            hook_seconds = await concurrent(n, c, webhook)
            expected += n
            await drained(expected)
            print(f"  baseline: Event invocations straight to the gateway   {n / raw_seconds:8.0f} /s")
            print(f"  notification bridge (webhook → accepted by gateway)   {n / hook_seconds:8.0f} /s")

            before = await polled.events_total(http)

            def upload_all() -> float:
                began = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    list(
                        pool.map(
                            lambda i: s3.put_object(Bucket="polled", Key=f"tput/{i:06d}", Body=b"x"), range(n)
                        )
                    )
                return time.perf_counter() - began

            upload_seconds = await asyncio.to_thread(upload_all)
            first = await wait(
                lambda: polled.events_total(http), lambda v: v > before, "the poll bridge's first event", 120
            )
            t_first = time.perf_counter()
            await wait(
                lambda: polled.events_total(http),
                lambda v: v >= before + n,
                "the poll bridge's last event",
                600,
            )
            poll_seconds = time.perf_counter() - t_first
            print(f"  baseline: raw PutObject ({c} threads)                  {n / upload_seconds:8.0f} /s")
            print(
                f"  poll bridge (diff → accepted by gateway)              {(n - (first - before)) / max(poll_seconds, 1e-6):8.0f} /s"
                f"   ({n} objects in one listing, checkpoint every 100)"
            )
            expected += n
            await drained(expected)
            print(f"  (all {expected} events ran the function; it reported {receiver.count} starts)")
            repeats: dict[str, int] = {}
            for k, runs in receiver.runs.items():
                if runs > 1:
                    phase = k.split("/")[0].split("-")[0]
                    repeats[phase] = repeats.get(phase, 0) + runs - 1
            print(f"  repeated runs by phase (at-least-once): {repeats or 'none'}")
    finally:
        await s3_server.stop()
        await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40, help="latency samples per mode")
    parser.add_argument("--events", type=int, default=1000, help="events for the throughput runs")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--poll-interval", type=int, default=1, help="poll mode's pollIntervalSeconds")
    args = parser.parse_args()
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-bucket-") as tmp:
        proc, state = start_cluster(Path(tmp))
        try:
            await run(args, state, Path(tmp))
        except BaseException:
            for log in sorted(Path(tmp).glob("bridge-*.log")):
                print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            gw = Path(tmp) / "logs" / "kubelambda-gateway.log"
            if gw.exists():
                print(f"--- {gw}:\n{gw.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
