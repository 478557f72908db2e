"""The per-namespace dead-letter streams: list the records, re-drive them as new Event invocations."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from kubelambda.asyncworker.queue import DLQ_PREFIX, EventQueue, QueuedEvent, dlq_stream


@dataclass(frozen=True)
class DeadLetter:
    sequence: int
    function: str
    reason: str
    record: dict[str, Any]


async def list_dead_letters(queue: EventQueue, namespace: str) -> list[DeadLetter]:
    """Every record in the namespace's dead-letter stream, oldest first ([] when there is no stream)."""
    stream = dlq_stream(namespace)
    try:
        info = await queue.js.stream_info(stream)
    except NotFoundError:
        return []
    found: list[DeadLetter] = []
    prefix = f"{DLQ_PREFIX}.{namespace}."
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await queue.js.get_msg(stream, seq)
        except NotFoundError:
            continue  # deleted by an earlier re-drive
        reason = (msg.headers or {}).get("Kubelambda-Dead-Letter-Reason", "")
        record = json.loads(msg.data or b"null")
        found.append(DeadLetter(seq, (msg.subject or "").removeprefix(prefix), reason, record))
    return found


async def redrive(queue: EventQueue, namespace: str, *, function: str | None = None) -> int:
    """Queues each record's ``requestPayload`` again as a new Event invocation (a new request id, as a
    re-sent event is on Lambda) and deletes the record once JetStream has stored the event."""
    count = 0
    for letter in await list_dead_letters(queue, namespace):
        if function is not None and letter.function != function:
            continue
        await queue.publish(
            QueuedEvent(
                namespace=namespace,
                function=letter.function,
                request_id=str(uuid.uuid4()),
                payload=json.dumps(letter.record.get("requestPayload")).encode(),
                enqueued_at=time.time(),
            )
        )
        await queue.js.delete_msg(dlq_stream(namespace), letter.sequence)
        count += 1
    return count
