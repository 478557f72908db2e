"""OpenTelemetry traces against a real Jaeger v2 (OTLP/HTTP in, query API out) on loopback.

The gateway (in this process) and the bridge pods the operator makes export to the module's Jaeger, sampling
everything; each test sends a caller ``traceparent`` of its own and reads the trace back from Jaeger: a cold
invoke (invoke → activator wait, forward; the function's ``_X_AMZN_TRACE_ID`` in X-Ray form under the forward
span), an Event with one retry and a Function destination (one trace through NATS), and a queue bridge's batch
linked to the trace of the message it carried.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from kltest import Cluster
from kltest.jaeger import JaegerServer, Span, spans_of
from kltest.platform import (
    FAIL_FIRST_HANDLER,
    FAST_ASYNC,
    Env,
    PlatformUnderTest,
    python_function,
    running_platform,
)
from kltest.wait import wait_for
from kubelambda import tracing
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]

XRAY_HANDLER = """
import os


def handler(event, context):
    return {"xray": os.environ.get("_X_AMZN_TRACE_ID")}
"""

ECHO_HANDLER = """
def handler(event, context):
    return event
"""


@pytest.fixture(scope="module")
async def jaeger(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JaegerServer]:
    async with JaegerServer(tmp_path_factory.mktemp("jaeger")) as server:
        yield server


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer, jaeger: JaegerServer
) -> AsyncIterator[PlatformUnderTest]:
    """The platform tracing everything to the module's Jaeger: the gateway in this process, the operator's bridge
    pods through ``KUBELAMBDA_TRACING_*``."""
    settings = tracing.TracingSettings(endpoint=jaeger.otlp_endpoint, sample_ratio=1.0)
    with tracing.configured("kubelambda-gateway", settings):
        async with running_platform(
            cluster,
            kube,
            nats_url=nats_server.url,
            operator_settings={"tracing_endpoint": jaeger.otlp_endpoint, "tracing_sample_ratio": 1.0},
            **FAST_ASYNC,
        ) as running:
            yield running


def caller_trace() -> tuple[str, str, str]:
    """A caller's (trace id, span id, traceparent), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


async def invoke(
    url: str, name: str, payload: JSON, *, traceparent: str, kind: str = "RequestResponse"
) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/2015-03-31/functions/{name}/invocations",
            json=payload,
            headers={"traceparent": traceparent, "X-Amz-Invocation-Type": kind},
            timeout=aiohttp.ClientTimeout(total=180),
        ) as resp,
    ):
        body = await resp.read()
        assert resp.status == (202 if kind == "Event" else 200), (resp.status, body)
        return json.loads(body) if body else None


def one(spans: list[Span], name: str, *, parent: str | None, **tags: Any) -> Span:
    """The one span called ``name`` under ``parent`` whose tags include ``tags``."""
    found = [
        s
        for s in spans
        if s.name == name and s.parent_id == parent and all(s.tags.get(k) == v for k, v in tags.items())
    ]
    assert len(found) == 1, (name, parent, tags, [(s.name, s.span_id, s.parent_id, s.tags) for s in spans])
    return found[0]


def names(*wanted: str) -> Callable[[list[Span]], bool]:
    def done(spans: list[Span]) -> bool:
        got = [s.name for s in spans]
        return all(got.count(n) >= wanted.count(n) for n in wanted)

    return done


async def test_a_cold_invoke_is_one_trace_under_the_callers_span(env: Env, jaeger: JaegerServer) -> None:
    await env.deploy(python_function("cold", XRAY_HANDLER))
    trace_id, caller_span, traceparent = caller_trace()
    answer = await invoke(env.url, f"{env.namespace}/cold", {}, traceparent=traceparent)
    name = f"invoke {env.namespace}/cold"
    spans = await jaeger.spans(
        trace_id, until=names(name, "activator wait", "forward"), what="the cold invoke's spans in Jaeger"
    )
    invoked = one(spans, name, parent=caller_span)
    assert invoked.service == "kubelambda-gateway"
    assert invoked.tags["faas.coldstart"] is True
    assert invoked.tags["kubelambda.outcome"] == "success"
    assert invoked.tags["kubelambda.throttled"] is False
    assert invoked.tags["kubelambda.invocation_type"] == "RequestResponse"
    assert invoked.tags["kubelambda.namespace"] == env.namespace
    assert invoked.tags["faas.version"] == "$LATEST"
    assert invoked.tags["kubelambda.init_duration_ms"] > 0
    one(spans, "activator wait", parent=invoked.span_id)
    forwarded = one(spans, "forward", parent=invoked.span_id)
    # The function saw the same trace in X-Ray's form, its parent the forward span (as Lambda's function segment).
    assert answer["xray"] == f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={forwarded.span_id};Sampled=1"


