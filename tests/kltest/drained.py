"""A positive signal that no more async invocations of a function can happen: its subject in the gateway's
JetStream stream is empty.

The stream has work-queue retention (a message is gone once acknowledged), and the worker acknowledges an event
only after the function answered and its record went to the destination; a retry or a requeue is a message on
the same subject until then. So once every event the gateway accepted for a function is gone from the stream,
every invocation and every record of them has happened: counting records then proves absence without waiting
for silence.
"""

from __future__ import annotations

import nats

from kltest.wait import wait_for
from kubelambda.asyncworker.queue import event_subject
from kubelambda.gateway.app import Gateway


async def async_queue_drained(
    gateway: Gateway, namespace: str, function: str, *, timeout: float = 60
) -> None:
    """Waits until the gateway's async stream holds no message of ``namespace``/``function``."""
    settings = gateway.settings
    assert settings.nats_url, "the gateway runs without NATS: no async stream to look at"
    nc = await nats.connect(settings.nats_url)
    try:
        js, subject = nc.jetstream(), event_subject(namespace, function)
        await wait_for(
            lambda: js.stream_info(settings.async_stream, subjects_filter=subject),
            lambda info: not (info.state.subjects or {}).get(subject),
            what=f"no message left on {subject} in {settings.async_stream}",
            timeout=timeout,
        )
    finally:
        await nc.close()
