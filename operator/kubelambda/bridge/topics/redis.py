"""A Redis Pub/Sub channel as an SNS topic: every message that passes the filter policy becomes one Event invocation.

The bridge subscribes to ``spec.topic.redis.channel`` (``SUBSCRIBE``, or ``PSUBSCRIBE`` with ``pattern: true``);
every subscriber gets every message, so several Triggers on one channel each get every message (SNS's fan-out).
Redis Pub/Sub keeps nothing: a message published while the bridge is not subscribed (starting, reconnecting) is
not delivered, as for a core NATS subject.

A message: ``Message`` is the payload (UTF-8; otherwise base64, with the attribute
``Kubelambda-Message-Encoding: base64``); Redis messages carry no headers, so there are no message attributes
(filter on the body with ``filterPolicyScope: MessageBody``), no ``Subject``, and ``MessageId`` is a new UUID.
``TopicArn`` is ``arn:kubelambda:redis:<region>:<namespace>:<channel>`` (the channel the message came on).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from kubelambda.bridge.topics._core import RETRY_MAX_SECONDS, TopicBridge, log


class RedisTopic(TopicBridge):
    """``spec.topic.redis``: a subscription to a Redis Pub/Sub channel."""

    broker = "redis"

    def topic_arn(self, name: str) -> str:
        return f"arn:kubelambda:redis:{self.ctx.region}:{self.ctx.namespace}:{name}"

    async def _client(self) -> aioredis.Redis:
        options: dict[str, Any] = {}
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            options = {k: secret[k] for k in ("username", "password") if k in secret}
        return aioredis.from_url(self.spec.url, socket_connect_timeout=5, health_check_interval=10, **options)

    async def subscribe(self) -> None:
        delay = 0.5
        while True:
            client = await self._client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                if self.spec.pattern:
                    await pubsub.psubscribe(self.spec.channel)
                else:
                    await pubsub.subscribe(self.spec.channel)
                self.ctx.status.source_reachable(True, f"subscribed to {self.spec.channel}")
                log.info(
                    "Subscribed Trigger %s/%s to %s", self.ctx.namespace, self.ctx.name, self.spec.channel
                )
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") not in ("message", "pmessage"):
                        continue
                    channel = message["channel"]
                    await self.handle(
                        message["data"] or b"",
                        topic=channel.decode(errors="replace")
                        if isinstance(channel, bytes)
                        else str(channel),
                        attributes={},
                    )
                raise ConnectionError("the subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.status.source_reachable(False, f"{self.spec.url}: {e or type(e).__name__}")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 5)  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 5)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


BRIDGE = RedisTopic
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
