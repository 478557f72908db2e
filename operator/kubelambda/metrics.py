"""Every Prometheus metric kubelambda's control plane exports: names, help and labels in one place."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

REGISTRY = CollectorRegistry(auto_describe=True)

OPERATOR_RECONCILES = Counter(
    "kubelambda_operator_reconciles_total",
    "Reconciles of a kind by outcome (ok, problem, error).",
    ["kind", "result"],
    registry=REGISTRY,
)
OPERATOR_RECONCILE_SECONDS = Histogram(
    "kubelambda_operator_reconcile_seconds",
    "Duration of one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
OPERATOR_API_WRITES = Counter(
    "kubelambda_operator_api_writes_total",
    "Writes by the operator's own client (apply, status patch, delete), by resource.",
    ["resource"],
    registry=REGISTRY,
)

# ---- gateway ----------------------------------------------------------------------------------------------


OUTCOMES = ("success", "function_error", "timeout", "throttled", "error")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class FunctionCounts:
    """One function's invocation metrics as plain numbers: the invoke path adds to them (no label lookup, no lock:
    the gateway's invocations all run on one event loop thread), a scrape reads them (:class:`Invocations`)."""

    __slots__ = ("buckets", "in_flight", "outcomes", "seconds")

    def __init__(self) -> None:
        self.in_flight = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # as Prometheus: value <= le
        self.seconds += seconds


