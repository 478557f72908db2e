"""The platform NATS's users: one per component, each allowed only the subjects it needs (docs/security.md, "NATS").

| user | publishes | subscribes |
|---|---|---|
| ``operator`` | JetStream's stream info/create/update (each namespace's log stream) | its own inbox |
| ``gateway`` | as ``worker`` (it runs the Event worker unless ``async.worker.separate``) | its own inbox |
| ``worker`` | Event queue and dead letters, JetStream's API (its consumer, acks), tenants' ``nats`` destinations; never ``$SYS``/``$KV``/``$O``, a stream's deletion or purge, logs, nor another's inbox | its own inbox |
| ``bridge`` | tenants' subjects only (``onFailure.nats``): no ``$`` subject, nothing of ``kubelambda.``, no inbox | ``_INBOX.>`` (publish acknowledgements) |
| ``logauth`` | answers to the server's authorization requests (``$SYS._INBOX.>``) | ``$SYS.REQ.USER.AUTH`` (the gateway's log auth service) |
| ``logs.<namespace>`` | ``kubelambda.logs.<namespace>.>`` (log shipping: agents, and bridges' own lines) | ``_INBOX.<namespace>.>`` (the store's acknowledgements) |
| ``exporter`` | JetStream's stream names, its durable consumer ``kubelambda-otlp`` (info, create, next, acks) | its own inbox |
| ``admin`` | everything (the CLI: ``kubelambda logs``, ``kubelambda dlq``) | everything |

Bridges and agents run in tenants' namespaces, so tenants can read their credentials: those users may neither
subscribe to anything but reply inboxes nor call JetStream's API, so no pod of a tenant reads another namespace's
events or logs. ``logs.<namespace>`` is no configured user: the server asks the auth callout
(:mod:`kubelambda.natscallout`), which admits a namespace's own credential and only to that namespace's log
subjects, so a tenant can neither write into another namespace's log nor read its acknowledgements. What is delivered to the platform's own connections (a worker's fetched events, a stream's
answers) goes to their inboxes under ``_KL_INBOX.<user>.``, out of reach of a subscription to ``_INBOX.>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

USERS = ("admin", "operator", "gateway", "worker", "bridge", "exporter", "logauth")
PLATFORM_INBOX = "_KL_INBOX"
"""Inbox prefix of the platform's own connections (``_KL_INBOX.<user>``): not ``_INBOX.``, which bridges and
agents may subscribe to."""
TENANT_INBOX = "_INBOX.>"
LOG_USER_PREFIX = "logs."
"""Log shippers log in as ``logs.<namespace>``: no such user is configured, the auth callout decides
(:mod:`kubelambda.natscallout`)."""
CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
ISSUER_ENV = "KL_NATS_CALLOUT_ISSUER"
"""In the chart's nats.conf, replaced with the callout issuer's public key by its init container."""
PASSWORD_ENV = "KL_NATS_{user}_PASSWORD"
"""The environment variable the chart's NATS server (and each component) reads a user's password from."""

_SERVER = ["$JS.>", "$JSC.>", "$KV.>", "$O.>", "$SYS.>", "$NRG.>", "$MQTT.>"]
_INBOXES = ["_INBOX.>", "_R_.>", f"{PLATFORM_INBOX}.>"]
_STREAMS = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"]
EXPORT_CONSUMER = "kubelambda-otlp"  # kubelambda.logexport.CONSUMER
_EXPORTER = [
    "$JS.API.STREAM.NAMES",
    f"$JS.API.CONSUMER.INFO.*.{EXPORT_CONSUMER}",
    f"$JS.API.CONSUMER.CREATE.*.{EXPORT_CONSUMER}",
    f"$JS.API.CONSUMER.CREATE.*.{EXPORT_CONSUMER}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.*.{EXPORT_CONSUMER}",
    f"$JS.API.CONSUMER.MSG.NEXT.*.{EXPORT_CONSUMER}",
    f"$JS.ACK.*.{EXPORT_CONSUMER}.>",
]
_WORKER_DENY = [
    "$SYS.>",
    "$KV.>",
    "$O.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "kubelambda.logs.>",
    *_INBOXES,
]


def inbox_prefix(user: str) -> str:
    return f"{PLATFORM_INBOX}.{user}"


def permissions(user: str) -> dict[str, Any] | None:
    """What ``user`` may publish and subscribe, as nats-server's ``permissions`` block (None: everything)."""
    own = [f"{inbox_prefix(user)}.>"]
    if user == "admin":
        return None
    if user == "operator":
        return {"publish": {"allow": _STREAMS}, "subscribe": {"allow": own}}
    if user in ("gateway", "worker"):
        return {"publish": {"allow": [">"], "deny": _WORKER_DENY}, "subscribe": {"allow": own}}
    if user == "bridge":
        return {
            "publish": {"allow": [">"], "deny": [*_SERVER, *_INBOXES, "kubelambda.>"]},
            "subscribe": {"allow": [TENANT_INBOX]},
        }
    if user == "exporter":
        return {"publish": {"allow": _EXPORTER}, "subscribe": {"allow": own}}
    if user == "logauth":
        return {"publish": {"allow": ["$SYS._INBOX.>"]}, "subscribe": {"allow": [CALLOUT_SUBJECT, *own]}}
    raise ValueError(f"unknown NATS user {user!r}; known: {', '.join(USERS)}")


