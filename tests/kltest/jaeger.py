"""Jaeger v2 on loopback (in-memory storage): the real trace backend the tracing tests send OTLP/HTTP to and read
traces back from through its query API (``/api/traces/<trace id>``).

The binary is built from Jaeger's Go module by hack/jaeger.sh (cached under ~/.cache/kubelambda; `make test`
builds it first). Missing Go or a failed build is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kltest.wait import wait_for
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import HOST, LocalServer, ServerMissing, _http_ok_strict

REPO = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]

CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: {host}:{health}
  jaeger_query:
    storage:
      traces: memory
    http:
      endpoint: {host}:{query}
    grpc:
      endpoint: {host}:{query_grpc}
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: {host}:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"""


def jaeger_binary() -> str:
    """The cached Jaeger (hack/jaeger.sh builds it once, under a lock, and prints its path)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "jaeger.sh")], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise ServerMissing(f"hack/jaeger.sh could not build Jaeger:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Span:
    """A span as Jaeger's query API gives it back."""

    span_id: str
    parent_id: str | None  # its CHILD_OF reference in the same trace
    name: str
    service: str
    tags: JSON
    links: list[tuple[str, str]]  # (trace id, span id) of FOLLOWS_FROM references / links


def spans_of(trace: JSON) -> list[Span]:
    processes = trace.get("processes") or {}
    out = []
    for s in trace.get("spans") or []:
        parent = None
        links = []
        for ref in s.get("references") or []:
            if ref.get("refType") == "CHILD_OF" and ref.get("traceID") == s["traceID"] and parent is None:
                parent = ref["spanID"]
            else:
                links.append((ref["traceID"], ref["spanID"]))
        out.append(
            Span(
                span_id=s["spanID"],
                parent_id=parent,
                name=s["operationName"],
                service=(processes.get(s.get("processID")) or {}).get("serviceName", ""),
                tags={t["key"]: t["value"] for t in s.get("tags") or []},
                links=links,
            )
        )
    return out


class JaegerServer(LocalServer):
    """``jaeger --config`` with an OTLP/HTTP receiver (:attr:`otlp_endpoint`) and the query API on loopback."""

    name = "jaeger"

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.query_port = free_port()
        self.query_grpc_port = free_port()
        self.health_port = free_port()

    def _own_ports(self) -> list[int]:
        return [self.port, self.query_port, self.query_grpc_port, self.health_port]

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def query_url(self) -> str:
        return f"http://{HOST}:{self.query_port}"

    async def _launch(self) -> None:
        program = await asyncio.to_thread(jaeger_binary)
        config = self.data_dir / "jaeger.yaml"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            CONFIG.format(
                host=HOST,
                otlp=self.port,
                query=self.query_port,
                query_grpc=self.query_grpc_port,
                health=self.health_port,
            )
        )
        self._spawn([program, "--config", f"file:{config}"])
        await self._wait(lambda: _http_ok_strict(f"{self.query_url}/api/services"), timeout=60)

    async def trace(self, trace_id: str) -> JSON | None:
        """The trace as stored now (None while Jaeger has none of its spans)."""

        def get() -> JSON | None:
            try:
                with urllib.request.urlopen(f"{self.query_url}/api/traces/{trace_id}", timeout=5) as resp:
                    data = json.load(resp).get("data") or []
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                raise
            return data[0] if data else None

        return await asyncio.to_thread(get)

    async def find(self, service: str) -> list[JSON]:
        """The last hour's traces with a span of ``service`` (up to 100)."""

        def get() -> list[JSON]:
            query = urllib.parse.urlencode({"service": service, "lookback": "1h", "limit": 100})
            with urllib.request.urlopen(f"{self.query_url}/api/traces?{query}", timeout=5) as resp:
                return list(json.load(resp).get("data") or [])

        return await asyncio.to_thread(get)

    async def spans(self, trace_id: str, *, until: Any, what: str, timeout: float = 60) -> list[Span]:
        """The trace's spans once ``until(spans)`` holds (spans arrive in batches, from several processes)."""

        async def probe() -> list[Span]:
            found = await self.trace(trace_id)
            return spans_of(found) if found is not None else []

        return await wait_for(probe, until, what=what, timeout=timeout, interval=0.5)
