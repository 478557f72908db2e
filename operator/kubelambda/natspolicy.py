"""Which NATS subjects a tenant may name (``onSuccess``/``onFailure.nats``, a stream Trigger's ``onFailure.nats``):
checked where records are published, by the async worker and by the bridges (docs/security.md, "NATS").

Never a subject of the server's own APIs (``$JS.`` JetStream, ``$KV.``/``$O.`` stores, ``$SYS.`` system
account: every ``$`` subject), reply inboxes (``_INBOX.``, ``_R_.``), nor kubelambda's own (``kubelambda.``:
Event queues and dead letters). A record published on ``$JS.API.STREAM.PURGE.KUBELAMBDA_ASYNC`` would otherwise
purge every tenant's queued events.
"""

from __future__ import annotations

RESERVED_PREFIXES = ("$", "_INBOX.", "_R_.", "kubelambda.")


def subject_refusal(subject: str) -> str | None:
    """Why ``subject`` may not receive a tenant's records, or None when it may."""
    if not subject or any(c in subject for c in " \t\r\n*>"):
        return f"NATS subject {subject!r} is not a plain subject (no spaces or wildcards)"
    if any(token == "" for token in subject.split(".")):
        return f"NATS subject {subject!r} has an empty token"
    if subject.startswith("kubelambda."):
        return f"NATS subject {subject} is kubelambda's own"
    for prefix in RESERVED_PREFIXES:
        if subject.startswith(prefix):
            return f"NATS subject {subject} is reserved (prefix {prefix}): never a destination"
    return None
