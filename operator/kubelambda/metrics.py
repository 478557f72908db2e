"""Every Prometheus metric kubelambda's control plane exports: names, help and labels in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