class Invocations:
    """``kubelambda_invocations_total``, ``kubelambda_invocation_duration_seconds`` and
    ``kubelambda_concurrent_executions``, per function, from each function's :class:`FunctionCounts`.

    They change on every invocation: a Prometheus Counter, Histogram and Gauge cost ~25 Python calls and four
    locks per invocation there (issue 24: a sixth of what the gateway added over a bare proxy); plain numbers,
    read at scrape time, cost none."""

    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], FunctionCounts] = {}

    def of(self, namespace: str, name: str) -> FunctionCounts:
        found = self.functions.get((namespace, name))
        if found is None:
            found = self.functions[(namespace, name)] = FunctionCounts()
        return found

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families()

    # (name, type, labels, help) of each family, as the docs' metrics table lists them (kubelambda.api._docs).
    DECLARED = (
        (
            "kubelambda_invocations",
            "counter",
            ("namespace", "function", "outcome"),
            "Invocations through the gateway by function and outcome (success, function_error, timeout, "
            "throttled, error).",
        ),
        (
            "kubelambda_invocation_duration_seconds",
            "histogram",
            ("namespace", "function"),
            "Time from the gateway receiving an invocation to its response, including any cold start.",
        ),
        (
            "kubelambda_concurrent_executions",
            "gauge",
            ("namespace", "function"),
            "Invocations admitted and not yet answered (running or waiting for a slot), per function.",
        ),
    )

    def _families(self) -> Iterator[Metric]:
        (t_name, _, t_labels, t_help), (d_name, _, d_labels, d_help), (c_name, _, c_labels, c_help) = (
            self.DECLARED
        )
        total = CounterMetricFamily(t_name, t_help, labels=t_labels)
        duration = HistogramMetricFamily(d_name, d_help, labels=d_labels)
        concurrent = GaugeMetricFamily(c_name, c_help, labels=c_labels)
        bounds = [*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf"]  # as prometheus_client writes these
        for (namespace, name), counts in list(self.functions.items()):
            for outcome, n in counts.outcomes.items():
                total.add_metric([namespace, name, outcome], n)
            cumulative = list(itertools.accumulate(counts.buckets))
            duration.add_metric([namespace, name], list(zip(bounds, cumulative, strict=True)), counts.seconds)
            concurrent.add_metric([namespace, name], counts.in_flight)
        yield total
        yield duration
        yield concurrent


GATEWAY_INVOCATIONS = Invocations()
REGISTRY.register(GATEWAY_INVOCATIONS)
GATEWAY_COLD_STARTS = Counter(
    "kubelambda_cold_starts_total",
    "Invocations that found no ready instance and waited for one.",
    ["namespace", "function"],
    registry=REGISTRY,
)
GATEWAY_COLD_START_SECONDS = Histogram(
    "kubelambda_cold_start_seconds",
    "Time a cold invocation waited for its first ready instance.",
    ["namespace", "function"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
GATEWAY_AUTH_MODE = Gauge(
    "kubelambda_gateway_auth_mode",
    "1 for the gateway's auth mode (kubernetes, or none: every caller may invoke everything).",
    ["mode"],
    registry=REGISTRY,
)
GATEWAY_AUTH_REFUSALS = Counter(
    "kubelambda_gateway_auth_refusals_total",
    "Calls refused before anything ran, by reason (MissingAuthenticationToken, UnrecognizedClient, "
    "InvalidSignature, AccessDenied).",
    ["reason"],
    registry=REGISTRY,
)
GATEWAY_AUTH_REVIEWS = Counter(
    "kubelambda_gateway_auth_reviews_total",
    "TokenReviews and SubjectAccessReviews the gateway sent to the API server (cache misses), by kind.",
    ["kind"],
    registry=REGISTRY,
)
GATEWAY_THROTTLES = Counter(
    "kubelambda_throttles_total",
    "Invocations refused with 429, by reason (ReservedFunctionConcurrentInvocationLimitExceeded, ...).",
    ["namespace", "function", "reason"],
    registry=REGISTRY,
)
GATEWAY_ACTIVATOR_WAITING = Gauge(
    "kubelambda_activator_waiting",
    "Invocations waiting for a first instance of their function.",
    ["namespace", "function"],
    registry=REGISTRY,
)
AUTOSCALER_DESIRED = Gauge(
    "kubelambda_instances_desired",
    "Instances the autoscaler last asked for, per function.",
    ["namespace", "function"],
    registry=REGISTRY,
)
AUTOSCALER_READY = Gauge(
    "kubelambda_instances_ready",
    "Ready instances (endpoints) the gateway routes to, per function.",
    ["namespace", "function"],
    registry=REGISTRY,
)

# ---- asynchronous invocations -------------------------------------------------------------------------------

ASYNC_ACCEPTED = Counter(
    "kubelambda_async_events_accepted_total",
    "Event invocations stored in JetStream and answered 202.",
    ["namespace", "function"],
    registry=REGISTRY,
)
ASYNC_RETRIES = Counter(
    "kubelambda_async_retries_total",
    "Events queued again after a function error (a retry, counted against maxRetries).",
    ["namespace", "function"],
    registry=REGISTRY,
)
ASYNC_REQUEUES = Counter(
    "kubelambda_async_requeues_total",
    "Events put back with backoff after a throttle or platform error (not counted as retries).",
    ["namespace", "function"],
    registry=REGISTRY,
)
ASYNC_DESTINATION_RECORDS = Counter(
    "kubelambda_async_destination_records_total",
    "Invocation records sent, by kind of destination (function, nats, url, dead_letter).",
    ["namespace", "function", "destination"],
    registry=REGISTRY,
)
ASYNC_DROPPED = Counter(
    "kubelambda_async_events_dropped_total",
    "Messages discarded without a record (only malformed ones; must stay 0).",
    ["reason"],
    registry=REGISTRY,
)
ASYNC_REDELIVERED_DONE = Counter(
    "kubelambda_async_redelivered_done_total",
    "Events JetStream delivered again after their outcome was recorded: acknowledged, not run twice.",
    registry=REGISTRY,
)
ASYNC_QUEUE_DEPTH = Gauge(
    "kubelambda_async_queue_depth",
    "Events in the JetStream stream (waiting, being handled, or waiting for a retry).",
    registry=REGISTRY,
)
ASYNC_QUEUE_OLDEST_SECONDS = Gauge(
    "kubelambda_async_queue_oldest_age_seconds",
    "Age of the oldest event in the stream since the gateway accepted it (0 when empty).",
    registry=REGISTRY,
)

# ---- trigger bridges (one process per Trigger, so no trigger label) ---------------------------------------

BRIDGE_INVOCATIONS = Counter(
    "kubelambda_bridge_invocations_total",
    "Invocations the bridge made through the gateway, by outcome (success, function_error, throttled, error).",
    ["outcome"],
    registry=REGISTRY,
)
BRIDGE_INVOKE_SECONDS = Histogram(
    "kubelambda_bridge_invoke_seconds",
    "Time from the bridge sending an invocation to the gateway's answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
BRIDGE_EVENTS = Counter(
    "kubelambda_bridge_events_total",
    "Events or records handed to the function (accepted for async sources, processed for batches).",
    registry=REGISTRY,
)
BRIDGE_RECORDS_RECEIVED = Counter(
    "kubelambda_bridge_records_received_total",
    "Records (messages, objects, ticks) read from the source.",
    registry=REGISTRY,
)
BRIDGE_BATCHES = Counter(
    "kubelambda_bridge_batches_total",
    "Batches sent to the function, by outcome (success, partial, failure).",
    ["outcome"],
    registry=REGISTRY,
)
BRIDGE_BATCH_SIZE = Histogram(
    "kubelambda_bridge_batch_size",
    "Records per batch sent to the function.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 10000),
    registry=REGISTRY,
)
BRIDGE_FAILURES = Counter(
    "kubelambda_bridge_failures_total",
    "Records whose processing failed (function error or batch item failure) and will be retried or discarded.",
    registry=REGISTRY,
)
BRIDGE_DISCARDED = Counter(
    "kubelambda_bridge_records_discarded_total",
    "Records given up on (retries or age exhausted) and sent to the on-failure destination, by reason.",
    ["reason"],
    registry=REGISTRY,
)
BRIDGE_ITERATOR_AGE = Gauge(
    "kubelambda_bridge_iterator_age_seconds",
    "Streams: age of the last record read (Lambda's IteratorAge).",
    registry=REGISTRY,
)
BRIDGE_LAG = Gauge(
    "kubelambda_bridge_lag",
    "Records or objects the bridge has yet to deliver, where the source can tell.",
    registry=REGISTRY,
)
BRIDGE_SOURCE_UP = Gauge(
    "kubelambda_bridge_source_up",
    "1 when the last attempt to reach the source succeeded, else 0.",
    registry=REGISTRY,
)
BRIDGE_CHECKPOINTS = Counter(
    "kubelambda_bridge_checkpoints_total",
    "Checkpoint writes (ConfigMap applies) by the bridge.",
    registry=REGISTRY,
)
BRIDGE_LOG_RECORDS_STORED = Counter(
    "kubelambda_bridge_log_records_stored_total",
    "The bridge's own log records the log store acknowledged (docs/logs.md).",
    registry=REGISTRY,
)
BRIDGE_LOG_RECORDS_DROPPED = Counter(
    "kubelambda_bridge_log_records_dropped_total",
    "The bridge's own log records not stored, by reason (buffer_full, or the error that lost them).",
    ["reason"],
    registry=REGISTRY,
)

# ---- warm pool (the gateway; docs/warm-pools.md) ------------------------------------------------------------

WARM_POOL_SIZE = Gauge(
    "kubelambda_warm_pool_size",
    "Pool pods per runtime by state: free (ready, unclaimed) and specialised (serving a function).",
    ["runtime", "state"],
    registry=REGISTRY,
)
WARM_POOL_DESIRED = Gauge(
    "kubelambda_warm_pool_desired",
    "Replicas the gateway asks of each runtime's pool Deployment (its size, grown with recent claims).",
    ["runtime"],
    registry=REGISTRY,
)
WARM_POOL_CLAIMS = Counter(
    "kubelambda_warm_pool_claims_total",
    "Cold starts served by specialising a pool pod, by runtime.",
    ["runtime"],
    registry=REGISTRY,
)
WARM_POOL_MISSES = Counter(
    "kubelambda_warm_pool_misses_total",
    "Cold starts of pool-eligible functions that took the normal path, by reason (empty: no free pod; "
    "failed: specialisation failed).",
    ["runtime", "reason"],
    registry=REGISTRY,
)
WARM_POOL_SPECIALIZE_SECONDS = Histogram(
    "kubelambda_warm_pool_specialize_seconds",
    "Time from claiming a pool pod to its handler being loaded (code delivery + init).",
    ["runtime"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
WARM_POOL_RETIRED = Counter(
    "kubelambda_warm_pool_retired_total",
    "Specialised pool pods deleted, by reason (function_ready, code_changed, function_gone, lifetime, failed, restarted, abandoned).",
    ["reason"],
    registry=REGISTRY,
)

# ---- log export (kubelambda log-export) ----------------------------------------------------------------------

LOG_EXPORT_RECORDS = Counter(
    "kubelambda_log_export_records_total",
    "Log records sent to the OTLP endpoint, by result (exported; rejected: the endpoint refused them for good, "
    "a 4xx other than 429 or a partial success's rejected count).",
    ["namespace", "result"],
    registry=REGISTRY,
)
LOG_EXPORT_FAILURES = Counter(
    "kubelambda_log_export_failures_total",
    "OTLP requests that failed and are retried (unreachable, timeout, 429, 5xx); their records stay in the store.",
    ["namespace"],
    registry=REGISTRY,
)
LOG_EXPORT_LAG = Gauge(
    "kubelambda_log_export_pending_messages",
    "Messages of the namespace's log stream not yet exported (the export consumer's pending count).",
    ["namespace"],
    registry=REGISTRY,
)


class _Families:
    """The families of :data:`REGISTRY` whose names start (or do not start) with given prefixes.

    Every process imports every metric above; each serves only its own, so the gateway does not export the
    bridges' unlabelled gauges (``kubelambda_bridge_source_up 0`` would read as a source down) nor a bridge
    the gateway's."""

    def __init__(self, prefixes: tuple[str, ...], *, exclude: bool) -> None:
        self.prefixes = prefixes
        self.exclude = exclude

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith(self.prefixes) != self.exclude:
                yield family


def _view(*prefixes: str, exclude: bool = False) -> CollectorRegistry:
    view = CollectorRegistry(auto_describe=False)
    view.register(_Families(prefixes, exclude=exclude))
    return view


BRIDGE_PREFIXES = ("kubelambda_bridge_",)
OPERATOR_PREFIXES = ("kubelambda_operator_",)
LOG_EXPORT_PREFIXES = ("kubelambda_log_export_",)
# What each process serves on /metrics.
GATEWAY_VIEW = _view(*BRIDGE_PREFIXES, *OPERATOR_PREFIXES, *LOG_EXPORT_PREFIXES, exclude=True)
LOG_EXPORT_VIEW = _view(*LOG_EXPORT_PREFIXES)
BRIDGE_VIEW = _view(*BRIDGE_PREFIXES)
OPERATOR_VIEW = _view(*OPERATOR_PREFIXES)
