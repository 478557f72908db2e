"""The platform NATS's users: one per component, each allowed only the subjects it needs (docs/security.md, "NATS").

| user | publishes | subscribes |
|---|---|---|
| ``operator`` | JetStream's stream info/create/update (each namespace's log stream) | its own inbox |
| ``gateway`` | as ``worker`` (it runs the Event worker unless ``async.worker.separate``) | its own inbox |
| ``worker`` | Event queue and dead letters, JetStream's API (its consumer, acks), tenants' ``nats`` destinations; never ``$SYS``/``$KV``/``$O``, a stream's deletion or purge, logs, nor another's inbox | its own inbox |
| ``bridge`` | tenants' subjects only (``onFailure.nats``): no ``$`` subject, nothing of ``kubelambda.``, no inbox | ``_INBOX.>`` (publish acknowledgements) |
| ``agent`` | ``kubelambda.logs.>`` (log shipping: agents, and bridges' own lines) | ``_INBOX.>`` (the store's acknowledgements) |
| ``exporter`` | JetStream's stream names, its durable consumer ``kubelambda-otlp`` (info, create, next, acks) | its own inbox |
| ``admin`` | everything (the CLI: ``kubelambda logs``, ``kubelambda dlq``) | everything |

Bridges and agents run in tenants' namespaces, so tenants can read their credentials: those users may neither
subscribe to anything but reply inboxes nor call JetStream's API, so no pod of a tenant reads another namespace's
events or logs. What is delivered to the platform's own connections (a worker's fetched events, a stream's
answers) goes to their inboxes under ``_KL_INBOX.<user>.``, out of reach of a subscription to ``_INBOX.>``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

USERS = ("admin", "operator", "gateway", "worker", "bridge", "agent", "exporter")
PLATFORM_INBOX = "_KL_INBOX"
"""Inbox prefix of the platform's own connections (``_KL_INBOX.<user>``): not ``_INBOX.``, which bridges and
agents may subscribe to."""
TENANT_INBOX = "_INBOX.>"
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
    if user == "agent":
        return {"publish": {"allow": ["kubelambda.logs.>"]}, "subscribe": {"allow": [TENANT_INBOX]}}
    raise ValueError(f"unknown NATS user {user!r}; known: {', '.join(USERS)}")


def authorization(passwords: Mapping[str, str] | None = None) -> str:
    """nats-server's ``authorization`` block for every user of :data:`USERS`: with ``passwords`` (user →
    password) written in; without, each read from the server's environment (:data:`PASSWORD_ENV`, the chart)."""
    lines = ["authorization {", "  users = ["]
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
    lines += ["  ]", "}"]
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


def servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


if __name__ == "__main__":  # the chart's files/nats-authorization.conf: make nats-authorization
    print(authorization(), end="")
