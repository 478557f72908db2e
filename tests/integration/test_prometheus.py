"""A real Prometheus (Debian's ``prometheus``) scrapes the platform with the chart's ServiceMonitor/PodMonitors
turned into scrape jobs as the Prometheus Operator would (tests/kltest/prometheus.py); after a scenario (a cold
start, an Event invocation with a retry and a destination, a throttle, a queue Trigger's batch) every query of
the shipped Grafana dashboard returns data for the test's namespace, the chart's alert rules load and evaluate,
and no metric grows a series per request.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from kltest import wait_for
from kltest.cluster import Cluster
from kltest.platform import (
    FAST_ASYNC,
    REPO,
    SYSTEM_NS,
    Env,
    PlatformUnderTest,
    lambda_client,
    python_function,
    running_platform,
)
from kltest.prometheus import PodDiscovery, PrometheusServer, scrape_configs
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import ApiError, KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
CHART = REPO / "helm" / "kubelambda"
DASHBOARD = CHART / "files" / "dashboard.json"
RELEASE = "kubelambda"
SCRAPE = "1s"  # the chart's 30 s, shortened so rates have two samples within seconds
RATE_WINDOW = "30s"  # Grafana's $__rate_interval for a 1 s scrape interval is at least 4 intervals

# Fails every attempt of {"fail": true}, the first attempt of an event with {"failFirst": <folder>} (one marker
# file per request id, seen by the function's process on this machine); answers everything else, queue batches
# included.
HANDLER = """
import os


def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    marker = event.get("failFirst")
    if marker:
        path = os.path.join(marker, context.aws_request_id)
        if not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("the first attempt fails")
    return {"requestId": context.aws_request_id}
"""

# The agents' /metrics answer only this token (docs/security.md); the chart's PodMonitor reads it from a Secret.
METRICS_TOKEN = "test-metrics-token-0123456789abcdef"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def rendered_chart(*args: str) -> list[JSON]:
    helm = ensure_binaries(quiet=True).helm
    out = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", SYSTEM_NS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


# The chart's alert rules with every `for` 0 s and thresholds the scenario crosses. The Trigger thresholds are
# below any value (a queue bridge reports neither lag nor iterator age): their alerts prove only that the rules
# select the bridges' series.
ALERT_TEST_VALUES = [
    "monitoring.prometheusRule.for=0s",
    "monitoring.prometheusRule.notReadyFor=0s",
    "monitoring.prometheusRule.thresholds.functionErrorRatio=0",
    "monitoring.prometheusRule.thresholds.coldStartP95Seconds=0",
    "monitoring.prometheusRule.thresholds.iteratorAgeSeconds=-1",
    "monitoring.prometheusRule.thresholds.bridgeLag=-1",
]
# What the scenario makes fire, by alert, with the labels that name the function or bridge.
EXPECTED_ALERTS = {
    "KubelambdaFunctionThrottled": ("function", "obs-throttled"),
    "KubelambdaFunctionErrorRatioHigh": ("function", "obs"),
    "KubelambdaDeadLettersGrowing": ("function", "obs"),
    "KubelambdaTriggerIteratorAgeHigh": ("pod", None),
    "KubelambdaTriggerLagHigh": ("pod", None),
}


def rule_groups(values: list[str]) -> JSON:
    """The rendered PrometheusRule's spec (a Prometheus rule file) with ``values`` set."""
    docs = rendered_chart(
        "--api-versions", "monitoring.coreos.com/v1", *(arg for v in values for arg in ("--set", v))
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return dict(rule["spec"])


def gateway_target(docs: list[JSON], url: str) -> JSON:
    """The test gateway (on loopback) as the endpoints discovery would show the chart's gateway Service."""
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == f"{RELEASE}-gateway"]
    labels: dict[str, str] = {
        "__meta_kubernetes_namespace": SYSTEM_NS,
        "__meta_kubernetes_service_name": service["metadata"]["name"],
        "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
        "__meta_kubernetes_pod_name": f"{RELEASE}-gateway-0",
        "__meta_kubernetes_pod_container_name": "gateway",
    }
    for key, value in service["metadata"]["labels"].items():
        meta = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        labels[f"__meta_kubernetes_service_label_{meta}"] = str(value)
        labels[f"__meta_kubernetes_service_labelpresent_{meta}"] = "true"
    return {"address": url.removeprefix("http://"), "labels": labels}


