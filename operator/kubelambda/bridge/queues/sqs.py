"""An SQS-compatible queue (aiobotocore) as Lambda's SQS event source (``eventSource: aws:sqs``).

- ``ReceiveMessage`` long polls (up to 10 messages a call, several calls at once for larger batches) with every
  system and message attribute; records carry SQS's own ``messageId``, ``receiptHandle``, ``md5OfBody`` and
  attributes, and the queue's ``QueueArn`` as ``eventSourceARN``.
- Success: ``DeleteMessageBatch``. Function failure: nothing; the message becomes visible again when the
  queue's visibility timeout expires and the server applies the queue's ``RedrivePolicy`` (dead-letter queue
  after ``maxReceiveCount`` receives), exactly as with Lambda.
- A throttled batch is kept with ``ChangeMessageVisibilityBatch`` while the bridge backs off, so a throttle
  does not use up a receive.
- ``lag`` is ``ApproximateNumberOfMessages``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import aiobotocore.session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.queues._batch import Message
from kubelambda.bridge.queues._core import QueueBridge, QueueSettings

log = logging.getLogger("kubelambda.bridge.queues")
MAX_RECEIVE = 10
MAX_POLLERS = 10  # ReceiveMessage calls at once: a batch of 100 in one round


def message_attributes(raw: dict[str, Any] | None) -> dict[str, Any]:
    """SQS API attributes (``StringValue``, ``BinaryValue`` as bytes) in the event's lower-camel shape."""
    out: dict[str, Any] = {}
    for name, value in sorted((raw or {}).items()):
        binary = value.get("BinaryValue")
        out[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if binary is not None else None,
            "stringListValues": list(value.get("StringListValues") or []),
            "binaryListValues": [base64.b64encode(b).decode() for b in value.get("BinaryListValues") or []],
            "dataType": value.get("DataType", "String"),
        }
    return out


class SqsBroker:
    event_source = "aws:sqs"
    lease_renew_seconds: float | None = None  # the queue's own visibility timeout applies, as with Lambda

    def __init__(self, ctx: BridgeContext, settings: QueueSettings) -> None:
        spec = ctx.trigger.spec.queue
        assert spec is not None
        assert spec.sqs is not None
        self.ctx = ctx
        self.spec = spec.sqs
        self.settings = settings
        self.event_source_arn = ""
        self.client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def connect(self) -> None:
        key, secret = "kubelambda", "kubelambda"
        if self.spec.credentials_secret:
            data = await self.ctx.secrets.get(self.spec.credentials_secret)
            key, secret = data.get("AWS_ACCESS_KEY_ID", key), data.get("AWS_SECRET_ACCESS_KEY", secret)
        self._stack = contextlib.AsyncExitStack()
        session = aiobotocore.session.get_session()
        self.client = await self._stack.enter_async_context(
            session.create_client(
                "sqs",
                endpoint_url=self.spec.endpoint,
                region_name=self.spec.region,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                config=Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 2},
                    max_pool_connections=MAX_POLLERS + 10,
                ),
            )
        )
        answer = await self.client.get_queue_attributes(
            QueueUrl=self.spec.queue_url, AttributeNames=["QueueArn"]
        )
        self.event_source_arn = answer["Attributes"]["QueueArn"]

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self.client = None

    async def _receive(self, count: int, wait: int) -> list[dict[str, Any]]:
        answer = await self.client.receive_message(
            QueueUrl=self.spec.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages") or [])

    async def fetch(self, max_count: int, *, wait_seconds: float) -> list[Message]:
        if self.client is None:
            raise ConnectionError("not connected to SQS")
        wait = max(0, min(20, math.ceil(wait_seconds)))
        pollers = min(MAX_POLLERS, math.ceil(max_count / MAX_RECEIVE))
        sizes = [min(MAX_RECEIVE, max_count - i * MAX_RECEIVE) for i in range(pollers)]
        answers = await asyncio.gather(*(self._receive(n, wait) for n in sizes))
        now = int(time.time() * 1000)
        return [self._message(m, now) for answer in answers for m in answer]

    def _message(self, m: dict[str, Any], now: int) -> Message:
        attrs = m.get("Attributes") or {}
        return Message(
            message_id=m["MessageId"],
            body=m.get("Body", "").encode(),
            receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
            sent_timestamp_ms=int(attrs.get("SentTimestamp", now)),
            first_receive_timestamp_ms=int(attrs.get("ApproximateFirstReceiveTimestamp", now)),
            sender_id=attrs.get("SenderId", ""),
            message_attributes=message_attributes(m.get("MessageAttributes")),
            receipt_handle=m["ReceiptHandle"],
            md5_of_body=m.get("MD5OfBody"),
            handle=m["ReceiptHandle"],
        )

    async def _batched(self, call: Any, messages: Sequence[Message], **extra: Any) -> None:
        chunks = [messages[i : i + 10] for i in range(0, len(messages), 10)]

        async def one(chunk: Sequence[Message]) -> None:
            entries = [{"Id": str(n), "ReceiptHandle": m.handle, **extra} for n, m in enumerate(chunk)]
            answer = await call(QueueUrl=self.spec.queue_url, Entries=entries)
            for failed in answer.get("Failed") or []:
                log.warning(
                    "SQS refused %s for a message of Trigger %s: %s", call.__name__, self.ctx.name, failed
                )

        await asyncio.gather(*(one(c) for c in chunks))

    async def ack(self, messages: Sequence[Message]) -> None:
        await self._batched(self.client.delete_message_batch, messages)

    async def retry(self, messages: Sequence[Message]) -> None:
        """Nothing to do: the message becomes visible again after the queue's visibility timeout."""

    async def hold(self, messages: Sequence[Message], *, seconds: float) -> None:
        await self._batched(
            self.client.change_message_visibility_batch,
            messages,
            VisibilityTimeout=int(min(43200, math.ceil(seconds))),
        )

    async def depth(self) -> int | None:
        if self.client is None:
            return None
        answer = await self.client.get_queue_attributes(
            QueueUrl=self.spec.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(answer["Attributes"]["ApproximateNumberOfMessages"])


class SqsQueue(QueueBridge):
    """Trigger source ``queue.sqs``."""

    def make_broker(self, ctx: BridgeContext, settings: QueueSettings) -> SqsBroker:
        return SqsBroker(ctx, settings)


BRIDGE = SqsQueue
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
