"""Issue 7's acceptance run without a crash: 1,000 Event invocations, every one ends in exactly one record.

A third of the events fail their first attempt (a marker file per request id, which the function's process
sees on the local node) and succeed on the retry; a tenth always fail and end with RetriesExhausted. Nothing
crashes here, so there is no excuse for a duplicate: each accepted request id must appear in exactly one
record, with the exact number of attempts. (tests/integration/test_async_crash.py is the run with a SIGKILLed
worker and a NATS restart, where duplicates are allowed.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.platform import (
    FAIL_FIRST_HANDLER,
    FAST_ASYNC,
    PlatformUnderTest,
    async_stream_drained,
    deploy,
    python_function,
    running_platform,
)
from kltest.records import Records
from kubelambda.asyncworker.dlq import list_dead_letters
from kubelambda.asyncworker.queue import EventQueue
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
EVENTS = 1000
CLIENTS = 32
STREAM = "KUBELAMBDA_ASYNC"


@pytest.fixture
async def platform(
    cluster: Cluster, kube: KubeClient, tmp_path: Path
) -> AsyncIterator[tuple[PlatformUnderTest, NatsServer]]:
    async with (
        NatsServer(tmp_path / "nats") as server,
        running_platform(cluster, kube, slot_wait_seconds=2.0, nats_url=server.url, **FAST_ASYNC) as platform,
    ):
        yield platform, server


def kind_of(i: int) -> str:
    if i % 10 == 5:
        return "alwaysFail"
    if i % 3 == 0:
        return "failFirst"
    return "ok"


async def test_a_thousand_events_each_end_in_exactly_one_record(
    platform: tuple[PlatformUnderTest, NatsServer],
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    (_, gateway, url), nats_server = platform
    records = Records()
    await records.start()
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        doc = python_function(
            "thousand",
            FAIL_FIRST_HANDLER,
            concurrency={"perInstance": 8},
            scaling={"minInstances": 1, "maxInstances": 2},
            **{
                "async": {
                    "maxRetries": 1,
                    "onSuccess": {"url": records.url("ok")},
                    "onFailure": {"url": records.url("failed")},
                }
            },
        )
        await deploy(cluster, gateway, namespace, doc)
        invoke = f"{url}/2015-03-31/functions/{namespace}/thousand/invocations"
        accepted: dict[str, int] = {}
        work = iter(range(EVENTS))

        async def client(http: aiohttp.ClientSession) -> None:
            for i in work:
                payload: JSON = {"i": i}
                if kind_of(i) == "alwaysFail":
                    payload["alwaysFail"] = True
                elif kind_of(i) == "failFirst":
                    payload["failFirst"] = str(markers)
                async with http.post(
                    invoke, data=json.dumps(payload).encode(), headers={"X-Amz-Invocation-Type": "Event"}
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    accepted[resp.headers["X-Amzn-RequestId"]] = i

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
        assert len(accepted) == EVENTS

        def missing() -> int:
            return EVENTS - len(
                {r["requestContext"]["requestId"] for r in records.of("ok") + records.of("failed")}
            )

        await wait_for(
            lambda: asyncio.sleep(0, result=missing()),
            lambda n: n == 0,
            what="a record of every event (count of those missing)",
            timeout=150,
        )
        await async_stream_drained(nats_server.url)
        ok, failed = records.of("ok"), records.of("failed")
        # Exactly once: no crash happened, so a duplicate record would be a bug.
        seen = Counter(r["requestContext"]["requestId"] for r in ok + failed)
        assert [rid for rid, n in seen.items() if n != 1] == []
        assert set(seen) == set(accepted)
        for record in ok:
            i = accepted[record["requestContext"]["requestId"]]
            assert kind_of(i) != "alwaysFail", record
            assert record["requestContext"]["condition"] == "Success"
            assert record["responsePayload"] == {"i": i}
            expected = 2 if kind_of(i) == "failFirst" else 1
            assert record["requestContext"]["approximateInvokeCount"] == expected, record
        for record in failed:
            i = accepted[record["requestContext"]["requestId"]]
            assert kind_of(i) == "alwaysFail", record
            assert record["requestContext"]["condition"] == "RetriesExhausted"
            assert record["requestContext"]["approximateInvokeCount"] == 2
            assert record["responsePayload"]["errorMessage"] == "this event always fails"
        assert len(failed) == sum(1 for i in range(EVENTS) if kind_of(i) == "alwaysFail")
        # Every failFirst event failed exactly once: one marker each, no more.
        assert len(list(markers.iterdir())) == sum(1 for i in range(EVENTS) if kind_of(i) == "failFirst")
        # Nothing was dead-lettered (every destination answered) and nothing dropped.
        queue = await EventQueue.connect(nats_server.url, stream=STREAM)
        try:
            assert await list_dead_letters(queue, namespace) == []
        finally:
            await queue.close()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
            exported = await resp.text()
        assert "\nkubelambda_async_events_dropped_total{" not in exported
    finally:
        await records.stop()
