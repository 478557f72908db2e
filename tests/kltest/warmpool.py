"""What the warm-pool tests share (tests/integration/test_warm_pool.py, tests/security/test_agent_auth.py,
test_warm_pool_reuse.py, test_gateway_rbac.py): a platform whose gateway keeps warm pools, and its free pods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kltest.cluster import Cluster
from kltest.platform import PlatformUnderTest, running_platform
from kltest.wait import wait_for
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.warmpool import PoolPod, WarmPool
from kubelambda.kube import KubeClient


def pool_of(gateway: Gateway) -> WarmPool:
    assert gateway.path.warm_pool is not None, "the gateway started no warm pool"
    return gateway.path.warm_pool


def free_pool_pods(gateway: Gateway, runtime: str) -> list[PoolPod]:
    """The ``runtime`` pool pods ready to be specialised (not taken, not being deleted)."""
    pool = pool_of(gateway)
    return [
        p
        for p in pool.pods.values()
        if p.runtime == runtime and p.free and p.ready and not p.deleting and p.name not in pool._taken
    ]


async def wait_free_pool_pods(
    gateway: Gateway, runtime: str, n: int, *, timeout: float = 120
) -> list[PoolPod]:
    try:
        return await wait_for(
            lambda: asyncio.sleep(0, result=free_pool_pods(gateway, runtime)),
            lambda pods: len(pods) >= n,
            what=f"{n} free {runtime} pool pods",
            timeout=timeout,
        )
    except AssertionError as e:
        # Say what the gateway's pool looked like (a bare "[]" told nothing the one time this failed, at load 90).
        pool = pool_of(gateway)
        seen = [
            f"{p.name} runtime={p.runtime} ready={p.ready} free={p.free} deleting={p.deleting} "
            f"taken={p.name in pool._taken} restarts={p.restarts}"
            for p in pool.pods.values()
        ]
        raise AssertionError(f"{e}; the gateway's pool pods: {seen or 'none'}") from None


@contextlib.asynccontextmanager
async def warm_pool_platform(
    cluster: Cluster, kube: KubeClient, sizes: dict[str, int], **settings: Any
) -> AsyncIterator[PlatformUnderTest]:
    """:func:`running_platform` with ``sizes`` pool pods per runtime, each of them free before it is yielded."""
    async with running_platform(cluster, kube, warm_pool_sizes=sizes, **settings) as platform:
        for runtime, n in sizes.items():
            await wait_free_pool_pods(platform.gateway, runtime, n)
        yield platform
