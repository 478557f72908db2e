"""OpenTelemetry export of function logs (docs/logs.md, "Export"): ``kubelambda log-export``.

One process of the platform reads every namespace's log stream (:mod:`kubelambda.logstore`) through a durable
JetStream consumer (``kubelambda-otlp``) and sends the records over OTLP/HTTP (protobuf) to
``<endpoint>/v1/logs``: a collector, Loki, Elasticsearch, a vendor. A record is acknowledged to the stream only
once the endpoint accepted it, so an endpoint that is down or slow loses nothing while the store keeps the
records (retention): the export resumes where it stopped, at least once. Pods need no route to the endpoint.

Each record becomes one OTLP log record: body the line, ``timeUnixNano`` when the agent read it,
``observedTimeUnixNano`` when the store kept it, the level (JSON and the runtimes' text formats, as
``kubelambda logs --level`` reads it) as severity, and the attributes

| OTLP | record |
|---|---|
| resource ``service.name``, ``faas.name`` | ``function`` |
| resource ``service.namespace``, ``k8s.namespace.name`` | ``namespace`` |
| resource ``faas.version`` | ``version`` |
| resource ``k8s.pod.name``, ``faas.instance`` | ``pod`` |
| ``faas.invocation_id`` | ``requestId`` (absent outside an invocation) |
| ``log.iostream`` | ``stream`` (stdout, stderr) |
| ``kubelambda.truncated`` | ``truncated`` (only when true) |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime

import aiohttp
import nats
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as OtlpLogRecord
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubelambda import __version__, logstore, metrics, natsauth

logger = logging.getLogger(__name__)

CONSUMER = natsauth.EXPORT_CONSUMER
SCOPE = "kubelambda"
# OTLP's SeverityNumber of each level (the first of its range: TRACE 1-4, DEBUG 5-8, ...).
SEVERITY = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
_RETRY_MAX = 30.0


class LogExportSettings(BaseSettings):
    """``KUBELAMBDA_LOG_EXPORT_*`` (the chart's ``logs.otlp`` values)."""

    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_LOG_EXPORT_", extra="ignore", frozen=True)

    nats_url: str = Field(pattern=r"^nats://[^\s]+$")
    """The platform's NATS, as the ``exporter`` user where NATS has users."""
    endpoint: str = Field(pattern=r"^https?://[^\s]+$")
    """OTLP/HTTP base URL (``http://otel-collector.observability:4318``): records are POSTed to
    ``<endpoint>/v1/logs``."""
    headers: dict[str, str] = {}
    """Headers of every OTLP request (JSON), e.g. ``{"Authorization": "Bearer ..."}`` for a vendor."""
    namespaces: list[str] = []
    """Export only these namespaces' logs (JSON list); empty: every namespace with a log stream."""
    batch: int = Field(default=500, ge=1, le=10000)
    """Stored messages (a request's consecutive records each) per OTLP request, at most."""
    timeout_seconds: float = Field(default=10.0, gt=0)
    """One OTLP request's timeout; a request that fails is retried with back-off (up to 30 s)."""
    rescan_seconds: float = Field(default=30.0, gt=0)
    """How often new namespaces' log streams are looked for."""
    metrics_address: str = "0.0.0.0:9464"
    """``host:port`` of ``/metrics`` and ``/healthz``; empty: none."""

    @field_validator("endpoint")
    @classmethod
    def _no_path(cls, v: str) -> str:
        v = v.rstrip("/")
        if v.endswith("/v1/logs"):
            raise ValueError(f"give the base URL, without /v1/logs: {v!r}")
        return v


def _value(v: str | bool) -> AnyValue:
    return AnyValue(bool_value=v) if isinstance(v, bool) else AnyValue(string_value=v)


def _attributes(pairs: Sequence[tuple[str, str | bool]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in pairs]


def _nanos(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def to_otlp(records: Sequence[tuple[logstore.LogRecord, datetime | None]]) -> ExportLogsServiceRequest:
    """One OTLP request for ``records`` (each with the time the store kept it): one resource per pod identity
    (namespace, function, version, pod), in the order they come."""
    resources: dict[tuple[str, str, str, str], ScopeLogs] = {}
    request = ExportLogsServiceRequest()
    for record, stored in records:
        key = (record.namespace, record.function, record.version, record.pod)
        scope = resources.get(key)
        if scope is None:
            resource = Resource(
                attributes=_attributes(
                    [
                        ("service.name", record.function),
                        ("service.namespace", record.namespace),
                        ("faas.name", record.function),
                        ("faas.version", record.version),
                        ("faas.instance", record.pod),
                        ("k8s.namespace.name", record.namespace),
                        ("k8s.pod.name", record.pod),
                    ]
                )
            )
            scope = ScopeLogs(scope=InstrumentationScope(name=SCOPE, version=__version__))
            request.resource_logs.append(ResourceLogs(resource=resource, scope_logs=[scope]))
            scope = request.resource_logs[-1].scope_logs[0]
            resources[key] = scope
        attrs: list[tuple[str, str | bool]] = []
        if record.request_id:
            attrs.append(("faas.invocation_id", record.request_id))
        attrs.append(("log.iostream", record.stream))
        if record.truncated:
            attrs.append(("kubelambda.truncated", True))
        level = record.level
        scope.log_records.append(
            OtlpLogRecord(
                time_unix_nano=_nanos(record.time),
                observed_time_unix_nano=_nanos(stored or record.time),
                severity_number=SEVERITY.get(level, 0) if level else 0,  # type: ignore[arg-type]
                severity_text=level or "",
                body=AnyValue(string_value=record.message),
                attributes=_attributes(attrs),
            )
        )
    return request


class Rejected(Exception):
    """The endpoint refused the records for good (a 4xx other than 429): retrying would not help."""


class LogExporter:
    """Discovers the namespaces' log streams and runs one export loop per stream."""

    def __init__(self, settings: LogExportSettings) -> None:
        self.settings = settings
        self._nc: NATS | None = None
        self._http: aiohttp.ClientSession | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        s = self.settings
        self._nc = await nats.connect(
            natsauth.servers(s.nats_url),
            connect_timeout=5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            **natsauth.connect_options(s.nats_url),
        )
        self._http = aiohttp.ClientSession(
            headers={"Content-Type": "application/x-protobuf", **s.headers},
            timeout=aiohttp.ClientTimeout(total=s.timeout_seconds),
        )
        logger.info(
            "Exporting function logs from %s to %s/v1/logs (%s)",
            natsauth.redacted(s.nats_url),
            s.endpoint,
            ", ".join(s.namespaces) if s.namespaces else "every namespace",
        )
        try:
            while True:
                try:
                    for stream in await self.streams():
                        loop = self._loops.get(stream)
                        if loop is None or loop.done():
                            self._loops[stream] = asyncio.create_task(self._export(stream))
                except (nats.errors.Error, TimeoutError) as e:
                    logger.warning("Could not list the log streams: %s", e)
                await asyncio.sleep(s.rescan_seconds)
        finally:
            await self.close()

    async def close(self) -> None:
        for task in self._loops.values():
            task.cancel()
        for task in self._loops.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()
        if self._http is not None:
            await self._http.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def streams(self) -> list[str]:
        """The log streams to export: those of :attr:`LogExportSettings.namespaces`, or every stream that takes
        ``kubelambda.logs.>`` subjects (JetStream's stream names API, filtered by subject)."""
        assert self._nc is not None
        names: list[str] = []
        offset = 0
        while True:
            request = {"subject": f"{logstore.SUBJECT_PREFIX}.>", "offset": offset}
            answer = json.loads(
                (await self._nc.request("$JS.API.STREAM.NAMES", json.dumps(request).encode(), 5)).data
            )
            if "error" in answer:
                raise nats.errors.Error(f"stream names: {answer['error']}")
            page = answer.get("streams") or []
            names += [n for n in page if n.startswith(logstore.STREAM_PREFIX)]
            offset += len(page)
            if not page or offset >= int(answer.get("total", 0)):
                break
        if self.settings.namespaces:
            wanted = {logstore.stream_name(ns) for ns in self.settings.namespaces}
            names = [n for n in names if n in wanted]
        return sorted(names)

    async def _export(self, stream: str) -> None:
        """Fetch, send, acknowledge, until cancelled (or the stream is gone: the next scan starts it again)."""
        assert self._nc is not None
        js = self._nc.jetstream()
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=max(60.0, 2 * _RETRY_MAX),
            max_ack_pending=4 * self.settings.batch,
            description="kubelambda log-export: function logs to OTLP (docs/logs.md)",
        )
        try:
            sub = await js.pull_subscribe(
                f"{logstore.SUBJECT_PREFIX}.>", durable=CONSUMER, stream=stream, config=config
            )
        except (NotFoundError, nats.errors.Error, TimeoutError) as e:
            logger.warning("Could not read the log stream %s: %s", stream, e)
            return
        namespace = "?"
        try:
            while True:
                try:
                    msgs = await sub.fetch(self.settings.batch, timeout=5)
                except nats.errors.TimeoutError:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        info = await sub.consumer_info()
                        if namespace != "?":
                            metrics.LOG_EXPORT_LAG.labels(namespace).set(info.num_pending or 0)
                    continue
                records = [
                    (r, m.metadata.timestamp) for m in msgs for r in logstore.records_of(m.data, m.subject)
                ]
                if records:
                    namespace = records[0][0].namespace
                    await self._send(namespace, msgs, records)
                for m in msgs:
                    await m.ack()
        except NotFoundError:
            logger.info("The log stream %s is gone", stream)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _send(
        self, namespace: str, msgs: list[Msg], records: Sequence[tuple[logstore.LogRecord, datetime | None]]
    ) -> None:
        """POSTs the records until the endpoint takes them (or refuses them for good), with back-off."""
        body = to_otlp(records).SerializeToString()
        delay = 0.5
        while True:
            try:
                rejected = await self._post(body)
            except Rejected as e:
                metrics.LOG_EXPORT_RECORDS.labels(namespace, "rejected").inc(len(records))
                logger.warning(
                    "The OTLP endpoint refused %d log records of %s: %s", len(records), namespace, e
                )
                return
            except (aiohttp.ClientError, TimeoutError) as e:
                metrics.LOG_EXPORT_FAILURES.labels(namespace).inc()
                logger.warning(
                    "Sending %d log records of %s failed (retried in %.1f s): %s",
                    len(records),
                    namespace,
                    delay,
                    e,
                )
                for m in msgs:  # they stay ours meanwhile: no redelivery to another exporter
                    with contextlib.suppress(Exception):
                        await m.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            metrics.LOG_EXPORT_RECORDS.labels(namespace, "exported").inc(len(records) - rejected)
            if rejected:
                metrics.LOG_EXPORT_RECORDS.labels(namespace, "rejected").inc(rejected)
            return

    async def _post(self, body: bytes) -> int:
        """One OTLP request; the count of records a partial success rejected."""
        assert self._http is not None
        async with self._http.post(self.settings.endpoint + "/v1/logs", data=body) as resp:
            answer = await resp.read()
            if resp.status == 429 or resp.status >= 500:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=answer[:200].decode(errors="replace")
                )
            if resp.status >= 300:
                raise Rejected(f"{resp.status}: {answer[:500].decode(errors='replace')}")
        if not answer:
            return 0
        parsed = ExportLogsServiceResponse()
        with contextlib.suppress(Exception):  # a JSON answer, or none: nothing rejected
            parsed.ParseFromString(answer)
        if parsed.partial_success.rejected_log_records:
            logger.warning(
                "The OTLP endpoint rejected some records: %s", parsed.partial_success.error_message
            )
        return int(parsed.partial_success.rejected_log_records)


async def serve_metrics(address: str) -> web.AppRunner | None:
    """``/metrics`` (:data:`metrics.LOG_EXPORT_VIEW`) and ``/healthz`` on ``address``; None without one."""
    if not address:
        return None
    host, _, port = address.rpartition(":")

    async def show(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.LOG_EXPORT_VIEW), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", show)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    return runner


async def main(settings: LogExportSettings) -> None:
    runner = await serve_metrics(settings.metrics_address)
    try:
        await LogExporter(settings).run()
    finally:
        if runner is not None:
            await runner.cleanup()
