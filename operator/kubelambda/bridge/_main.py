"""``kubelambda bridge --trigger NS/NAME``: one process per Trigger, consuming its source.

Reads the Trigger once at start (the operator rolls the bridge Deployment when the spec changes: the pod
template carries the spec's hash), builds the context, serves ``/healthz``, ``/metrics`` and the source's own
routes, and runs the source until SIGTERM.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubelambda import metrics, tracing
from kubelambda.api.v1alpha1 import GROUP, VERSION, Trigger
from kubelambda.api.v1alpha1.trigger import source_kinds
from kubelambda.bridge._context import (
    BridgeContext,
    Checkpoint,
    Invoker,
    Secrets,
    Source,
    StatusReporter,
)
from kubelambda.kube import KubeClient, default_login, resource_path
from kubelambda.logstore_ship import LogShipper

log = logging.getLogger("kubelambda.bridge")

SOURCE_STOP_SECONDS = 24.0
"""On stop, how long the source may take to finish (a queue source drains its batches in flight for up to
``drain_seconds``, 20 s by default); with the steps after it, within the pod's 30 s termination grace period."""
STOP_STEP_SECONDS = 2.0
"""How long each later stop step may take (status reporter, last status write, HTTP server)."""


def source_module(kind: str) -> str:
    """Where the source of a kind lives: ``kubelambda.bridge.<kind>`` (``bucket``, ``schedule``) or
    ``kubelambda.bridge.<queues|streams>.<broker>``; each such module names its class ``BRIDGE``."""
    source, _, broker = kind.partition(".")
    return f"kubelambda.bridge.{source}s.{broker}" if broker else f"kubelambda.bridge.{source}"


# Source kind → module, read from the Trigger models; imported only when used, so a bridge loads one broker
# client library.
SOURCES: dict[str, str] = {kind: source_module(kind) for kind in source_kinds() if kind != "http"}


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_BRIDGE_", extra="ignore", frozen=True)

    gateway_url: str = Field(
        default="http://kubelambda-gateway.kubelambda-system.svc:8080", pattern=r"^https?://[^\s]+$"
    )
    """Base URL of the gateway the bridge invokes through."""
    host: str = "0.0.0.0"
    """Address of the bridge's HTTP server (health, metrics, webhooks)."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port of the bridge's HTTP server (default 8080; 0 = any free port)."""
    status_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    """At most one status write per this many seconds, except reachability changes (default 10 s)."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$")
    """Region reported in events (``awsRegion``) and ARNs."""
    kubeconfig: str | None = None
    """Kubeconfig to use; unset = in-cluster credentials."""
    log_nats_url: str | None = Field(default=None, pattern=r"^(nats|tls)://[^\s]+$")
    """The log store (docs/logs.md): the bridge ships its own log lines there, with its function's records;
    unset = pod log only."""
    pod_name: str = Field(default_factory=socket.gethostname)
    """This pod's name, in the shipped records (the operator sets it from ``metadata.name``)."""


def source_kind(trigger: Trigger) -> str:
    """``bucket``, ``schedule``, ``queue.<broker>`` or ``stream.<broker>``; raises for ``http`` (no bridge)."""
    kind = trigger.spec.source_kind
    if kind not in SOURCES:
        raise ValueError("this Trigger needs no bridge (HTTP routes are served by the gateway)")
    return kind


def load_source(kind: str, ctx: BridgeContext) -> Source:
    cls: Any = importlib.import_module(SOURCES[kind]).BRIDGE
    source: Source = cls(ctx)
    return source


def _client(settings: BridgeSettings) -> KubeClient:
    return default_login(settings.kubeconfig).client()


async def _serve(source: Source, settings: BridgeSettings) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.BRIDGE_VIEW), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.add_routes(source.routes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_STEP_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    return runner


async def build_context(
    kube: KubeClient, http: aiohttp.ClientSession, namespace: str, name: str, settings: BridgeSettings
) -> tuple[BridgeContext, str]:
    """Reads the Trigger and builds what its source gets: ``(context, source kind)``."""
    body = await kube.get(resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=namespace, name=name))
    trigger = Trigger.model_validate(body)
    kind = source_kind(trigger)
    status = StatusReporter(
        kube,
        namespace=namespace,
        trigger=name,
        generation=body["metadata"].get("generation"),
        interval=settings.status_interval_seconds,
    )
    ctx = BridgeContext(
        trigger=trigger,
        namespace=namespace,
        name=name,
        kube=kube,
        invoker=Invoker(
            http,
            gateway_url=settings.gateway_url,
            namespace=namespace,
            function=trigger.spec.function,
            token=kube.bearer_token,
        ),
        checkpoint=Checkpoint(kube, namespace=namespace, trigger=name),
        status=status,
        secrets=Secrets(kube, namespace=namespace),
        http=http,
        region=settings.region,
        trigger_meta=dict(body["metadata"]),
    )
    return ctx, kind


