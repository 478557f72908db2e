"""What every layer shares about Kubernetes objects: the type of a parsed JSON object, and the timestamp
format of conditions (RFC 3339, seconds, UTC)."""

from __future__ import annotations

import datetime
from typing import Any

JSON = dict[str, Any]


def utcnow() -> str:
    """Now as a condition's ``lastTransitionTime`` (``2026-01-02T03:04:05Z``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
