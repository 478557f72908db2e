"""Event invocations against the real local cluster and a real nats-server (JetStream, file storage).

The gateway runs its async worker in-process with retry delays shortened; destinations are an HTTP endpoint
served by the test, another Function, and the namespace's dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from kltest import wait_for
from kltest.platform import (
    Env,
    async_stream_drained,
    lambda_client,
    python_function,
    service_account_token,
    start_gateway,
    stop_gateway,
)
from kubelambda.asyncworker.dlq import DeadLetter, list_dead_letters
from kubelambda.asyncworker.queue import EventQueue, QueuedEvent, dlq_stream
from kubelambda.asyncworker.worker import destination_request_id
from kubelambda.devcluster._ports import free_port
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.config import GatewaySettings
from kubelambda.kube import resource_path
from kubelambda.operator import Login

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
STREAM = "KUBELAMBDA_ASYNC"

HANDLER = """
import os
import time


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("attempts"):
        # One line per attempt, in a file named after the request id (the pod is a process on this machine).
        with open(os.path.join(event["attempts"], context.aws_request_id), "a") as f:
            f.write("attempt\\n")
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"echo": event, "requestId": context.aws_request_id}
"""


def function(name: str, **async_config: Any) -> JSON:
    return python_function(name, HANDLER, **{"async": async_config})


async def invoke_event(url: str, name: str, payload: bytes) -> str:
    """An Event invocation; returns the request id the caller was given once it was accepted (202)."""
    client = lambda_client(url)
    answer = await asyncio.to_thread(
        client.invoke, FunctionName=name, InvocationType="Event", Payload=payload
    )
    assert answer["StatusCode"] == 202, answer
    return str(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])


def request_context(namespace: str, name: str, request_id: str, condition: str, count: int) -> JSON:
    """The requestContext of Lambda's invocation record."""
    return {
        "requestId": request_id,
        "functionArn": f"arn:aws:lambda:us-east-1:{namespace}:function:{name}:$LATEST",
        "condition": condition,
        "approximateInvokeCount": count,
    }


async def dead_letters(nats_url: str, namespace: str) -> list[DeadLetter]:
    queue = await EventQueue.connect(nats_url, stream=STREAM)
    try:
        return await list_dead_letters(queue, namespace)
    finally:
        await queue.close()


async def queue_accepted_ago(nats_url: str, namespace: str, name: str, payload: JSON, seconds: float) -> str:
    """Stores an Event in the stream exactly as the gateway does, as if accepted ``seconds`` ago; returns its
    request id."""
    request_id = str(uuid.uuid4())
    queue = await EventQueue.connect(nats_url, stream=STREAM)
    try:
        await queue.publish(
            QueuedEvent(
                namespace=namespace,
                function=name,
                request_id=request_id,
                payload=json.dumps(payload).encode(),
                enqueued_at=time.time() - seconds,
            )
        )
    finally:
        await queue.close()
    return request_id