async def _stop_task(task: asyncio.Task[Any], seconds: float, what: str) -> bool:
    """Cancels ``task`` and waits at most ``seconds`` for it; says so when it did not stop."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        # A client library may swallow a CancelledError: ask once more before giving up on it.
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        log.error("The %s did not stop within %.0f s", what, seconds)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.debug("The %s ended with %r", what, task.exception())
    return True


async def run_bridge(
    namespace: str, name: str, settings: BridgeSettings, *, stop: asyncio.Event | None = None
) -> bool:
    """Runs the bridge of Trigger ``namespace/name`` until ``stop`` is set (or forever).

    Every stop step is bounded and logged. Returns whether every task stopped (False: one is still running,
    and the caller should exit the process rather than wait for it)."""
    stop = stop or asyncio.Event()
    # Before anything that waits on the API server or a broker: a bridge whose log is empty never ran this far.
    log.info("Starting the bridge of Trigger %s/%s: reading it from the API server", namespace, name)
    async with _client(settings) as kube, aiohttp.ClientSession() as http:
        ctx, kind = await build_context(kube, http, namespace, name, settings)
        shipper = None
        if settings.log_nats_url:  # the bridge's own lines, beside its function's records (docs/logs.md)
            shipper = LogShipper(
                settings.log_nats_url,
                namespace=namespace,
                function=ctx.trigger.spec.function,
                pod=settings.pod_name,
                component=f"bridge/{name}",
            )
            logging.getLogger().addHandler(shipper)
            shipper.start()
        status = ctx.status
        source = load_source(kind, ctx)
        runner = await _serve(source, settings)
        log.info("Started the %s bridge of Trigger %s/%s", kind, namespace, name)
        reporter = asyncio.create_task(status.run(), name="status")
        consumer = asyncio.create_task(source.run(), name=kind)
        stopper = asyncio.create_task(stop.wait(), name="stop")
        stopped = True
        try:
            done, _ = await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                consumer.result()  # a source returns only by failing; let the pod restart and say why
            log.info("Stopping the bridge of Trigger %s/%s", namespace, name)
        finally:
            stopper.cancel()
            stopped = await _stop_task(consumer, SOURCE_STOP_SECONDS, f"source of Trigger {name}")
            stopped = (
                await _stop_task(reporter, STOP_STEP_SECONDS, f"status reporter of Trigger {name}")
                and stopped
            )
            try:
                await asyncio.wait_for(status.flush(), STOP_STEP_SECONDS)
            except Exception as e:  # TimeoutError included: the API server did not answer in time
                log.warning("Could not write the last status of Trigger %s: %r", name, e)
            await runner.cleanup()
            ctx.invoker.close()
            log.info("Stopped the bridge of Trigger %s/%s", namespace, name)
            if shipper is not None:
                logging.getLogger().removeHandler(shipper)
                await shipper.aclose()
        return stopped


def main(trigger_ref: str) -> int:
    """Entry point of ``kubelambda bridge --trigger NS/NAME``."""
    namespace, sep, name = trigger_ref.partition("/")
    if not sep or not namespace or not name:
        log.error("--trigger must be NAMESPACE/NAME, got %r", trigger_ref)
        return 2
    try:
        settings = BridgeSettings()
    except ValidationError as e:
        log.error("bad settings (environment KUBELAMBDA_BRIDGE_*):\n%s", e)
        return 2
    if (bad := tracing.from_environment("kubelambda-bridge")) is not None:
        log.error("%s", bad)
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if not await run_bridge(namespace, name, settings, stop=stop):
            # asyncio.run would wait for the task that did not stop, without end: leave at once instead.
            logging.shutdown()
            os._exit(1)

    import uvloop  # a bridge is event-loop bound (a broker frame, an ack, an HTTP call per batch): uvloop's loop
    # costs markedly less CPU per message than asyncio's (bench/queue_bench.py)

    uvloop.run(serve())
    return 0
