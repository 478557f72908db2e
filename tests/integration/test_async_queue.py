"""The Event queue's publish against a real nats-server: acknowledged stores, refusals, many in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import APIError, NoStreamResponseError

from kubelambda.asyncworker.queue import EventQueue, QueuedEvent
from kubelambda.devcluster.servers import NatsServer

pytestmark = pytest.mark.integration
STREAM = "KUBELAMBDA_ASYNC"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with NatsServer(tmp_path / "nats") as server:
        yield server


def event(i: int, *, function: str = "fn", invoke_count: int = 0) -> QueuedEvent:
    return QueuedEvent(
        namespace="ns",
        function=function,
        request_id=f"req-{i}",
        payload=b'{"i": %d}' % i,
        enqueued_at=1000.0 + i,
        invoke_count=invoke_count,
    )


async def test_concurrent_publishes_each_return_once_stored(nats_server: NatsServer) -> None:
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    try:
        await asyncio.gather(*(queue.publish(event(i)) for i in range(2000)))
        info = await queue.js.stream_info(STREAM)
        assert info.state.messages == 2000
        stored = await queue.js.get_msg(STREAM, 1)
        assert QueuedEvent.from_message(stored.headers, stored.data or b"") == event(0)
        # The same request id and invoke count again is one message (Nats-Msg-Id, duplicate window).
        await queue.publish(event(0))
        assert (await queue.js.stream_info(STREAM)).state.messages == 2000
        assert queue._acks == {}  # nothing left waiting
    finally:
        await queue.close()


async def test_a_publish_no_stream_takes_or_the_wrong_stream_takes_is_refused(
    nats_server: NatsServer,
) -> None:
    queue = await EventQueue.connect(nats_server.url, stream=STREAM)
    other = EventQueue(await nats.connect(nats_server.url), stream="ELSEWHERE")
    try:
        # The subject belongs to KUBELAMBDA_ASYNC, the publisher expects ELSEWHERE: JetStream refuses.
        with pytest.raises(APIError):
            await other.publish(event(1))
        await queue.js.delete_stream(STREAM)
        with pytest.raises(NoStreamResponseError):
            await queue.publish(event(2))
    finally:
        await other.close()
        await queue.close()
