"""Issue 17, item 5 (the subject policy): a tenant's NATS destination never reaches the server's APIs.

The attack: a Function's ``onSuccess.nats`` names a JetStream API subject, ``$JS.API.STREAM.PURGE.<stream>``, so
that the async worker's publish of each record purges a stream of someone else's (the platform's Event queue,
say). Expected: the worker refuses the subject (the record goes to the namespace's dead letters, saying why) and
the stream keeps its messages; a destination on a plain subject still receives its record.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from kltest import wait_for
from kltest.platform import Env, lambda_client, python_function
from kubelambda.asyncworker.dlq import DeadLetter, list_dead_letters
from kubelambda.asyncworker.queue import EventQueue

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
HANDLER = "def handler(event, context):\n    return event\n"


async def invoke_event(url: str, name: str, payload: bytes) -> str:
    answer = await asyncio.to_thread(
        lambda_client(url).invoke, FunctionName=name, InvocationType="Event", Payload=payload
    )
    assert answer["StatusCode"] == 202, answer
    return str(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])


async def dead_letters(nats_url: str, namespace: str) -> list[DeadLetter]:
    queue = await EventQueue.connect(nats_url, stream="KUBELAMBDA_ASYNC")
    try:
        return await list_dead_letters(queue, namespace)
    finally:
        await queue.close()


async def test_a_destination_on_a_jetstream_api_subject_is_refused(env: Env) -> None:
    witness = f"WITNESS_{env.namespace.replace('-', '_').upper()}"
    nc = await nats.connect(env.nats_url)
    got: list[JSON] = []

    async def keep(msg: Any) -> None:
        got.append(json.loads(msg.data))

    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=witness, subjects=[f"witness.{env.namespace}"], storage=StorageType.MEMORY)
        )
        await js.publish(f"witness.{env.namespace}", b"someone else's")
        plain = f"records.{env.namespace}.ok"
        await nc.subscribe(plain, cb=keep)
        await nc.flush()

        await env.deploy(
            python_function(
                "purger", HANDLER, **{"async": {"onSuccess": {"nats": f"$JS.API.STREAM.PURGE.{witness}"}}}
            )
        )
        await env.deploy(python_function("honest", HANDLER, **{"async": {"onSuccess": {"nats": plain}}}))
        request_id = await invoke_event(env.url, f"{env.namespace}/purger", b'{"n": 1}')
        (letter,) = await wait_for(
            lambda: dead_letters(env.nats_url, env.namespace), bool, what="the purger's record dead-lettered"
        )
        assert "is reserved (prefix $)" in letter.reason, letter.reason
        assert letter.record["requestContext"]["requestId"] == request_id
        info = await js.stream_info(witness)
        assert info.state.messages == 1, info.state

        # Nothing else broke: a destination on a plain subject gets its record.
        await invoke_event(env.url, f"{env.namespace}/honest", b'{"n": 2}')
        (record,) = await wait_for(lambda: asyncio.sleep(0, result=list(got)), bool, what="the honest record")
        assert record["responsePayload"] == {"n": 2}
    finally:
        await nc.close()
