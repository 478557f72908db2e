"""The local node's kubelet endpoint: what the API server calls for ``kubectl logs`` and node stats.

Served over HTTPS with the node's serving certificate; only clients with a certificate from the cluster CA
(the API server's kubelet-client certificate, or an admin) are let in.

- ``GET /healthz``
- ``GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&limitBytes=&previous=&sinceSeconds=``
- ``GET /stats/summary`` (the Summary API subset metrics-server reads: node and pod memory)
- ``GET /pods`` (the pods this node runs)
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
from aiohttp import web

from kubelambda.devcluster._pod import PodRunner

Runners = Callable[[], Mapping[str, PodRunner]]


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def build_app(node_name: str, runners: Runners) -> web.Application:
    app = web.Application()

    def find(ns: str, pod: str) -> PodRunner:
        for runner in runners().values():
            meta = runner.pod["metadata"]
            if meta["namespace"] == ns and meta["name"] == pod:
                return runner
        raise web.HTTPNotFound(text=f'pod "{pod}" in namespace "{ns}" is not on node {node_name}\n')

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def container_logs(request: web.Request) -> web.StreamResponse:
        q = request.query
        runner = find(request.match_info["ns"], request.match_info["pod"])
        container = request.match_info["container"]
        names = [c.name for c in runner.init_containers + runner.containers]
        if container not in names:
            raise web.HTTPBadRequest(
                text=f"container {container} is not valid for pod {runner.pod['metadata']['name']}\n"
            )
        previous = q.get("previous") in ("true", "1")
        path: Path = runner.log_path(container, previous=previous)
        if not path.exists():
            what = "previous terminated" if previous else "current"
            raise web.HTTPBadRequest(text=f'{what} container "{container}" has no logs yet\n')
        data = path.read_bytes()
        data = _tail(data, int(q.get("tailLines", "-1")))
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        follow = q.get("follow") in ("true", "1") and not previous
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        if follow:
            offset = path.stat().st_size
            while not runner.stopping.is_set():
                await asyncio.sleep(0.2)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    break
                if size < offset:  # the container restarted: a new file
                    offset = 0
                if size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read(size - offset)
                    offset = size
                    await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def stats_summary(request: web.Request) -> web.Response:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        vm = psutil.virtual_memory()
        pods = []
        for runner in runners().values():
            memory = runner.memory_usage()
            meta = runner.pod["metadata"]
            pods.append(
                {
                    "podRef": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                    "startTime": runner.start_time,
                    "containers": [
                        {
                            "name": name,
                            "startTime": runner.start_time,
                            "memory": {
                                "time": now,
                                "workingSetBytes": m.working_set_bytes,
                                "rssBytes": m.rss_bytes,
                                "usageBytes": m.usage_bytes,
                            },
                        }
                        for name, m in sorted(memory.items())
                    ],
                    "memory": {
                        "time": now,
                        "workingSetBytes": sum(m.working_set_bytes for m in memory.values()),
                        "rssBytes": sum(m.rss_bytes for m in memory.values()),
                        "usageBytes": sum(m.usage_bytes for m in memory.values()),
                    },
                }
            )
        return web.json_response(
            {
                "node": {
                    "nodeName": node_name,
                    "startTime": now,
                    "memory": {
                        "time": now,
                        "availableBytes": vm.available,
                        "usageBytes": vm.total - vm.available,
                        "workingSetBytes": vm.total - vm.available,
                    },
                },
                "pods": pods,
            }
        )

    async def pods(request: web.Request) -> web.Response:
        items = [r.pod for r in runners().values()]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "items": items})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    app.router.add_get("/stats/summary", stats_summary)
    app.router.add_get("/pods", pods)
    return app


def server_ssl(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
