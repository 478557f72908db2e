"""Queue and topic destinations of asynchronous invocations, on real brokers and the local cluster.

Each queue (SQS API on ElasticMQ, RabbitMQ, a Redis stream, a NATS JetStream stream) and a topic (a NATS
subject) receives exactly one invocation record per failed event, Lambda's record, with the request id the
caller was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import boto3
import nats
import pytest
import redis.asyncio as aioredis
from nats.js.api import StreamConfig

from kltest import Cluster, wait_for
from kltest.platform import Env, lambda_client, python_function
from kubelambda.devcluster.servers import RabbitMQServer, RedisServer, SqsServer

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
EVENTS = 12

HANDLER = """
def handler(event, context):
    raise ValueError("asked to fail")
"""


class Brokers:
    def __init__(self, redis: RedisServer, rabbitmq: RabbitMQServer, sqs: SqsServer) -> None:
        self.redis = redis
        self.rabbitmq = rabbitmq
        self.sqs = sqs


@pytest.fixture(scope="module")
async def brokers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Brokers]:
    root = tmp_path_factory.mktemp("brokers")
    servers = (RedisServer(root / "redis"), RabbitMQServer(root / "rabbitmq"), SqsServer(root / "sqs"))
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(s) for s in servers))
        yield Brokers(*servers)  # type: ignore[arg-type]


def sqs_client(server: SqsServer) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="kubelambda",
        aws_secret_access_key="kubelambda",
    )


async def invoke_failing(env: Env, name: str, n: int) -> set[str]:
    client = lambda_client(env.url)
    ids: set[str] = set()
    for i in range(n):
        answer = await asyncio.to_thread(
            client.invoke,
            FunctionName=f"{env.namespace}/{name}",
            InvocationType="Event",
            Payload=json.dumps({"n": i}).encode(),
        )
        assert answer["StatusCode"] == 202
        ids.add(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])
    return ids


def check(records: list[JSON], ids: set[str], namespace: str, name: str) -> None:
    assert sorted(r["requestContext"]["requestId"] for r in records) == sorted(ids), (
        "one record per failed event"
    )
    for r in records:
        assert r["requestContext"]["condition"] == "RetriesExhausted"
        assert r["requestContext"]["functionArn"].startswith(
            f"arn:aws:lambda:us-east-1:{namespace}:function:{name}"
        )
        assert r["responseContext"]["functionError"] == "Unhandled"
        assert r["requestPayload"]["n"] in range(EVENTS)


async def test_each_queue_and_a_topic_receive_one_record_per_failed_event(env: Env, brokers: Brokers) -> None:
    ns = env.namespace
    queue = f"failed-{ns}"
    # The queues exist before the records come (a destination never creates one).
    sqs = sqs_client(brokers.sqs)
    queue_url = (await asyncio.to_thread(sqs.create_queue, QueueName=queue))["QueueUrl"]
    rabbit = await aio_pika.connect_robust(brokers.rabbitmq.url)
    channel = await rabbit.channel()
    rabbit_queue = await channel.declare_queue(queue, durable=True)
    nc = await nats.connect(env.nats_url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=f"FAILED_{ns.upper().replace('-', '_')}", subjects=[f"failed.{ns}.queue"])
    )
    topic_got: list[Any] = []

    async def on_topic(msg: Any) -> None:
        topic_got.append(msg)

    sub = await nc.subscribe(f"failed.{ns}.topic", cb=on_topic)
    await nc.flush()
    destinations: dict[str, JSON] = {
        "to-sqs": {"queue": {"sqs": {"queueUrl": queue_url}}},
        "to-rabbitmq": {"queue": {"rabbitmq": {"url": brokers.rabbitmq.url, "queue": queue}}},
        "to-redis": {"queue": {"redis": {"url": brokers.redis.url, "key": queue}}},
        "to-jetstream": {"queue": {"nats": {"subject": f"failed.{ns}.queue"}}},
        "to-topic": {"topic": {"nats": {"url": env.nats_url, "subject": f"failed.{ns}.topic"}}},
    }
    try:
        for name, destination in destinations.items():
            await env.deploy(
                python_function(name, HANDLER, **{"async": {"maxRetries": 0, "onFailure": destination}})
            )
        ids = {name: await invoke_failing(env, name, EVENTS) for name in destinations}

        async def sqs_records() -> list[JSON]:
            got: list[JSON] = []
            while True:
                answer = await asyncio.to_thread(
                    sqs.receive_message, QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                )
                messages = answer.get("Messages", [])
                if not messages:
                    return got
                for m in messages:
                    got.append(json.loads(m["Body"]))
                    await asyncio.to_thread(
                        sqs.delete_message, QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"]
                    )

        got_sqs: list[JSON] = []
        await wait_for(
            lambda: sqs_records(),
            lambda batch: got_sqs.extend(batch) or len(got_sqs) >= EVENTS,
            what=f"{EVENTS} SQS records",
            timeout=120,
        )
        conn = aioredis.Redis.from_url(brokers.redis.url)
        try:
            entries = await wait_for(
                lambda: conn.xrange(queue),
                lambda e: len(e) >= EVENTS,
                what=f"{EVENTS} Redis records",
                timeout=60,
            )
        finally:
            await conn.aclose()
        stream = await js.stream_info(f"FAILED_{ns.upper().replace('-', '_')}")
        await wait_for(
            lambda: js.stream_info(stream.config.name),
            lambda info: info.state.messages >= EVENTS,
            what=f"{EVENTS} JetStream records",
            timeout=60,
        )
        js_sub = await js.pull_subscribe(f"failed.{ns}.queue", durable="check")
        js_msgs = await js_sub.fetch(batch=EVENTS * 2, timeout=5)
        rabbit_msgs: list[JSON] = []
        await wait_for(
            lambda: rabbit_queue.get(no_ack=True, fail=False),
            lambda m: (
                m is not None
                and rabbit_msgs.append(json.loads(m.body)) is None
                and len(rabbit_msgs) >= EVENTS
            ),
            what=f"{EVENTS} RabbitMQ records",
            timeout=60,
        )
        await wait_for(
            lambda: asyncio.sleep(0, len(topic_got)), lambda n: n >= EVENTS, what="topic records", timeout=60
        )
        # Nothing more arrives: every event was acknowledged after its record (no redelivery, no second record).
        await wait_for(
            lambda: js.stream_info("KUBELAMBDA_ASYNC"),
            lambda info: info.state.messages == 0,
            what="the async queue drained",
            timeout=60,
        )
        check(got_sqs + await sqs_records(), ids["to-sqs"], ns, "to-sqs")
        while (extra := await rabbit_queue.get(no_ack=True, fail=False)) is not None:
            rabbit_msgs.append(json.loads(extra.body))
        check(rabbit_msgs, ids["to-rabbitmq"], ns, "to-rabbitmq")
        check([json.loads(fields[b"data"]) for _, fields in entries], ids["to-redis"], ns, "to-redis")
        check([json.loads(m.data) for m in js_msgs], ids["to-jetstream"], ns, "to-jetstream")
        check([json.loads(m.data) for m in topic_got], ids["to-topic"], ns, "to-topic")
        assert {m.headers["Sns-Subject"] for m in topic_got} == {"RetriesExhausted"}
    finally:
        await sub.unsubscribe()
        await nc.close()
        await rabbit.close()


async def test_a_functions_async_destination_may_not_name_a_credentials_secret(
    env: Env, cluster: Cluster
) -> None:
    """Only a Trigger's bridge reads Secrets of a namespace (its Role names them); the async worker reads none, so
    the API server refuses ``credentialsSecret`` in a Function's async destination, naming the field."""
    redis = {"url": "redis://redis:6379", "key": "failed", "credentialsSecret": "redis-creds"}
    doc = python_function("with-secret", HANDLER, **{"async": {"onFailure": {"queue": {"redis": redis}}}})

    def dry_run() -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(
            "apply", "--dry-run=server", "-n", env.namespace, "-f", "-", input=json.dumps(doc), check=False
        )

    refused = dry_run()
    assert refused.returncode != 0
    assert "async.onFailure: credentialsSecret is for a Trigger's onFailure only" in refused.stderr
    del redis["credentialsSecret"]
    accepted = dry_run()
    assert accepted.returncode == 0, accepted.stderr
