"""What every topic source shares: a message that passes the filter policy becomes one Event invocation.

A broker module subclasses :class:`TopicBridge` with ``subscribe`` (connect and subscribe, handing each message
to :meth:`TopicBridge.handle`, until cancelled) and ``topic_arn``. The rest is here: the filter policy
(``MessageAttributes`` or ``MessageBody`` scope), Lambda's SNS event, up to ``maxConcurrency`` messages handed to
the gateway at once, and retries with back-off until the gateway accepts (the idempotency key, the message id,
makes a re-sent message one event); on stop, a few seconds to hand over what was accepted from the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from kubelambda import metrics
from kubelambda.api.v1alpha1.trigger import TopicSource
from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.topics._sns import body_matches, matches, message_text, sns_event

log = logging.getLogger("kubelambda.bridge.topics")
RETRY_MAX_SECONDS = 30.0
HANDOVER_SECONDS = 5.0


class TopicBridge:
    """A Trigger's ``topic`` block; ``broker`` names the field of the broker this class serves."""

    broker = ""

    def __init__(self, ctx: BridgeContext) -> None:
        topic = ctx.trigger.spec.topic
        spec = getattr(topic, self.broker, None) if topic is not None else None
        if topic is None or spec is None:
            raise ValueError(f"Trigger {ctx.namespace}/{ctx.name} has no topic.{self.broker} block")
        self.ctx = ctx
        self.topic: TopicSource = topic
        self.spec: Any = spec
        self.slots = asyncio.Semaphore(topic.max_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.subscription_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubelambda:{ctx.namespace}/{ctx.name}"))

    def routes(self) -> list[web.RouteDef]:
        return []

    def topic_arn(self, name: str) -> str:
        raise NotImplementedError

    async def subscribe(self) -> None:
        """Connects, subscribes and hands every message to :meth:`handle` until cancelled; reports
        ``SourceReachable`` (with "subscribed" in the message once subscribed)."""
        raise NotImplementedError

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

    async def handle(
        self,
        data: bytes,
        *,
        topic: str,
        attributes: dict[str, Any],
        subject: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """One message from the broker: filtered, shaped, handed to the gateway (waits for a free slot)."""
        received = time.time()
        message, encoded = message_text(data)
        if encoded:
            attributes["Kubelambda-Message-Encoding"] = {"Type": "String", "Value": "base64"}
        metrics.BRIDGE_RECORDS_RECEIVED.inc()
        if not self.wanted(message, encoded, attributes):
            metrics.BRIDGE_DISCARDED.labels("filtered").inc()
            return
        event = sns_event(
            message=message,
            message_id=message_id or str(uuid.uuid4()),
            topic_arn=self.topic_arn(topic),
            subscription_arn=f"{self.topic_arn(topic)}:{self.subscription_id}",
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

    async def run(self) -> None:
        if not self.ctx.trigger.spec.enabled:
            log.info("Trigger %s/%s is disabled; not subscribing", self.ctx.namespace, self.ctx.name)
            await asyncio.Event().wait()
        try:
            await self.subscribe()
        finally:
            self.stopping = True
            if self.tasks:
                # Messages accepted from the broker but not yet by the gateway: a few seconds to hand them over.
                await asyncio.wait(set(self.tasks), timeout=HANDOVER_SECONDS)
                for task in list(self.tasks):
                    task.cancel()
