"""An agent's own Prometheus metrics, scraped from its invoke port (``GET /metrics``)."""

from __future__ import annotations

import http.client


def agent_metrics(host: str, port: int, prefix: str) -> dict[str, float]:
    """The samples whose name (with labels) starts with ``prefix``, by that name."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(prefix)}
