"""Event invocations against the real local cluster and a real nats-server (JetStream, file storage).

The gateway runs its async worker in-process with retry delays shortened; destinations are an HTTP endpoint
served by the test, another Function, and the namespace's dead-letter stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import pytest

from kltest import Cluster, wait_for
from kltest.platform import (
    RunningOperator,
    deploy,
    lambda_client,
    python_function,
    start_gateway,
    start_operator,
    stop_gateway,
)
from kltest.records import Records
from kubelambda.asyncworker.dlq import list_dead_letters
from kubelambda.asyncworker.queue import EventQueue, dlq_stream
from kubelambda.devcluster.servers import NatsServer
from kubelambda.gateway.app import Gateway
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
STREAM = "KUBELAMBDA_ASYNC"

HANDLER = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"echo": event, "requestId": context.aws_request_id}
"""


@pytest.fixture(scope="module")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    async with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        assert isinstance(server, NatsServer)
        yield server


@pytest.fixture(scope="module")
async def records() -> AsyncIterator[Records]:
    got = Records()
    await got.start()
    yield got
    await got.stop()


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[tuple[RunningOperator, Gateway, str]]:
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0)
    gateway, url = await start_gateway(
        cluster,
        kube,
        slot_wait_seconds=1.0,
        autoscale_interval_seconds=0.5,
        nats_url=nats_server.url,
        async_retry_delays_seconds=(0.2, 0.2),
        async_backoff_min_seconds=0.2,
        async_backoff_max_seconds=1.0,
    )
    try:
        yield operator, gateway, url
    finally:
        await stop_gateway(gateway)
        await operator.stop()


def function(name: str, **async_config: Any) -> JSON:
    return python_function(name, HANDLER, **{"async": async_config})


async def invoke_event(url: str, name: str, payload: bytes) -> Any:
    client = lambda_client(url)
    return await asyncio.to_thread(client.invoke, FunctionName=name, InvocationType="Event", Payload=payload)