def dashboard_queries(namespace: str) -> list[tuple[str, str]]:
    """(panel title, query) of every panel target, Grafana's variables replaced for the test's namespace."""
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", RATE_WINDOW)
                .replace("$namespace", namespace)  # a DNS label: no regex metacharacters
                .replace("$function", ".*")
            )
            queries.append((panel["title"], expr))
    return queries


def operator_target(docs: list[JSON], address: str) -> JSON:
    """The test operator (a thread of the test, on loopback) as the pod discovery would show the chart's
    operator pod."""
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-operator"
    ]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    labels: dict[str, str] = {
        "__meta_kubernetes_namespace": SYSTEM_NS,
        "__meta_kubernetes_pod_name": f"{RELEASE}-operator-0",
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_port_name": port["name"],
    }
    for key, value in template["metadata"]["labels"].items():
        meta = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        labels[f"__meta_kubernetes_pod_label_{meta}"] = str(value)
        labels[f"__meta_kubernetes_pod_labelpresent_{meta}"] = "true"
    return {"address": address, "labels": labels}


@pytest.fixture(scope="module")
def operator_metrics() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer, operator_metrics: str
) -> AsyncIterator[PlatformUnderTest]:
    """The module's platform (tests/conftest.py's) with the operator serving its metrics."""
    async with running_platform(
        cluster,
        kube,
        operator_settings={"metrics_address": operator_metrics, "agent_metrics_token": METRICS_TOKEN},
        nats_url=nats_server.url,
        **FAST_ASYNC,
    ) as platform:
        yield platform


@pytest.fixture(scope="module")
async def prometheus(
    platform: PlatformUnderTest,
    kube: KubeClient,
    operator_metrics: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[PrometheusServer]:
    docs = rendered_chart("--api-versions", "monitoring.coreos.com/v1")
    monitors = [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {m["metadata"]["name"] for m in monitors} == {
        f"{RELEASE}-gateway",
        f"{RELEASE}-operator",
        f"{RELEASE}-functions",
        f"{RELEASE}-bridges",
    }, monitors
    data = tmp_path_factory.mktemp("prometheus")
    rules = data / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(ALERT_TEST_VALUES)))
    discovery = PodDiscovery(kube)
    await discovery.start()
    config = {
        "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs(
            monitors,
            interval=SCRAPE,
            discovery_url=discovery.url,
            secrets={(f"{RELEASE}-agent-key", "metrics-token"): METRICS_TOKEN},
            static_targets={
                f"{RELEASE}-gateway": gateway_target(docs, platform.url),
                f"{RELEASE}-operator": operator_target(docs, operator_metrics),
            },
        ),
    }
    try:
        async with PrometheusServer(data, config) as server:
            yield server
    finally:
        await discovery.stop()


async def scenario(env: Env, nats_server: NatsServer, tmp_path: Path) -> list[str]:
    """A cold start, an Event with one retry reaching its success destination, a failing invocation, an Event
    failing into the dead-letter stream, a throttle, and a queue Trigger's batch; returns the request ids the
    callers saw."""
    client = lambda_client(env.url)
    await env.deploy(
        python_function(
            "obs", HANDLER, **{"async": {"onSuccess": {"url": env.records.url(f"ok-{env.namespace}")}}}
        )
    )
    await env.deploy(python_function("obs-throttled", HANDLER, concurrency={"reserved": 0}))
    ids = []
    answer = await asyncio.to_thread(client.invoke, FunctionName=f"{env.namespace}/obs", Payload=b"{}")
    assert answer["StatusCode"] == 200, answer
    assert "FunctionError" not in answer, answer
    ids.append(json.loads(answer["Payload"].read())["requestId"])
    answer = await asyncio.to_thread(
        client.invoke,
        FunctionName=f"{env.namespace}/obs",
        InvocationType="Event",
        Payload=json.dumps({"failFirst": str(tmp_path)}).encode(),
    )
    assert answer["StatusCode"] == 202, answer
    ids.append(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])
    answer = await asyncio.to_thread(
        client.invoke, FunctionName=f"{env.namespace}/obs", Payload=json.dumps({"fail": True}).encode()
    )
    assert answer.get("FunctionError") == "Unhandled", answer
    ids.append(json.loads(answer["Payload"].read()).get("requestId", ""))
    # No onFailure destination: after its retries the event goes to the dead-letter stream.
    answer = await asyncio.to_thread(
        client.invoke,
        FunctionName=f"{env.namespace}/obs",
        InvocationType="Event",
        Payload=json.dumps({"fail": True}).encode(),
    )
    assert answer["StatusCode"] == 202, answer
    ids.append(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])
    with pytest.raises(client.exceptions.TooManyRequestsException):
        await asyncio.to_thread(client.invoke, FunctionName=f"{env.namespace}/obs-throttled", Payload=b"{}")

    stream = f"obs-{env.namespace}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        env.apply(
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Trigger",
                "metadata": {"name": "obs-queue"},
                "spec": {
                    "function": "obs",
                    "queue": {"nats": {"url": nats_server.url, "stream": stream, "subject": f"{stream}.in"}},
                },
            }
        )
        await js.publish(f"{stream}.in", b'{"from": "the queue"}')
    finally:
        await nc.close()
    (record,) = await env.records.wait(f"ok-{env.namespace}", 1)
    assert record["requestContext"]["approximateInvokeCount"] == 2, record
    return ids