async def stream_last_seq(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def test_an_event_runs_the_function_from_zero_and_reaches_the_success_destination(env: Env) -> None:
    key = f"{env.namespace}-ok"
    await env.deploy(function("ok", onSuccess={"url": env.records.url(key)}))
    scale = await env.kube.get(
        resource_path("apps/v1", "deployments", namespace=env.namespace, name="ok", subresource="scale")
    )
    assert scale["spec"].get("replicas", 0) == 0
    request_id = await invoke_event(env.url, f"{env.namespace}/ok", b'{"n": 1}')
    (record,) = await env.records.wait(key)
    assert record["version"] == "1.0"
    assert record["requestContext"] == request_context(env.namespace, "ok", request_id, "Success", 1)
    assert record["requestPayload"] == {"n": 1}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    # The handler saw the request id the caller was given: the same one on every attempt.
    assert record["responsePayload"] == {"echo": {"n": 1}, "requestId": request_id}
    async with aiohttp.ClientSession() as http, http.get(f"{env.url}/metrics") as resp:
        exported = await resp.text()
    labels = f'function="ok",namespace="{env.namespace}"'
    assert f"kubelambda_async_events_accepted_total{{{labels}}} 1.0" in exported
    assert f'kubelambda_async_destination_records_total{{destination="url",{labels}}} 1.0' in exported
    assert "kubelambda_async_queue_depth " in exported
    assert "\nkubelambda_async_events_dropped_total{" not in exported  # nothing dropped


@pytest.mark.parametrize("max_retries", [0, 1, 2])
async def test_a_failing_event_ends_in_exactly_one_failure_record(
    env: Env, tmp_path: Path, max_retries: int
) -> None:
    key = f"{env.namespace}-fail"
    doc = function("fails", maxRetries=max_retries, onFailure={"url": env.records.url(key)})
    await env.deploy(doc)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    payload = {"fail": True, "attempts": str(attempts)}
    request_id = await invoke_event(env.url, f"{env.namespace}/fails", json.dumps(payload).encode())
    (record,) = await env.records.wait(key)
    await async_stream_drained(env.nats_url)
    assert len(env.records.got[key]) == 1
    # The handler ran exactly maxRetries + 1 times, each time with the caller's request id.
    assert [p.name for p in attempts.iterdir()] == [request_id]
    assert (attempts / request_id).read_text().splitlines() == ["attempt"] * (max_retries + 1)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == max_retries + 1
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "asked to fail"


async def test_without_a_failure_destination_the_record_goes_to_the_namespaces_dead_letter_stream(
    env: Env,
) -> None:
    await env.deploy(function("dead", maxRetries=0))
    request_id = await invoke_event(env.url, f"{env.namespace}/dead", b'{"fail": true}')

    async def records_dead() -> list[JSON]:
        return [letter.record for letter in await dead_letters(env.nats_url, env.namespace)]

    (record,) = await wait_for(records_dead, bool, what=f"a record in {dlq_stream(env.namespace)}")
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1

    # `kubelambda dlq list` shows it; `redrive` queues the payload again (a new invocation, which fails and
    # comes back with a new request id).
    listed = await cli("dlq", "list", env.namespace, "--nats-url", env.nats_url)
    (line,) = listed.splitlines()
    assert json.loads(line)["function"] == "dead"
    assert json.loads(line)["record"]["requestContext"]["requestId"] == request_id
    assert "Re-drove 1 record(s)" in await cli("dlq", "redrive", env.namespace, "--nats-url", env.nats_url)
    (again,) = await wait_for(
        records_dead,
        lambda got: bool(got) and got[0]["requestContext"]["requestId"] != request_id,
        what="the re-driven event dead-lettered again",
    )
    assert again["requestPayload"] == {"fail": True}


async def cli(*args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelambda", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_function_destination_is_invoked_asynchronously_with_the_record(env: Env) -> None:
    key = f"{env.namespace}-chain"
    await env.deploy(function("second", onSuccess={"url": env.records.url(key)}))
    await env.deploy(function("first", onSuccess={"function": "second"}))
    first_id = await invoke_event(env.url, f"{env.namespace}/first", b'{"step": 1}')
    (record,) = await env.records.wait(key)
    # "second" received the record of "first" as its event and echoed it.
    inner = record["responsePayload"]["echo"]
    assert inner["requestContext"]["requestId"] == first_id
    assert inner["requestPayload"] == {"step": 1}
    assert record["requestContext"]["requestId"] != first_id
    # The Event's request id comes from the record's key: sent again after a crash, it is stored once.
    assert record["requestContext"]["requestId"] == destination_request_id(inner)


async def test_oversize_and_non_json_events_are_refused_and_nothing_is_queued(env: Env) -> None:
    await env.deploy(function("refuses"))
    before = await stream_last_seq(env.nats_url, STREAM)
    client = lambda_client(env.url)
    big = b'"' + b"x" * (1024 * 1024) + b'"'  # over 1 MB, well under the synchronous 6 MB
    with pytest.raises(client.exceptions.RequestTooLargeException):
        await asyncio.to_thread(
            client.invoke, FunctionName=f"{env.namespace}/refuses", InvocationType="Event", Payload=big
        )
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await asyncio.to_thread(
            client.invoke, FunctionName=f"{env.namespace}/refuses", InvocationType="Event", Payload=b"{nope"
        )
    assert await stream_last_seq(env.nats_url, STREAM) == before


async def test_a_gateway_without_nats_answers_event_invocations_not_implemented(env: Env) -> None:
    await env.deploy(function("plain"))
    bare, bare_url = await start_gateway(env.cluster, env.kube)
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=bare.registry.functions.get((env.namespace, "plain"))),
            lambda fn: fn is not None and fn.ready,
            what="the second gateway to see the Function Ready",
        )
        client = lambda_client(bare_url)
        with pytest.raises(client.exceptions.ClientError, match="KUBELAMBDA_GATEWAY_NATS_URL") as e:
            await asyncio.to_thread(
                client.invoke, FunctionName=f"{env.namespace}/plain", InvocationType="Event", Payload=b"{}"
            )
        assert e.value.response["Error"]["Code"] == "NotImplementedException"
    finally:
        await stop_gateway(bare)