async def test_an_event_its_retry_and_its_destination_are_one_trace(
    env: Env, jaeger: JaegerServer, tmp_path: Path
) -> None:
    await env.deploy(python_function("sink", ECHO_HANDLER))
    await env.deploy(
        python_function("flaky", FAIL_FIRST_HANDLER, **{"async": {"onSuccess": {"function": "sink"}}})
    )
    trace_id, caller_span, traceparent = caller_trace()
    await invoke(
        env.url,
        f"{env.namespace}/flaky",
        {"failFirst": str(tmp_path), "i": 1},
        traceparent=traceparent,
        kind="Event",
    )
    flaky, sink = f"{env.namespace}/flaky", f"{env.namespace}/sink"
    spans = await jaeger.spans(
        trace_id,
        until=names(
            f"enqueue {flaky}",
            f"async {flaky}",
            f"async {flaky}",
            f"invoke {flaky}",
            f"invoke {flaky}",
            "destination",
            f"async {sink}",
            f"invoke {sink}",
        ),
        what="the event's spans in Jaeger",
        timeout=120,
    )
    enqueued = one(spans, f"enqueue {flaky}", parent=caller_span)
    first = one(spans, f"async {flaky}", parent=enqueued.span_id)
    one(spans, f"invoke {flaky}", parent=first.span_id, **{"kubelambda.outcome": "function_error"})
    # The retry is a new message whose delivery continues the trace under the delivery that queued it.
    retry = one(spans, f"async {flaky}", parent=first.span_id)
    one(
        spans,
        f"invoke {flaky}",
        parent=retry.span_id,
        **{"kubelambda.outcome": "success", "kubelambda.invocation_type": "Event"},
    )
    sent = one(spans, "destination", parent=retry.span_id, **{"kubelambda.destination": "function"})
    delivered = one(spans, f"async {sink}", parent=sent.span_id)
    one(spans, f"invoke {sink}", parent=delivered.span_id, **{"kubelambda.outcome": "success"})


async def test_a_queue_batch_is_a_span_linked_to_its_messages_trace(
    env: Env, jaeger: JaegerServer, nats_server: NatsServer
) -> None:
    await env.deploy(python_function("consumer", ECHO_HANDLER))
    stream = f"traced-{env.namespace}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        env.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trigger",
                "metadata": {"name": "traced"},
                "spec": {
                    "function": "consumer",
                    "queue": {
                        "nats": {"url": nats_server.url, "stream": stream, "subject": f"{stream}.in"},
                        "batchSize": 1,
                    },
                },
            }
        )
        trace_id, message_span, traceparent = caller_trace()
        await js.publish(f"{stream}.in", b'{"n": 1}', headers={"traceparent": traceparent})
        batch = await wait_for(
            lambda: linked_batch(jaeger, trace_id),
            lambda found: found is not None,
            what="a bridge batch span linked to the message's trace in Jaeger",
            timeout=120,
            interval=1.0,
        )
        assert batch is not None
        batch_trace, spans = batch
        batched = one(spans, "batch traced", parent=None)
        assert batched.service == "kubelambda-bridge"
        assert (trace_id, message_span) in batched.links
        assert batched.tags["messaging.batch.message_count"] == 1
        # The invocation the batch made is its child, in the gateway.
        invoked = await jaeger.spans(
            batch_trace,
            until=names("batch traced", f"invoke {env.namespace}/consumer"),
            what="the batch's invocation",
        )
        one(invoked, f"invoke {env.namespace}/consumer", parent=batched.span_id)
    finally:
        await nc.close()
        await env.kube.delete(
            resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=env.namespace, name="traced")
        )


async def linked_batch(jaeger: JaegerServer, trace_id: str) -> tuple[str, list[Span]] | None:
    """(trace id, spans) of the bridge's trace whose batch span links to ``trace_id``."""
    for trace in await jaeger.find("kubelambda-bridge"):
        spans = spans_of(trace)
        if any(link[0] == trace_id for s in spans for link in s.links):
            return str(trace["traceID"]), spans
    return None
