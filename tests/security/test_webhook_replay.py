"""Issue 17, item 10: a captured bucket notification replayed to the bridge's webhook.

A notification-mode bucket Trigger whose bridge runs in this process against the module's gateway; the attacker
holds a notification exactly as the store sent it (token included, as on a network without TLS). Replaying it
delivers nothing more, neither to the same bridge (it remembers the record for its replay window) nor to a
restarted one (the gateway's queue stores an event with the same idempotency key once); a notification whose
event time is outside the window is not delivered at all; a new record still is."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.drained import async_queue_drained
from kltest.platform import Env, python_function
from kubelambda.bridge import BridgeSettings, run_bridge
from kubelambda.bridge._s3events import iso_time
from kubelambda.bridge.bucket import REPLAY_WINDOW_SECONDS
from kubelambda.devcluster._ports import free_port, retry_taken_ports

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
TOKEN = "captured-t0ken"
HANDLER = """
def handler(event, context):
    return {"key": event["Records"][0]["s3"]["object"]["key"]}
"""


def notification(key: str, when: datetime.datetime) -> JSON:
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": iso_time(when),
        "eventName": "s3:ObjectCreated:Put",
        "s3": {
            "bucket": {"name": "inbox"},
            "object": {"key": key, "size": 3, "eTag": "abc", "sequencer": "17A0C0FFEE000000"},
        },
    }
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"inbox/{key}", "Records": [record]}


@contextlib.asynccontextmanager
async def webhook(cluster: Cluster, namespace: str, gateway_url: str) -> AsyncIterator[str]:
    """The Trigger's bridge in this process; yields its webhook URL once it answers."""

    async def start() -> tuple[asyncio.Event, asyncio.Task[bool], str]:
        port = free_port()
        stop = asyncio.Event()
        settings = BridgeSettings(
            kubeconfig=str(cluster.kubeconfig), gateway_url=gateway_url, host="127.0.0.1", port=port
        )
        task = asyncio.create_task(run_bridge(namespace, "pushed", settings, stop=stop))
        url = f"http://127.0.0.1:{port}/events"

        async def up() -> int:
            if task.done():
                return -1
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                return resp.status

        await wait_for(up, lambda s: s in (200, -1), what="the webhook up")
        if task.done():
            raise OSError(f"the bridge stopped: {task.exception()!r}")
        return stop, task, url

    stop, task, url = await retry_taken_ports(start, what="the webhook bridge")
    try:
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_replayed_notification_is_delivered_once(env: Env) -> None:
    records_key = f"{env.namespace}-replay"
    await env.deploy(
        python_function(
            "recorder",
            HANDLER,
            **{"async": {"maxRetries": 0, "onSuccess": {"url": env.records.url(records_key)}}},
        )
    )
    env.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"}, "stringData": {"token": TOKEN}}
    )
    env.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "pushed"},
            "spec": {
                "function": "recorder",
                "enabled": False,  # the test runs the bridge itself
                "bucket": {"endpoint": "http://minio.example:9000", "bucket": "inbox", "tokenSecret": "tok"},
            },
        }
    )
    now = datetime.datetime.now(datetime.UTC)
    captured = notification("first.txt", now)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def post(url: str, body: JSON) -> JSON:
        async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            answer: JSON = await resp.json()
            return answer

    async with webhook(env.cluster, env.namespace, env.url) as url:
        assert (await post(url, captured))["accepted"] == 1
        await env.records.wait(records_key, 1, timeout=60)
        for _ in range(3):  # the attacker replays it
            assert await post(url, captured) == {"accepted": 0, "ignored": 0, "stale": 0, "replayed": 1}
        # Outside the window: never delivered (a replay of a notification older than the bridge's memory).
        old = notification("old.txt", now - datetime.timedelta(seconds=REPLAY_WINDOW_SECONDS + 60))
        assert (await post(url, old))["stale"] == 1
        future = notification("future.txt", now + datetime.timedelta(seconds=REPLAY_WINDOW_SECONDS + 60))
        assert (await post(url, future))["stale"] == 1

    # A restarted bridge has forgotten it: the gateway's queue still stores the same record once.
    async with webhook(env.cluster, env.namespace, env.url) as url:
        assert (await post(url, captured))["accepted"] == 1
        # Nothing else broke: a new record is delivered.
        assert (await post(url, notification("second.txt", datetime.datetime.now(datetime.UTC))))[
            "accepted"
        ] == 1
        await env.records.wait(records_key, 2, timeout=60)
    await async_queue_drained(env.gateway, env.namespace, "recorder")
    keys = sorted(r["responsePayload"]["key"] for r in env.records.of(records_key))
    assert keys == ["first.txt", "second.txt"]