async def test_reserved_concurrency_zero_sends_events_straight_to_the_failure_destination(env: Env) -> None:
    key = f"{env.namespace}-off"
    doc = function("off", onFailure={"url": env.records.url(key)})
    doc["spec"]["concurrency"] = {"reserved": 0}
    await env.deploy(doc)
    request_id = await invoke_event(env.url, f"{env.namespace}/off", b'{"n": 2}')
    (record,) = await env.records.wait(key)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["requestPayload"] == {"n": 2}
    assert "responseContext" not in record


async def subscribe(nats_url: str, subject: str) -> tuple[Any, list[JSON]]:
    """A plain NATS subscriber on ``subject``; returns the connection and the list it fills."""
    got: list[JSON] = []

    async def keep(msg: Any) -> None:
        got.append(json.loads(msg.data))

    nc = await nats.connect(nats_url)
    await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return nc, got


async def test_a_nats_destination_receives_lambdas_invocation_record(env: Env) -> None:
    """No stream captures the subjects: a plain publish to whoever subscribes (the test does, beforehand)."""
    ok_subject, failed_subject = f"records.{env.namespace}.ok", f"records.{env.namespace}.failed"
    nc, got_ok = await subscribe(env.nats_url, ok_subject)
    nc2, got_failed = await subscribe(env.nats_url, failed_subject)
    try:
        doc = function(
            "natsdest", maxRetries=0, onSuccess={"nats": ok_subject}, onFailure={"nats": failed_subject}
        )
        await env.deploy(doc)
        good_id = await invoke_event(env.url, f"{env.namespace}/natsdest", b'{"n": 3}')
        bad_id = await invoke_event(env.url, f"{env.namespace}/natsdest", b'{"n": 4, "fail": true}')
        (success,) = await wait_for(
            lambda: asyncio.sleep(0, result=list(got_ok)), bool, what=f"a record on {ok_subject}", timeout=90
        )
        (failure,) = await wait_for(
            lambda: asyncio.sleep(0, result=list(got_failed)), bool, what=f"a record on {failed_subject}"
        )
    finally:
        await nc.close()
        await nc2.close()
    assert set(success) == {
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    }
    assert success["version"] == "1.0"
    assert success["timestamp"].endswith("Z")
    assert success["requestContext"] == request_context(env.namespace, "natsdest", good_id, "Success", 1)
    assert success["requestPayload"] == {"n": 3}
    assert success["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert success["responsePayload"] == {"echo": {"n": 3}, "requestId": good_id}
    assert failure["requestContext"] == request_context(
        env.namespace, "natsdest", bad_id, "RetriesExhausted", 1
    )
    assert failure["requestPayload"] == {"n": 4, "fail": True}
    assert failure["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert failure["responsePayload"]["errorType"] == "ValueError"
    assert failure["responsePayload"]["errorMessage"] == "asked to fail"


async def test_a_nats_destination_captured_by_a_stream_is_stored_in_it(env: Env) -> None:
    """A stream captures the subject: the record is published through JetStream (acknowledged, kept)."""
    subject = f"kept.{env.namespace}.ok"
    stream = f"KEPT_{env.namespace.replace('-', '_')}"
    nc = await nats.connect(env.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"kept.{env.namespace}.>"], storage=StorageType.FILE)
        )
        await env.deploy(function("kept", onSuccess={"nats": subject}))
        request_id = await invoke_event(env.url, f"{env.namespace}/kept", b'{"n": 5}')

        async def stored() -> int:
            return int((await js.stream_info(stream)).state.messages)

        await wait_for(stored, lambda n: n >= 1, what=f"a record in stream {stream}", timeout=90)
        await async_stream_drained(env.nats_url)
        assert await stored() == 1
        msg = await js.get_msg(stream, 1)
        assert msg.subject == subject
        record = json.loads(msg.data or b"")
        assert record["requestContext"]["requestId"] == request_id
        assert record["requestContext"]["condition"] == "Success"
        assert record["requestPayload"] == {"n": 5}
        assert record["responsePayload"] == {"echo": {"n": 5}, "requestId": request_id}
    finally:
        await nc.close()


