"""A NATS subject as an SNS topic: every message that passes the filter policy becomes one Event invocation.

The bridge subscribes to ``spec.topic.nats.subject`` (core NATS, no queue group: several Triggers on one subject
each get every message, SNS's fan-out) and, per message that passes the filter policy, invokes the function
asynchronously through the gateway with Lambda's SNS event: from then on the Function's async settings apply
(retries, maximum event age, destinations), as for an SNS subscription. A gateway that refuses (throttle, not
ready, unreachable) is retried with back-off until it accepts; the idempotency key (the message id) makes a
re-sent message one event.

A message: ``Message`` is the payload (UTF-8; otherwise base64, with the attribute
``Kubelambda-Message-Encoding: base64``); header ``Sns-Subject`` is ``Subject``; header ``Sns-Message-Id`` (else
``Nats-Msg-Id``, else a new UUID) is ``MessageId``; every other header (but ``Nats-*`` and ``Sns-*``) is a message
attribute of type ``String``, or of the type header ``Sns-Attribute-Types`` gives it (``price=Number,tags=String.Array``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats

from kubelambda.bridge.topics._core import RETRY_MAX_SECONDS, TopicBridge, log
from kubelambda.bridge.topics._sns import parse_types

RESERVED_PREFIXES = ("nats-", "sns-")


def attributes_of(headers: dict[str, str] | None) -> tuple[dict[str, Any], str | None, str | None]:
    """``(MessageAttributes, Subject, MessageId)`` from a message's headers (pure)."""
    headers = headers or {}
    types = parse_types(next((v for k, v in headers.items() if k.lower() == "sns-attribute-types"), None))
    attrs: dict[str, Any] = {}
    subject = message_id = None
    for name, value in headers.items():
        low = name.lower()
        if low == "sns-subject":
            subject = value
        elif low == "sns-message-id" or (low == "nats-msg-id" and message_id is None):
            message_id = value
        elif not low.startswith(RESERVED_PREFIXES):
            attrs[name] = {"Type": types.get(name, "String"), "Value": value}
    return attrs, subject, message_id


class NatsTopic(TopicBridge):
    """``spec.topic.nats``: a subscription to a NATS subject."""

    broker = "nats"

    def topic_arn(self, name: str) -> str:
        return f"arn:kubelambda:nats:{self.ctx.region}:{self.ctx.namespace}:{name}"

    async def on_message(self, msg: Any) -> None:
        attributes, subject, message_id = attributes_of(msg.headers)
        await self.handle(
            msg.data or b"", topic=msg.subject, attributes=attributes, subject=subject, message_id=message_id
        )

    async def _connect(self) -> Any:
        options: dict[str, Any] = {}
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            if "token" in secret:
                options["token"] = secret["token"]
            if "username" in secret:
                options["user"] = secret["username"]
                options["password"] = secret.get("password", "")

        async def disconnected() -> None:
            if not self.stopping:
                self.ctx.status.source_reachable(False, f"disconnected from {self.spec.url}")

        async def reconnected() -> None:
            self.ctx.status.source_reachable(True)

        return await nats.connect(
            self.spec.url,
            max_reconnect_attempts=-1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            **options,
        )

    async def subscribe(self) -> None:
        delay = 0.5
        while True:
            try:
                nc = await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.status.source_reachable(False, f"{self.spec.url}: {e or type(e).__name__}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        try:
            await nc.subscribe(self.spec.subject, cb=self.on_message)
            await nc.flush(timeout=10)
            self.ctx.status.source_reachable(True, f"subscribed to {self.spec.subject}")
            log.info("Subscribed Trigger %s/%s to %s", self.ctx.namespace, self.ctx.name, self.spec.subject)
            await asyncio.Event().wait()
        finally:
            self.stopping = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)


BRIDGE = NatsTopic
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
