"""kubelambda.tracing: the X-Ray form of a trace, off as a no-op, sampling and parents (the SDK's own in-memory
exporter), and the trace context an Event, a bridge batch and a bridge pod carry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kubelambda import tracing
from kubelambda.asyncworker.queue import QueuedEvent
from kubelambda.bridge.queues._batch import Message, string_headers
from kubelambda.bridge.queues._core import trace_links
from kubelambda.resources import bridge as b
from kubelambda.settings import OperatorSettings

TRACE, SPAN = "5759e988bd862e3fe1be46a994272793", "53995c3f42cd8ad8"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    settings = tracing.TracingSettings(endpoint="http://127.0.0.1:9", sample_ratio=1.0)
    tracing.configure("test", settings, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_a_traceparent_in_xray_form_and_back() -> None:
    xray = tracing.xray_header(f"00-{TRACE}-{SPAN}-01")
    assert xray == f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=1"
    assert tracing.traceparent_of_xray(xray) == f"00-{TRACE}-{SPAN}-01"
    assert (
        tracing.xray_header(f"00-{TRACE}-{SPAN}-00")
        == f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=0"
    )
    assert tracing.xray_header("00-nothex-53995c3f42cd8ad8-01") is None
    assert tracing.xray_header(f"01-{TRACE}-{SPAN}-01") is None
    assert tracing.traceparent_of_xray(f"Root=1-{TRACE[:8]}-{TRACE[8:]};Sampled=1") is None  # no Parent


def test_off_every_span_is_one_shared_no_op_and_nothing_is_parsed() -> None:
    assert not tracing.enabled()
    first = tracing.span("a")
    assert first is tracing.span("b", kind=tracing.SpanKind.SERVER)
    with first as span:
        assert span is None
        assert tracing.current_traceparent() is None
    assert tracing.parent(f"00-{TRACE}-{SPAN}-01") is None
    assert tracing.link(f"00-{TRACE}-{SPAN}-01") is None


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELAMBDA_TRACING_SAMPLE_RATIO", "1.5")
    assert "sample_ratio" in (tracing.from_environment("test") or "")
    monkeypatch.setenv("KUBELAMBDA_TRACING_SAMPLE_RATIO", "0.5")
    monkeypatch.setenv("KUBELAMBDA_TRACING_ENDPOINT", "jaeger:4318")
    assert "endpoint" in (tracing.from_environment("test") or "")
    assert not tracing.enabled()


def test_a_span_continues_the_callers_trace_and_its_children_carry_it(spans: InMemorySpanExporter) -> None:
    with tracing.span("invoke", context=tracing.parent(f"00-{TRACE}-{SPAN}-01")) as outer:
        assert outer is not None
        with tracing.span("forward"):
            carried = tracing.current_traceparent()
    assert carried is not None
    forward, invoke = spans.get_finished_spans()
    assert invoke.context is not None
    assert forward.context is not None
    assert forward.parent is not None
    assert invoke.parent is not None
    assert f"{invoke.parent.span_id:016x}" == SPAN
    assert f"{invoke.context.trace_id:032x}" == TRACE
    assert forward.parent.span_id == invoke.context.span_id
    assert carried == f"00-{TRACE}-{forward.context.span_id:016x}-01"


def test_an_xray_header_is_a_parent_when_no_traceparent_came(spans: InMemorySpanExporter) -> None:
    xray = f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=1"
    with tracing.span("invoke", context=tracing.parent(None, xray)):
        pass
    (invoke,) = spans.get_finished_spans()
    assert invoke.context is not None
    assert f"{invoke.context.trace_id:032x}" == TRACE


def test_sampling_zero_records_nothing_but_still_propagates() -> None:
    exporter = InMemorySpanExporter()
    settings = tracing.TracingSettings(endpoint="http://127.0.0.1:9", sample_ratio=0.0)
    tracing.configure("test", settings, exporter=exporter)
    try:
        with tracing.span("new trace") as span:
            assert span is not None
            assert not span.is_recording()
            carried = tracing.current_traceparent()
        assert carried is not None
        assert int(carried[-2:], 16) & 1 == 0
        # A caller's sampled trace is followed whatever the ratio (parentbased).
        with tracing.span("followed", context=tracing.parent(f"00-{TRACE}-{SPAN}-01")) as span:
            assert span is not None
            assert span.is_recording()
    finally:
        tracing.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["followed"]


def test_an_event_carries_its_trace_in_its_nats_headers() -> None:
    event = QueuedEvent("demo", "f", "r", b"{}", 1.5, traceparent=f"00-{TRACE}-{SPAN}-01")
    headers = event.headers()
    assert headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"
    assert QueuedEvent.from_message(headers, b"{}") == event
    assert "traceparent" not in QueuedEvent("demo", "f", "r", b"{}", 1.5).headers()


def test_a_batch_links_to_the_traces_its_messages_name(spans: InMemorySpanExporter) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    batch = [
        Message("1", b"{}", message_attributes=string_headers({"traceparent": f"00-{TRACE}-{SPAN}-01"})),
        Message("2", b"{}"),
        Message("3", b"{}", message_attributes=string_headers({"traceparent": "garbage"})),
        Message("4", b"{}", message_attributes=string_headers({"traceparent": f"00-{other}-{SPAN}-00"})),
    ]
    links = trace_links(batch)
    assert [f"{link.context.trace_id:032x}" for link in links] == [TRACE, other]


def test_bridge_pods_get_the_platforms_tracing_settings() -> None:
    trigger = b.TriggerObject.from_body(
        {
            "metadata": {"name": "t1", "namespace": "demo", "uid": "u-1", "generation": 3},
            "spec": {"function": "fn", "schedule": {"expression": "rate(5 minutes)"}},
        }
    )

    def env(settings: OperatorSettings) -> list[dict[str, str]]:
        container = b.make_bridge_deployment(trigger, settings=settings)["spec"]["template"]["spec"][
            "containers"
        ][0]
        return list(container["env"])

    assert not [e for e in env(OperatorSettings()) if e["name"].startswith("KUBELAMBDA_TRACING_")]
    on = env(OperatorSettings(tracing_endpoint="http://jaeger:4318", tracing_sample_ratio=0.25))
    assert {"name": "KUBELAMBDA_TRACING_ENDPOINT", "value": "http://jaeger:4318"} in on
    assert {"name": "KUBELAMBDA_TRACING_SAMPLE_RATIO", "value": "0.25"} in on
    assert [e["name"] for e in on] == sorted(e["name"] for e in on)