async def test_every_dashboard_query_returns_data_for_the_functions_namespace(
    env: Env, nats_server: NatsServer, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    await scenario(env, nats_server, tmp_path)

    # Beyond the dashboard: the operator's and the agents' own series.
    more = [
        ("operator reconciles", "sum by (kind, result) (kubelambda_operator_reconciles_total)"),
        (
            "agent invocations",
            f'sum by (pod) (kubelambda_agent_invocations_total{{namespace="{env.namespace}"}})',
        ),
    ]

    async def empty_queries() -> list[str]:
        empty = []
        for title, expr in [*dashboard_queries(env.namespace), *more]:
            if not await prometheus.query(expr):
                empty.append(f"{title}: {expr}")
        return empty

    await wait_for(
        empty_queries, lambda left: not left, what="every dashboard query to return data", timeout=120
    )
    for title, expr in dashboard_queries(env.namespace):
        for sample in await prometheus.query(expr):
            labels = sample["metric"]
            # A target label overwriting the metric's own (the gateway lives in another namespace) would
            # show the platform's namespace here, or an exported_namespace.
            assert labels.get("namespace", env.namespace) == env.namespace, (title, expr, labels)
            assert not any(k.startswith("exported_") for k in labels), (title, expr, labels)
    targets = await prometheus.targets()
    jobs = {t["labels"]["job"] for t in targets if t["health"] == "up" and t["labels"].get("namespace")}
    assert {
        f"{RELEASE}-gateway",
        f"{SYSTEM_NS}/{RELEASE}-functions",
        f"{SYSTEM_NS}/{RELEASE}-bridges",
    } <= jobs, targets


async def test_no_metric_grows_a_series_per_request(
    env: Env, nats_server: NatsServer, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """Series counts stay put when the same scenario runs again with new request ids, and no label value is a
    request id, a UUID or a payload."""
    seen: set[str] = set()

    async def series_now() -> dict[str, int]:
        # Series per metric, a pod's own counted once: more instances add pods, not series per request.
        kept: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        # This test's namespace only: the earlier tests' pods come and go.
        for row in await prometheus.query(f'{{__name__=~"kubelambda_.*", namespace="{env.namespace}"}}'):
            labels = {k: v for k, v in row["metric"].items() if k not in ("pod", "instance")}
            kept.setdefault(labels["__name__"], set()).add(tuple(sorted(labels.items())))
        return {name: len(sets) for name, sets in kept.items()}

    seen.update(await scenario(env, nats_server, tmp_path))
    client = lambda_client(env.url)
    for i in range(20):
        answer = await asyncio.to_thread(
            client.invoke, FunctionName=f"{env.namespace}/obs", Payload=json.dumps({"i": i}).encode()
        )
        seen.add(json.loads(answer["Payload"].read())["requestId"])
    after_first = await wait_for(
        series_now,
        lambda counts: all(
            counts.get(name, 0) > 0
            for name in (
                "kubelambda_bridge_invocations_total",
                "kubelambda_agent_invocations_total",
                "kubelambda_invocations_total",
            )
        ),
        what="the scenario's series scraped",
        timeout=60,
    )
    series = await prometheus.query('{__name__=~"kubelambda_.*"}')
    for sample in series:
        for name, value in sample["metric"].items():
            assert value not in seen, (name, value, sample["metric"])
            assert not UUID.search(value), (name, value, sample["metric"])
            assert len(value) <= 253, (name, value)
    # Twenty more invocations with new request ids and payloads: no new series.
    mark = await prometheus.query('sum(kubelambda_invocations_total{function="obs"})')
    before = float(mark[0]["value"][1])
    for i in range(20):
        await asyncio.to_thread(
            client.invoke,
            FunctionName=f"{env.namespace}/obs",
            Payload=json.dumps({"again": i, "tmp": str(tmp_path)}).encode(),
        )
    await wait_for(
        lambda: prometheus.query('sum(kubelambda_invocations_total{function="obs"})'),
        lambda rows: bool(rows) and float(rows[0]["value"][1]) >= before + 20,
        what="the twenty invocations scraped",
        timeout=60,
    )
    after = await series_now()
    grown = {
        name: (after_first.get(name), count)
        for name, count in after.items()
        if count > after_first.get(name, 0)
    }
    assert not grown, grown


async def test_the_chart_monitors_target_the_pods_the_operator_makes(
    kube: KubeClient, env: Env, prometheus: PrometheusServer
) -> None:
    """Every scraped pod target is a function or bridge pod in the cluster (the discovery and the keep rules
    select them, nothing else).

    Prometheus' discovery lags the cluster: a target may name a pod deleted since (an earlier test's namespace
    went, CI saw a 404 so). The labels the discovery saw when it kept the target say what it selected; a pod still
    there is checked against the API server too."""
    targets = await prometheus.targets()
    pods = [t for t in targets if t["labels"]["job"].endswith(("-functions", "-bridges"))]
    for target in pods:
        seen = target["discoveredLabels"]
        assert any(
            seen.get(f"__meta_kubernetes_pod_labelpresent_kubelambda_io_{kind}") == "true"
            for kind in ("function", "trigger")
        ), seen
        labels = target["labels"]
        try:
            pod = await kube.get(
                resource_path("v1", "pods", namespace=labels["namespace"], name=labels["pod"])
            )
        except ApiError as e:
            if e.status != 404:
                raise
            continue  # gone since the discovery listed it
        pod_labels = pod["metadata"]["labels"]
        assert "kubelambda.io/function" in pod_labels or "kubelambda.io/trigger" in pod_labels, pod_labels


async def test_the_chart_alerts_evaluate_and_fire_on_the_scenario(
    env: Env, nats_server: NatsServer, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """The rendered rules load, every rule evaluates without error, and the scenario fires the alerts it should
    for this namespace's functions and bridge.

    A counter's first increment is invisible to rate() (its series appears at 1): once the scenario's series
    are scraped, the throttle and the dead-lettered event happen again. The cold-start alert is left out for
    that reason (a second cold start needs a scale to zero)."""
    await scenario(env, nats_server, tmp_path)
    for expr in (
        f'kubelambda_throttles_total{{namespace="{env.namespace}"}}',
        f'kubelambda_async_destination_records_total{{namespace="{env.namespace}", destination="dead_letter"}}',
    ):
        await wait_for(lambda e=expr: prometheus.query(e), bool, what=f"{expr} scraped", timeout=60)
    client = lambda_client(env.url)
    with pytest.raises(client.exceptions.TooManyRequestsException):
        await asyncio.to_thread(client.invoke, FunctionName=f"{env.namespace}/obs-throttled", Payload=b"{}")
    answer = await asyncio.to_thread(
        client.invoke,
        FunctionName=f"{env.namespace}/obs",
        InvocationType="Event",
        Payload=json.dumps({"fail": True}).encode(),
    )
    assert answer["StatusCode"] == 202, answer

    async def missing() -> list[str]:
        alerts = [a for a in await prometheus.alerts() if a["state"] == "firing"]
        left = []
        for name, (label, value) in EXPECTED_ALERTS.items():
            if not any(
                a["labels"]["alertname"] == name
                and a["labels"].get("namespace") == env.namespace
                and (value is None or a["labels"].get(label) == value)
                for a in alerts
            ):
                left.append(name)
        return left

    await wait_for(missing, lambda left: not left, what="the scenario's alerts firing", timeout=120)
    groups = await prometheus.rules()
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 11, rules
    for rule in rules:
        assert rule["health"] == "ok", rule
