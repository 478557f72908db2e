"""The invoke path's plain-number metrics read as Prometheus' own Counter, Histogram and Gauge would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubelambda import metrics


def _lines(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without the ``_created`` timestamps only prometheus_client's own add."""
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line and "_created" not in line)


def test_the_same_exposition_as_prometheus_clients_own_metrics() -> None:
    ours = metrics.Invocations()
    registry = CollectorRegistry()
    registry.register(ours)
    reference = CollectorRegistry()
    (t_name, _, t_labels, t_help), (d_name, _, d_labels, d_help), (c_name, _, c_labels, c_help) = (
        ours.DECLARED
    )
    total = Counter(t_name, t_help, t_labels, registry=reference)
    duration = Histogram(d_name, d_help, d_labels, buckets=metrics.DURATION_BUCKETS, registry=reference)
    concurrent = Gauge(c_name, c_help, c_labels, registry=reference)
    rng = random.Random(24)
    # Bucket bounds exactly (a value equal to a bound counts in it), values between, and past the last bound.
    values = [*metrics.DURATION_BUCKETS, 0.0, 1e-9, 2000.0, *(rng.uniform(0, 1000) for _ in range(500))]
    for fn in (("shop", "orders"), ("shop", "mailer")):
        counts = ours.of(*fn)
        for i, value in enumerate(values):
            outcome = metrics.OUTCOMES[i % len(metrics.OUTCOMES)]
            counts.outcomes[outcome] += 1
            total.labels(*fn, outcome).inc()
            counts.observe(value)
            duration.labels(*fn).observe(value)
        counts.in_flight += 3
        concurrent.labels(*fn).set(3)
    assert _lines(registry) == _lines(reference)
