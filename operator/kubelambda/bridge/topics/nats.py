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
import json
import logging
import time
import uuid
from typing import Any

import nats
from aiohttp import web

from kubelambda import metrics
from kubelambda.api.v1alpha1.trigger import TopicSource
from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.topics._sns import body_matches, matches, message_text, parse_types, sns_event

log = logging.getLogger("kubelambda.bridge.topics")
RETRY_MAX_SECONDS = 30.0
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


class NatsTopic:
    """``spec.topic.nats``: a subscription to a NATS subject."""

    def __init__(self, ctx: BridgeContext) -> None:
        topic = ctx.trigger.spec.topic
        if topic is None or topic.nats is None:
            raise ValueError(f"Trigger {ctx.namespace}/{ctx.name} has no topic.nats block")
        self.ctx = ctx
        self.topic: TopicSource = topic
        self.spec = topic.nats
        self.slots = asyncio.Semaphore(topic.max_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.subscription_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubelambda:{ctx.namespace}/{ctx.name}"))

    def routes(self) -> list[web.RouteDef]:
        return []

    def topic_arn(self, subject: str) -> str:
        return f"arn:kubelambda:nats:{self.ctx.region}:{self.ctx.namespace}:{subject}"

    def wanted(self, message: str, encoded: bool, attributes: dict[str, Any]) -> bool:
        policy = self.topic.filter_policy
        if policy is None:
            return True
        if self.topic.filter_policy_scope == "MessageBody":
            if encoded:
                return False
            try:
                body = json.loads(message)
            except ValueError:
                return False
            return body_matches(policy, body)
        return matches(policy, attributes)

    async def on_message(self, msg: Any) -> None:
        received = time.time()
        attributes, subject, message_id = attributes_of(msg.headers)
        message, encoded = message_text(msg.data or b"")
        if encoded:
            attributes["Kubelambda-Message-Encoding"] = {"Type": "String", "Value": "base64"}
        metrics.BRIDGE_RECORDS_RECEIVED.inc()
        if not self.wanted(message, encoded, attributes):
            metrics.BRIDGE_DISCARDED.labels("filtered").inc()
            return
        event = sns_event(
            message=message,
            message_id=message_id or str(uuid.uuid4()),
            topic_arn=self.topic_arn(msg.subject),
            subscription_arn=f"{self.topic_arn(msg.subject)}:{self.subscription_id}",
            subject=subject,
            attributes=attributes,
            timestamp=received,
        )
        await self.slots.acquire()
        task = asyncio.create_task(self.deliver(event))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def deliver(self, event: dict[str, Any]) -> None:
        message_id = event["Records"][0]["Sns"]["MessageId"]
        key = f"topic:{self.ctx.namespace}/{self.ctx.name}:{message_id}"
        delay = 0.1
        while True:
            result = await self.ctx.invoker.invoke(event, asynchronous=True, idempotency_key=key)
            if result.ok:
                self.ctx.status.delivered()
                return
            if 400 <= result.status < 500 and result.status not in (404, 429):
                # The event itself is refused (too large, not JSON): retrying cannot help.
                log.error(
                    "The gateway refused message %s of Trigger %s/%s (status %d): %s",
                    message_id,
                    self.ctx.namespace,
                    self.ctx.name,
                    result.status,
                    result.payload[:300].decode(errors="replace"),
                )
                metrics.BRIDGE_DISCARDED.labels("refused").inc()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

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

    async def run(self) -> None:
        if not self.ctx.trigger.spec.enabled:
            log.info("Trigger %s/%s is disabled; not subscribing", self.ctx.namespace, self.ctx.name)
            await asyncio.Event().wait()
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
            if self.tasks:
                # Messages accepted from NATS but not yet by the gateway: a few seconds to hand them over.
                await asyncio.wait(set(self.tasks), timeout=5)
                for task in list(self.tasks):
                    task.cancel()


BRIDGE = NatsTopic
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
