"""Queue and topic destinations: one record becomes one message, with the queue sources' own client libraries.

Used by the async worker (``spec.async.onSuccess`` / ``onFailure``) and by stream bridges (``onFailure``).
Connections are opened on first use and kept (one per URL and credentials Secret); :meth:`Senders.close` closes
them. A target's ``credentialsSecret`` (a stream bridge's ``onFailure`` only: the bridge's Role allows the Secrets
its Trigger names) supplies the credentials instead of the URL: RabbitMQ ``username``/``password``, Redis
``password`` (and ``username``), NATS ``token`` or ``username``/``password``, SQS ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``.

| destination | how | deduplication |
|---|---|---|
| ``queue.sqs`` | ``SendMessage`` (aiobotocore), signed with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` of the sender's environment, else dummy keys | FIFO queues: ``MessageDeduplicationId`` = the record's key |
| ``queue.rabbitmq`` | default exchange, routing key the queue, persistent, publisher confirms (aio-pika) | ``message_id`` = the key (for consumers) |
| ``queue.redis`` | ``XADD key * data <record>`` (redis-py) | none |
| ``queue.nats`` | JetStream publish, acknowledged by the stream that captures the subject | ``Nats-Msg-Id`` = the key (JetStream's duplicate window) |
| ``topic.nats`` | core NATS publish + flush, headers ``Sns-Message-Id`` and ``Sns-Subject`` | none (subscribers present at that moment get it) |
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import yarl

from kubelambda.api.v1alpha1._common import QueueTarget, TopicTarget

SEND_TIMEOUT_SECONDS = 10.0


class Senders:
    """Open connections to queue and topic destinations, by URL."""

    def __init__(
        self,
        *,
        platform_nats: Any = None,
        secrets: Callable[[str], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        self.platform_nats = platform_nats
        """A connected NATS client used when a NATS destination names no URL (the platform's NATS)."""
        self.secrets = secrets
        """Reads a Secret of the namespace by name (a bridge's); None: ``credentialsSecret`` is refused."""
        self._conns: dict[tuple[str, str], Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def send(
        self, target: QueueTarget | TopicTarget, body: bytes, *, key: str, subject: str = ""
    ) -> str:
        """Sends ``body``; returns the kind (``queue.sqs``, ..., ``topic.nats``); raises when not accepted."""
        return await asyncio.wait_for(
            self._send(target, body, key=key, subject=subject), SEND_TIMEOUT_SECONDS
        )

    async def _credentials(self, target: QueueTarget | TopicTarget) -> dict[str, str]:
        name = target.credentials()
        if name is None:
            return {}
        if self.secrets is None:
            raise ValueError(
                f"credentialsSecret {name}: this sender reads no Secrets (only a Trigger's onFailure may name one)"
            )
        return await self.secrets(name)

    async def _send(self, target: QueueTarget | TopicTarget, body: bytes, *, key: str, subject: str) -> str:
        creds = await self._credentials(target)
        secret = target.credentials() or ""
        if isinstance(target, TopicTarget):
            assert target.nats is not None
            nc = await self._nats(target.nats.url, creds, secret)
            headers = {"Sns-Message-Id": key}
            if subject:
                headers["Sns-Subject"] = subject
            await nc.publish(target.nats.subject, body, headers=headers)
            await nc.flush(timeout=5)
            return "topic.nats"
        if target.sqs is not None:
            sqs = target.sqs
            client = await self._sqs(sqs.endpoint or _origin(sqs.queue_url), sqs.region, creds, secret)
            extra: dict[str, str] = {}
            if sqs.queue_url.endswith(".fifo"):
                extra = {"MessageDeduplicationId": key[:128], "MessageGroupId": "kubelambda"}
            await client.send_message(QueueUrl=sqs.queue_url, MessageBody=body.decode(), **extra)
            return "queue.sqs"
        if target.rabbitmq is not None:
            import aio_pika

            channel = await self._rabbit(target.rabbitmq.url, creds, secret)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=key,
                ),
                routing_key=target.rabbitmq.queue,
                mandatory=True,  # a queue that does not exist is an error, not a silent drop
            )
            return "queue.rabbitmq"
        if target.redis is not None:
            conn = await self._redis(target.redis.url, creds, secret)
            await conn.xadd(target.redis.key, {"data": body})
            return "queue.redis"
        assert target.nats is not None
        nc = await self._nats(target.nats.url, creds, secret)
        await nc.jetstream().publish(target.nats.subject, body, headers={"Nats-Msg-Id": key}, timeout=5)
        return "queue.nats"

    async def _cached(self, kind: str, url: str, make: Any) -> Any:
        async with self._lock:
            conn = self._conns.get((kind, url))
            if conn is None:
                conn = await make()
                self._conns[(kind, url)] = conn
            return conn

    async def _nats(self, url: str | None, creds: dict[str, str], secret: str) -> Any:
        if url is None:
            if self.platform_nats is None:
                raise ValueError(
                    "a NATS destination without url needs the platform's NATS, which this sender has not"
                )
            return self.platform_nats

        async def make() -> Any:
            import nats

            options: dict[str, Any] = {}
            if "token" in creds:
                options["token"] = creds["token"]
            elif "password" in creds:
                options.update(user=creds.get("username", ""), password=creds["password"])
            nc = await nats.connect(url, max_reconnect_attempts=-1, **options)
            self._stack.push_async_callback(nc.close)
            return nc

        return await self._cached("nats", f"{url}|{secret}", make)

    async def _redis(self, url: str, creds: dict[str, str], secret: str) -> Any:
        async def make() -> Any:
            import redis.asyncio as aioredis

            conn = aioredis.Redis.from_url(
                url,
                socket_timeout=SEND_TIMEOUT_SECONDS,
                username=creds.get("username"),
                password=creds.get("password"),
            )
            self._stack.push_async_callback(conn.aclose)
            return conn

        return await self._cached("redis", f"{url}|{secret}", make)

    async def _rabbit(self, url: str, creds: dict[str, str], secret: str) -> Any:
        async def make() -> Any:
            import aio_pika

            address = yarl.URL(url)
            if creds:
                address = address.with_user(creds.get("username", address.user)).with_password(
                    creds.get("password", address.password)
                )
            conn = await aio_pika.connect_robust(address)
            self._stack.push_async_callback(conn.close)
            return await conn.channel(publisher_confirms=True)

        return await self._cached("rabbitmq", f"{url}|{secret}", make)

    async def _sqs(self, endpoint: str, region: str, creds: dict[str, str], secret: str) -> Any:
        async def make() -> Any:
            from aiobotocore.session import get_session  # type: ignore[import-untyped]

            client = get_session().create_client(
                "sqs",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID")
                or os.environ.get("AWS_ACCESS_KEY_ID", "kubelambda"),
                aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY")
                or os.environ.get("AWS_SECRET_ACCESS_KEY", "kubelambda"),
            )
            return await self._stack.enter_async_context(client)

        return await self._cached("sqs", f"{endpoint}|{region}|{secret}", make)

    async def close(self) -> None:
        self._conns.clear()
        with contextlib.suppress(Exception):
            await self._stack.aclose()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
