"""kubelambda.kube against the real API server: watches carry objects of any size the API accepts."""

from __future__ import annotations

import asyncio

import pytest

from kltest import Cluster
from kubelambda.kube import KubeClient, WatchEvent, resource_path

pytestmark = pytest.mark.integration


async def test_a_watch_delivers_objects_larger_than_a_readline_buffer(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    path = resource_path("v1", "configmaps", namespace=namespace)
    version = (await kube.list(path))["metadata"]["resourceVersion"]
    big = "x" * 900_000  # one watch line of ~900 KB: more than aiohttp's 512 KB readline limit

    async def first_event() -> WatchEvent:
        async for event in kube.watch(
            path, resource_version=version, params={"fieldSelector": "metadata.name=big"}
        ):
            return event
        raise AssertionError("the watch ended without an event")

    watching = asyncio.create_task(first_event())
    await kube.create(path, {"metadata": {"name": "big"}, "data": {"blob": big}})
    event = await asyncio.wait_for(watching, 30)
    assert event.type == "ADDED"
    assert len(event.object["data"]["blob"]) == 900_000