async def test_an_event_older_than_max_event_age_is_never_invoked(env: Env, tmp_path: Path) -> None:
    """The event's age comes from its Kubelambda-Enqueued-At header: an event accepted 61 s ago (queued here
    with that time, instead of waiting a minute) is past maxEventAgeSeconds 60 and ends without an invocation."""
    key = f"{env.namespace}-old"
    doc = function("aged", maxEventAgeSeconds=60, onFailure={"url": env.records.url(key)})
    await env.deploy(doc)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    payload = {"attempts": str(attempts)}
    request_id = await queue_accepted_ago(env.nats_url, env.namespace, "aged", payload, 61)
    (record,) = await env.records.wait(key)
    await async_stream_drained(env.nats_url)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["requestPayload"] == payload
    assert "responseContext" not in record
    assert list(attempts.iterdir()) == []  # the handler never ran


async def test_a_retry_that_would_fall_due_past_max_event_age_ends_the_event(
    env: Env, tmp_path: Path
) -> None:
    """Accepted 55 s before (of 60), the first attempt starts at once, runs 6 s and fails: its retry would
    fall due past the age, so the event ends there with EventAgeExceeded after one invocation."""
    key = f"{env.namespace}-ageing"
    doc = function("ageing", maxRetries=2, maxEventAgeSeconds=60, onFailure={"url": env.records.url(key)})
    doc["spec"]["timeoutSeconds"] = 30
    await env.deploy(doc)
    # A first invocation starts the instance, so the queued attempt below starts well inside its 5 s left.
    await asyncio.to_thread(
        lambda_client(env.url).invoke, FunctionName=f"{env.namespace}/ageing", Payload=b"{}"
    )
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    payload = {"fail": True, "sleep": 6, "attempts": str(attempts)}
    request_id = await queue_accepted_ago(env.nats_url, env.namespace, "ageing", payload, 55)
    (record,) = await env.records.wait(key)
    await async_stream_drained(env.nats_url)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert (attempts / request_id).read_text().splitlines() == ["attempt"]


async def test_a_nats_destination_on_kubelambdas_own_subjects_is_refused_and_dead_lettered(env: Env) -> None:
    """A record published on kubelambda.async.* would be a malformed event: it goes to the dead letters."""
    doc = function("selfish", onSuccess={"nats": f"kubelambda.async.{env.namespace}.selfish"})
    await env.deploy(doc)
    request_id = await invoke_event(env.url, f"{env.namespace}/selfish", b'{"n": 6}')
    (letter,) = await wait_for(
        lambda: dead_letters(env.nats_url, env.namespace), bool, what="the record dead-lettered"
    )
    assert "kubelambda's own" in letter.reason
    assert letter.record["requestContext"]["requestId"] == request_id
    assert letter.record["requestContext"]["condition"] == "Success"
    await async_stream_drained(env.nats_url)


async def test_a_gateway_listens_only_once_its_event_queue_is_connected(env: Env) -> None:
    """A gateway whose NATS is slow to answer (just restarted, a starved machine) must not take Events before its
    queue is connected: it answered them 501 "this gateway has no KUBELAMBDA_GATEWAY_NATS_URL", which an SDK does
    not retry. A relay in front of the real nats-server holds the gateway's connections until released."""
    await env.deploy(function("early"))
    nats_port = urllib.parse.urlsplit(env.nats_url).port
    held = True
    reached = asyncio.Event()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.set()
        try:
            if held:  # never answered: the client gives up (connect timeout) and tries again
                await reader.read()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", nats_port)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            writer.close()

    relay_server = await asyncio.start_server(relay, "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]
    token = await service_account_token(env.cluster, env.kube, "gateway-rbac.yaml", "kubelambda-gateway")
    port = free_port()
    late = Gateway(
        GatewaySettings(
            host="127.0.0.1",
            port=port,
            auth_mode="none",
            nats_url=f"nats://127.0.0.1:{relay_port}",
            async_worker=False,
        ),
        Login.from_kubeconfig(env.cluster.kubeconfig).with_token(token).client(),
    )
    starting = asyncio.create_task(late.start())
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(reached.wait(), 60)
        # Connecting to NATS: nothing listens yet (a refused connection is retried by every client).
        with pytest.raises(aiohttp.ClientConnectorError):
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{url}/2015-03-31/functions/{env.namespace}/early/invocations",
                    data=b"{}",
                    headers={"X-Amz-Invocation-Type": "Event"},
                ),
            ):
                pass
        held = False
        await asyncio.wait_for(starting, 60)
        await wait_for(
            lambda: asyncio.sleep(0, result=late.registry.functions.get((env.namespace, "early"))),
            lambda fn: fn is not None,
            what="the late gateway to see the Function",
        )
        await invoke_event(url, f"{env.namespace}/early", b"{}")
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await stop_gateway(late)
        relay_server.close()
    await async_stream_drained(env.nats_url)
