"""OpenTelemetry traces (docs/tracing.md): one tracer per process, set up from ``KUBELAMBDA_TRACING_*``.

Off (no ``KUBELAMBDA_TRACING_ENDPOINT``, the default), :func:`span` hands back one shared no-op context manager
and nothing of the SDK runs on the invoke path; a caller's ``traceparent`` still passes through as a string.
On, spans go to an OTLP/HTTP endpoint (a collector, Jaeger) in batches, sampled by
``parentbased_traceidratio``: a caller's sampled ``traceparent`` is always followed, a new trace is kept with
probability ``KUBELAMBDA_TRACING_SAMPLE_RATIO``.

Propagation is W3C Trace Context (``traceparent``); towards a function the same trace is also given in X-Ray's
form (``Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>``, :func:`xray_header`), as Lambda gives
``_X_AMZN_TRACE_ID`` to the function, and a caller's X-Ray header is followed when it sends no ``traceparent``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "Link",
    "Span",
    "SpanKind",
    "StatusCode",
    "TracingSettings",
    "annotate",
    "configure",
    "current_traceparent",
    "enabled",
    "link",
    "parent",
    "shutdown",
    "span",
    "xray_header",
]

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_XRAY_ROOT = re.compile(r"(?:^|;)\s*Root=1-([0-9a-f]{8})-([0-9a-f]{24})(?:;|$)")
_XRAY_PARENT = re.compile(r"(?:^|;)\s*Parent=([0-9a-f]{16})(?:;|$)")
_XRAY_SAMPLED = re.compile(r"(?:^|;)\s*Sampled=([01])(?:;|$)")


class TracingSettings(BaseSettings):
    """Environment ``KUBELAMBDA_TRACING_*`` (the chart's ``tracing`` values), the same for every component."""

    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_TRACING_", extra="ignore", frozen=True)

    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """OTLP/HTTP base URL (``http://jaeger-collector:4318``); spans are POSTed to ``<endpoint>/v1/traces``.
    Unset (default): tracing is off."""
    sample_ratio: float = Field(default=0.05, ge=0, le=1)
    """Share of new traces kept, 0 to 1 (default 0.05); a caller's sampled ``traceparent`` is always followed."""


_propagator = TraceContextTextMapPropagator()
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def configure(service: str, settings: TracingSettings, *, exporter: SpanExporter | None = None) -> None:
    """Sets this process's tracer up (or off, without an endpoint), replacing an earlier one (flushed first).
    The SDK's global tracer provider is left alone: the spans here are kubelambda's own. ``exporter``: another
    than OTLP to ``endpoint`` (the unit tests' in-memory one), fed synchronously."""
    global _provider, _tracer
    shutdown()
    if settings.endpoint is None:
        return
    # The SDK and the exporter are imported only here: a process with tracing off never loads them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        otlp = OTLPSpanExporter(endpoint=settings.endpoint.rstrip("/") + "/v1/traces", timeout=10)
        provider.add_span_processor(BatchSpanProcessor(otlp, schedule_delay_millis=1000))
    _provider = provider
    _tracer = provider.get_tracer("kubelambda")


def from_environment(service: str) -> str | None:
    """:func:`configure` from ``KUBELAMBDA_TRACING_*``; what is wrong with them, or None."""
    try:
        settings = TracingSettings()
    except ValidationError as e:
        return f"bad settings (environment KUBELAMBDA_TRACING_*):\n{e}"
    configure(service, settings)
    return None


def enabled() -> bool:
    return _tracer is not None


def flush(timeout_millis: int = 10_000) -> bool:
    """Exports the spans ended so far now (tests, shutdown); True when there was nothing left behind."""
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def shutdown() -> None:
    """Exports what is left and turns tracing off."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = None


def parent(traceparent: str | None, xray: str | None = None) -> otel_context.Context | None:
    """The remote parent a caller sent: its ``traceparent``, else its X-Ray header; None without either (or
    when tracing is off: nothing is parsed then)."""
    if _tracer is None:
        return None
    if not traceparent and xray:
        traceparent = traceparent_of_xray(xray)
    if not traceparent:
        return None
    ctx = _propagator.extract({TRACEPARENT: traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def span(
    name: str,
    *,
    context: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] = (),
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the ``with`` block (a child of ``context``, else of the current span); yields
    None when tracing is off. Ended when the block ends; an exception leaving it sets the span's error status."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, context=context, kind=kind, links=links)


def set_attributes(s: Span | None, attributes: dict[str, Any]) -> None:
    if s is not None and s.is_recording():
        s.set_attributes(attributes)


def annotate(attributes: dict[str, Any]) -> None:
    """Sets attributes on the current span (when tracing is on and it is sampled)."""
    if _tracer is not None:
        set_attributes(trace.get_current_span(), attributes)


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (what a call made now carries); None when tracing is off or no span
    is current."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def link(traceparent: str | None) -> Link | None:
    """A link to the span a message's ``traceparent`` names (a bridge's batch to its source messages)."""
    if _tracer is None or not traceparent:
        return None
    ctx = trace.get_current_span(_propagator.extract({TRACEPARENT: traceparent})).get_span_context()
    return Link(ctx) if ctx.is_valid else None


def xray_header(traceparent: str) -> str | None:
    """A W3C ``traceparent`` in X-Ray's form, as Lambda gives it to a function (``_X_AMZN_TRACE_ID``, the
    runtime API's ``Lambda-Runtime-Trace-Id``): the trace id split 8 + 24 hex digits, the parent span id, the
    sampled flag. None when it is not a version-00 ``traceparent``.

    >>> xray_header("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
    'Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1'
    """
    m = _TRACEPARENT.match(traceparent.strip().lower())
    if m is None:
        return None
    trace_id, span_id, flags = m.groups()
    sampled = int(flags, 16) & 1
    return f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={span_id};Sampled={sampled}"


def traceparent_of_xray(header: str) -> str | None:
    """An X-Ray trace header as a W3C ``traceparent`` (the inverse of :func:`xray_header`); None without a
    ``Root`` and a ``Parent``.

    >>> traceparent_of_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
    '00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01'
    """
    root, parent_id = _XRAY_ROOT.search(header), _XRAY_PARENT.search(header)
    if root is None or parent_id is None:
        return None
    sampled = _XRAY_SAMPLED.search(header)
    flags = "01" if sampled is not None and sampled.group(1) == "1" else "00"
    return f"00-{root.group(1)}{root.group(2)}-{parent_id.group(1)}-{flags}"


@contextlib.contextmanager
def configured(service: str, settings: TracingSettings) -> Iterator[None]:
    """:func:`configure` for the length of a ``with`` block (tests, benches), then :func:`shutdown`."""
    configure(service, settings)
    try:
        yield
    finally:
        shutdown()
