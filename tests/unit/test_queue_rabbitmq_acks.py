"""The RabbitMQ bridge's acknowledgements: one ``multiple`` frame only when it settles exactly the batch's
deliveries, also while another batch's frames are still waiting for the connection's bounded write queue.

The channel here stands in for aiormq's, with RabbitMQ's rule for acks: a tag that is not outstanding (already
acknowledged, by its own frame or by an earlier ``multiple``) closes the channel with PRECONDITION_FAILED
("unknown delivery tag"), which a bench run hit before the rule below was kept."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge.queues._batch import Message
from kubelambda.bridge.queues._core import QueueSettings
from kubelambda.bridge.queues.rabbitmq import RabbitMQBroker


class Channel:
    """Outstanding deliveries as RabbitMQ keeps them; each frame first waits ``delay`` turns of the event loop for
    the write queue, as a put into aiormq's bounded queue may."""

    is_closed = False

    def __init__(self, tags: range) -> None:
        self.outstanding = set(tags)
        self.frames: list[tuple[str, int, bool]] = []
        self.delay: dict[int, int] = {}

    async def _frame(self, kind: str, tag: int, multiple: bool) -> None:
        for _ in range(self.delay.get(tag, 0)):
            await asyncio.sleep(0)
        if tag not in self.outstanding:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag} ({self.frames})")
        self.frames.append((kind, tag, multiple))
        if multiple:
            self.outstanding = {t for t in self.outstanding if t > tag}
        else:
            self.outstanding.discard(tag)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        await self._frame("ack", tag, multiple)

    async def basic_nack(
        self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        await self._frame("nack", tag, multiple)


def broker(channel: Channel) -> RabbitMQBroker:
    trigger = Trigger.model_validate(
        {"spec": {"function": "f", "queue": {"rabbitmq": {"url": "amqp://x:5672/", "queue": "q"}}}}
    )
    ctx: Any = SimpleNamespace(
        trigger=trigger, region="us-east-1", namespace="ns", name="t", bridge_id="ns/t/1"
    )
    made = RabbitMQBroker(ctx, QueueSettings())
    made.connection = made.channel = SimpleNamespace(is_closed=False)  # type: ignore[assignment]
    made.amqp = channel  # type: ignore[assignment]
    made.unsettled = set(channel.outstanding)
    return made


def batch(channel: Channel, tags: range) -> list[Message]:
    return [
        Message(message_id=str(t), body=b"", handle=SimpleNamespace(delivery_tag=t, channel=channel))
        for t in tags
    ]


async def test_a_batch_below_every_other_delivery_is_acknowledged_with_one_frame() -> None:
    channel = Channel(range(1, 31))
    queue = broker(channel)
    await queue.ack(batch(channel, range(1, 11)))
    assert channel.frames == [("ack", 10, True)]
    await queue.ack(batch(channel, range(21, 31)))  # 11..20 still out: one frame each
    assert channel.frames[1:] == [("ack", t, False) for t in range(21, 31)]
    await queue.ack(batch(channel, range(11, 21)))
    assert channel.frames[-1] == ("ack", 20, True)
    assert channel.outstanding == set()
    assert queue.unsettled == set()


@pytest.mark.parametrize("retrying", [False, True])
async def test_a_multiple_frame_never_covers_a_batch_whose_frames_wait_for_the_write_queue(
    retrying: bool,
) -> None:
    """B (2..3) writes one frame each (1 is still out) and its first waits for the queue; meanwhile A (1) and
    C (4..5) end: neither may send a ``multiple`` that covers B's tags before B's own frames."""
    channel = Channel(range(1, 6))
    queue = broker(channel)
    channel.delay = {2: 5}
    settle_b = queue.retry if retrying else queue.ack
    b = asyncio.create_task(settle_b(batch(channel, range(2, 4))))
    await asyncio.sleep(0)
    await queue.ack(batch(channel, range(1, 2)))
    await queue.ack(batch(channel, range(4, 6)))
    await b
    assert channel.outstanding == set()
    assert [
        t for kind, t, _ in channel.frames if kind == ("nack" if retrying else "ack") and t in (2, 3)
    ] == [2, 3]
    assert queue.unsettled == set()