def authorization(passwords: Mapping[str, str] | None = None, issuer: str | None = None) -> str:
    """nats-server's ``authorization`` block for every user of :data:`USERS`: with ``passwords`` (user →
    password) written in; without, each read from the server's environment (:data:`PASSWORD_ENV`, the chart).
    Every other login goes to the auth callout (log shippers' ``logs.<namespace>``), whose answers ``issuer``
    (an account public nkey) signs; without, ``$KL_NATS_CALLOUT_ISSUER``, which the chart's NATS init container
    replaces (``python -m kubelambda.natscallout``)."""
    lines = ["authorization {", "  timeout: 5", "  users = ["]
    for user in USERS:
        if passwords is not None:
            password = json.dumps(passwords[user])
        else:
            password = "$" + PASSWORD_ENV.format(user=user.upper())
        entry = f"    {{user: {json.dumps(user)}, password: {password}"
        perms = permissions(user)
        if perms is not None:
            entry += f", permissions: {json.dumps(perms)}"
        lines.append(entry + "}")
    lines += ["  ]", "  auth_callout {", f"    issuer: {json.dumps(issuer) if issuer else '$' + ISSUER_ENV}"]
    lines += [f"    auth_users: {json.dumps(list(USERS))}", "  }", "}"]
    return "\n".join(lines) + "\n"


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_hex(24) for user in USERS}


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (one server or a comma-separated list) with ``user:password@`` in every server's address."""
    out = []
    for server in (u.strip() for u in url.split(",") if u.strip()):
        parts = urlsplit(server)
        host = parts.netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def without_credentials(url: str) -> str:
    """``url`` (one server or a comma-separated list) with no ``user:password@``."""
    out = []
    for server in (u.strip() for u in url.split(",") if u.strip()):
        parts = urlsplit(server)
        out.append(urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, "")))
    return ",".join(out)


def redacted(url: str | None) -> str:
    """``url`` without passwords, for logs and messages."""
    if not url:
        return str(url)
    out = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.password is None:
            out.append(server.strip())
            continue
        host = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, "", "")))
    return ",".join(out)


def user_of(url: str) -> str | None:
    """The user a NATS URL names (its first server's), if any."""
    first = url.split(",", 1)[0].strip()
    return urlsplit(first).username or None


def connect_options(url: str) -> dict[str, Any]:
    """nats-py ``connect`` options of a platform connection to ``url``: its inbox under ``_KL_INBOX.<user>``."""
    return {"inbox_prefix": inbox_prefix(user_of(url) or "anonymous")}


def log_user(namespace: str) -> str:
    return LOG_USER_PREFIX + namespace


def log_password(key: str, namespace: str, issued: int) -> str:
    """The password of ``namespace``'s log shippers, for a holder made at ``issued`` (Unix seconds)."""
    mac = hmac.new(key.encode(), f"logs:{namespace}:{issued}".encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def log_url(url: str, key: str, namespace: str, issued: int) -> str:
    """``url`` (the log store's, any user in it replaced) with ``namespace``'s log credentials."""
    return with_credentials(url, log_user(namespace), log_password(key, namespace, issued))


def log_inbox(namespace: str) -> str:
    """The inbox prefix a log shipper of ``namespace`` subscribes under (its acknowledgements)."""
    return f"_INBOX.{namespace}"


def log_permissions(namespace: str) -> dict[str, Any]:
    return {
        "pub": {"allow": [f"kubelambda.logs.{namespace}.>"]},
        "sub": {"allow": [f"{log_inbox(namespace)}.>"]},
    }


def unix_seconds(timestamp: str) -> int:
    """A Kubernetes ``creationTimestamp`` (``2026-01-02T03:04:05Z``) in Unix seconds."""
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


if __name__ == "__main__":  # the chart's files/nats-authorization.conf: make nats-authorization
    print(authorization(), end="")