async def stream_last_seq(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def queue_drained(nats_url: str) -> bool:
    """Nothing left in the stream and nothing delivered but unacknowledged."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = await js.stream_info(STREAM)
        consumer = await js.consumer_info(STREAM, "kubelambda-async-worker")
        return stream.state.messages == 0 and consumer.num_ack_pending == 0 and consumer.num_pending == 0
    finally:
        await nc.close()


async def test_an_event_runs_the_function_from_zero_and_reaches_the_success_destination(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Records,
) -> None:
    _, gateway, url = platform
    key = f"{namespace}-ok"
    await deploy(cluster, gateway, namespace, function("ok", onSuccess={"url": records.url(key)}))
    scale = await kube.get(
        resource_path("apps/v1", "deployments", namespace=namespace, name="ok", subresource="scale")
    )
    assert scale["spec"].get("replicas", 0) == 0
    answer = await invoke_event(url, f"{namespace}/ok", b'{"n": 1}')
    assert answer["StatusCode"] == 202
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    (record,) = await records.wait(key)
    assert record["version"] == "1.0"
    assert record["requestContext"] == {
        "requestId": request_id,
        "functionArn": f"arn:aws:lambda:us-east-1:{namespace}:function:ok:$LATEST",
        "condition": "Success",
        "approximateInvokeCount": 1,
    }
    assert record["requestPayload"] == {"n": 1}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    # The handler saw the request id the caller was given: the same one on every attempt.
    assert record["responsePayload"] == {"echo": {"n": 1}, "requestId": request_id}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        exported = await resp.text()
    labels = f'function="ok",namespace="{namespace}"'
    assert f"kubelambda_async_events_accepted_total{{{labels}}} 1.0" in exported
    assert f'kubelambda_async_destination_records_total{{destination="url",{labels}}} 1.0' in exported
    assert "kubelambda_async_queue_depth " in exported
    assert "\nkubelambda_async_events_dropped_total{" not in exported  # nothing dropped


@pytest.mark.parametrize("max_retries", [0, 1, 2])
async def test_a_failing_event_ends_in_exactly_one_failure_record(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Records,
    nats_server: NatsServer,
    max_retries: int,
) -> None:
    _, gateway, url = platform
    key = f"{namespace}-fail"
    doc = function("fails", maxRetries=max_retries, onFailure={"url": records.url(key)})
    await deploy(cluster, gateway, namespace, doc)
    answer = await invoke_event(url, f"{namespace}/fails", b'{"fail": true}')
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    (record,) = await records.wait(key)
    await wait_for(lambda: queue_drained(nats_server.url), bool, what="the async queue drained")
    assert len(records.got[key]) == 1
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == max_retries + 1
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "asked to fail"


async def test_without_a_failure_destination_the_record_goes_to_the_namespaces_dead_letter_stream(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    nats_server: NatsServer,
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, function("dead", maxRetries=0))
    answer = await invoke_event(url, f"{namespace}/dead", b'{"fail": true}')
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]

    async def dead_letters() -> list[JSON]:
        queue = await EventQueue.connect(nats_server.url, stream=STREAM)
        try:
            return [letter.record for letter in await list_dead_letters(queue, namespace)]
        finally:
            await queue.close()

    (record,) = await wait_for(dead_letters, bool, what=f"a record in {dlq_stream(namespace)}")
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1

    # `kubelambda dlq list` shows it; `redrive` queues the payload again (a new invocation, which fails and
    # comes back with a new request id).
    listed = await cli("dlq", "list", namespace, "--nats-url", nats_server.url)
    (line,) = listed.splitlines()
    assert json.loads(line)["function"] == "dead"
    assert json.loads(line)["record"]["requestContext"]["requestId"] == request_id
    assert "Re-drove 1 record(s)" in await cli("dlq", "redrive", namespace, "--nats-url", nats_server.url)
    (again,) = await wait_for(
        dead_letters,
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


async def test_a_function_destination_is_invoked_asynchronously_with_the_record(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Records,
) -> None:
    _, gateway, url = platform
    key = f"{namespace}-chain"
    await deploy(cluster, gateway, namespace, function("second", onSuccess={"url": records.url(key)}))
    await deploy(cluster, gateway, namespace, function("first", onSuccess={"function": "second"}))
    answer = await invoke_event(url, f"{namespace}/first", b'{"step": 1}')
    first_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    (record,) = await records.wait(key)
    # "second" received the record of "first" as its event and echoed it.
    inner = record["responsePayload"]["echo"]
    assert inner["requestContext"]["requestId"] == first_id
    assert inner["requestPayload"] == {"step": 1}
    assert record["requestContext"]["requestId"] != first_id


async def test_oversize_and_non_json_events_are_refused_and_nothing_is_queued(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    nats_server: NatsServer,
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, function("refuses"))
    before = await stream_last_seq(nats_server.url, STREAM)
    client = lambda_client(url)
    big = b'"' + b"x" * (1024 * 1024) + b'"'  # over 1 MB, well under the synchronous 6 MB
    with pytest.raises(client.exceptions.RequestTooLargeException):
        await asyncio.to_thread(
            client.invoke, FunctionName=f"{namespace}/refuses", InvocationType="Event", Payload=big
        )
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await asyncio.to_thread(
            client.invoke, FunctionName=f"{namespace}/refuses", InvocationType="Event", Payload=b"{nope"
        )
    assert await stream_last_seq(nats_server.url, STREAM) == before


async def test_a_gateway_without_nats_answers_event_invocations_not_implemented(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    _, gateway, _ = platform
    await deploy(cluster, gateway, namespace, function("plain"))
    bare, bare_url = await start_gateway(cluster, kube)
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=bare.registry.functions.get((namespace, "plain"))),
            lambda fn: fn is not None and fn.ready,
            what="the second gateway to see the Function Ready",
        )
        client = lambda_client(bare_url)
        with pytest.raises(client.exceptions.ClientError, match="KUBELAMBDA_GATEWAY_NATS_URL") as e:
            await asyncio.to_thread(
                client.invoke, FunctionName=f"{namespace}/plain", InvocationType="Event", Payload=b"{}"
            )
        assert e.value.response["Error"]["Code"] == "NotImplementedException"
    finally:
        await stop_gateway(bare)


async def test_reserved_concurrency_zero_sends_events_straight_to_the_failure_destination(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Records,
) -> None:
    _, gateway, url = platform
    key = f"{namespace}-off"
    doc = function("off", onFailure={"url": records.url(key)})
    doc["spec"]["concurrency"] = {"reserved": 0}
    await deploy(cluster, gateway, namespace, doc)
    answer = await invoke_event(url, f"{namespace}/off", b'{"n": 2}')
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    (record,) = await records.wait(key)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["requestPayload"] == {"n": 2}
    assert "responseContext" not in record
