"""Tokens with which the gateway authenticates to agents (docs/security.md, "The gateway authenticates to agents").

Each is an HMAC-SHA256 of what it opens, keyed with the platform's agent key, which only the operator and the
gateway hold: a Function's token opens its own pods' ``/invoke`` and ``/metrics`` (the operator puts it in the
Function's ``<name>-agent`` Secret, the gateway derives it per request); a pool's token opens ``/specialize`` of
that pool's generic pods, which then take the function's token instead. Knowing one token (a function can read
its own) opens nothing else.
"""

from __future__ import annotations

import hashlib
import hmac

AUTHORIZATION = "Authorization"
TOKEN_ENV = "KUBELAMBDA_AGENT_TOKEN"
METRICS_TOKEN_ENV = "KUBELAMBDA_AGENT_METRICS_TOKEN_SHA256"
"""What agents check the metrics token against: its SHA-256 (hex), so a pod's environment and its Secret, which
a tenant may read, hold nothing that opens another pod's ``/metrics``."""
SECRET_TOKEN_KEY = "token"
SECRET_METRICS_KEY = "metrics-token-sha256"
SECRET_LOG_URL_KEY = "log-nats-url"
"""The log store's URL with the namespace's own log credentials (docs/logs.md, "Credentials")."""


def _derive(key: str, what: str) -> str:
    return hmac.new(key.encode(), what.encode(), hashlib.sha256).hexdigest()


def function_token(key: str, namespace: str, name: str) -> str:
    """The token of Function ``namespace/name``'s pods (and of a pool pod once specialised for it)."""
    return _derive(key, f"function:{namespace}/{name}")


def pool_token(key: str, namespace: str, runtime: str) -> str:
    """The token of the generic pods of ``runtime``'s warm pool in ``namespace``."""
    return _derive(key, f"pool:{namespace}/{runtime}")


def metrics_token_digest(token: str) -> str:
    """What a pod holds of the platform's metrics token (Prometheus shows the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token: str | None) -> dict[str, str]:
    """The header that shows ``token`` to an agent (none without one)."""
    return {AUTHORIZATION: f"Bearer {token}"} if token else {}
