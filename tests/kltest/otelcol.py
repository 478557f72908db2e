"""The OpenTelemetry Collector on loopback: an OTLP/HTTP receiver whose logs the file exporter writes as OTLP JSON,
one export request a line; the real receiver the log export tests send to and read back from.

The binary is built from the Collector's Go modules by hack/otelcol.sh (cached under ~/.cache/kubelambda; `make
test` builds it first). Missing Go or a failed build is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubelambda.devcluster.servers import HOST, LocalServer, ServerMissing

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
receivers:
  otlp:
    protocols:
      http:
        endpoint: {host}:{port}
exporters:
  file:
    path: {path}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [file]
"""


def otelcol_binary() -> str:
    """The cached Collector (hack/otelcol.sh builds it once, under a lock, and prints its path)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "otelcol.sh")], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise ServerMissing(
            f"hack/otelcol.sh could not build the OpenTelemetry Collector:\n{done.stderr[-3000:]}"
        )
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class ExportedLog:
    """One log record as the Collector received it: its resource's attributes, its own, severity and body."""

    resource: dict[str, Any]
    attributes: dict[str, Any]
    severity_number: int
    severity_text: str
    body: str
    time_unix_nano: int
    observed_time_unix_nano: int


def _attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in kvs or []}


class OtelCollector(LocalServer):
    """``otelcol --config`` with the OTLP/HTTP receiver on loopback (:attr:`endpoint`) and the file exporter."""

    name = "otelcol"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def output(self) -> Path:
        return self.data_dir / "logs.jsonl"

    async def _launch(self) -> None:
        program = await asyncio.to_thread(otelcol_binary)
        config = self.data_dir / "otelcol.yaml"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(CONFIG.format(host=HOST, port=self.port, path=self.output))
        self._spawn([program, "--config", f"file:{config}"])

        async def ready() -> bool:
            def post() -> bool:
                req = urllib.request.Request(
                    f"{self.endpoint}/v1/logs", data=b"{}", headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    return bool(resp.status == 200)

            return await asyncio.to_thread(post)

        await self._wait(ready, timeout=60)

    def logs(self) -> list[ExportedLog]:
        """Every log record the Collector has written so far, in order."""
        if not self.output.exists():
            return []
        out = []
        for line in self.output.read_text().splitlines():
            if not line.strip():
                continue
            for rl in json.loads(line).get("resourceLogs") or []:
                resource = _attrs((rl.get("resource") or {}).get("attributes"))
                for sl in rl.get("scopeLogs") or []:
                    for r in sl.get("logRecords") or []:
                        out.append(
                            ExportedLog(
                                resource=resource,
                                attributes=_attrs(r.get("attributes")),
                                severity_number=_SEVERITY_NUMBERS.get(r.get("severityNumber", 0), 0),
                                severity_text=r.get("severityText", ""),
                                body=(r.get("body") or {}).get("stringValue", ""),
                                time_unix_nano=int(r.get("timeUnixNano", 0)),
                                observed_time_unix_nano=int(r.get("observedTimeUnixNano", 0)),
                            )
                        )
        return out


# OTLP JSON writes a SeverityNumber as its number (protojson may write the enum's name): either reads as the number.
_SEVERITY_NUMBERS: dict[Any, int] = {i: i for i in range(25)} | {
    f"SEVERITY_NUMBER_{name}": n
    for name, n in {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}.items()
}
