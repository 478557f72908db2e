"""What the warm-pool tests share (tests/integration/test_warm_pool.py, tests/security/test_agent_auth.py,
test_warm_pool_reuse.py, test_gateway_rbac.py): a platform whose gateway keeps warm pools, and its free pods."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from kltest.cluster import Cluster
from kltest.platform import POOL_NS, PlatformUnderTest, running_platform
from kltest.wait import wait_for
from kubelambda.devcluster._podenv import parse_quantity
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.warmpool import PoolPod, WarmPool
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.resources.warmpool import CLAIMED_BY_ANNOTATION, POOL_LABEL


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


async def node_room(kube: KubeClient) -> str:
    """The nodes' allocatable CPU and memory beside what the pods not yet finished request of them (a pod the
    scheduler cannot place stays Pending)."""
    try:
        nodes = (await kube.list(resource_path("v1", "nodes")))["items"]
        pods = (await kube.list(resource_path("v1", "pods")))["items"]
    except ApiError as e:
        return f"  nodes: {e}"
    lines = []
    for node in nodes:
        name, room = node["metadata"]["name"], node["status"].get("allocatable") or {}
        placed = [
            p
            for p in pods
            if p["spec"].get("nodeName") == name
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        asked = {"cpu": 0.0, "memory": 0.0}
        for p in placed:
            for c in p["spec"]["containers"]:
                for resource, value in ((c.get("resources") or {}).get("requests") or {}).items():
                    if resource in asked:
                        asked[resource] += parse_quantity(value)
        lines.append(
            f"  node {name}: {len(placed)} pods request cpu {asked['cpu']:.2f} of {room.get('cpu')}, "
            f"memory {asked['memory'] / 2**30:.1f} GiB of {parse_quantity(room.get('memory', '0')) / 2**30:.1f}"
        )
    return "\n".join(lines)


async def pool_namespace_state(kube: KubeClient) -> str:
    """What the API server holds in the pool namespace: its Deployments, ReplicaSets, pods and latest events (the
    gateway's watch is one view of it; this is the other, for a wait that gave up)."""
    lines: list[str] = []

    async def items(version: str, plural: str) -> list[dict[str, Any]]:
        try:
            listed = await kube.list(resource_path(version, plural, namespace=POOL_NS))
        except ApiError as e:
            lines.append(f"  {plural}: {e}")
            return []
        found: list[dict[str, Any]] = listed["items"]
        return found

    for d in await items("apps/v1", "deployments"):
        st = d.get("status") or {}
        lines.append(
            f"  deployment {d['metadata']['name']}: replicas {d['spec'].get('replicas')} "
            f"generation {d['metadata'].get('generation')} observed {st.get('observedGeneration')} "
            f"updated {st.get('updatedReplicas')} ready {st.get('readyReplicas')} "
            f"available {st.get('availableReplicas')}"
        )
    for rs in await items("apps/v1", "replicasets"):
        st = rs.get("status") or {}
        lines.append(
            f"  replicaset {rs['metadata']['name']}: spec {rs['spec'].get('replicas')} "
            f"have {st.get('replicas')} ready {st.get('readyReplicas')}"
        )
    for p in await items("v1", "pods"):
        meta, st = p["metadata"], p.get("status") or {}
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
        )
        owners = ",".join(o["name"] for o in meta.get("ownerReferences") or []) or "none"
        lines.append(
            f"  pod {meta['name']}: phase {st.get('phase')} ready {ready} pool={labels.get(POOL_LABEL)} "
            f"claimed-by={notes.get(CLAIMED_BY_ANNOTATION)} deleting={meta.get('deletionTimestamp')} "
            f"owner {owners} created {meta.get('creationTimestamp')} ip {st.get('podIP')}"
        )
    events = sorted(
        await items("v1", "events"), key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""
    )
    lines.append(await node_room(kube))
    for e in events[-15:]:
        lines.append(
            f"  event {e.get('lastTimestamp') or e.get('eventTime')} {e['involvedObject'].get('name')} "
            f"{e.get('reason')}: {e.get('message')}"
        )
    return "\n".join(lines) or "  nothing"


async def wait_free_pool_pods(
    gateway: Gateway, runtime: str, n: int, *, timeout: float = 120, kube: KubeClient | None = None
) -> list[PoolPod]:
    """The free ``runtime`` pool pods once the gateway sees ``n``; on timeout fails with the gateway's view of the
    pool and, given the admin client ``kube``, the API server's (:func:`pool_namespace_state`)."""
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
        server = f"; the API server's pool namespace:\n{await pool_namespace_state(kube)}" if kube else ""
        raise AssertionError(f"{e}; the gateway's pool pods: {seen or 'none'}{server}") from None


@contextlib.asynccontextmanager
async def warm_pool_platform(
    cluster: Cluster, kube: KubeClient, sizes: dict[str, int], **settings: Any
) -> AsyncIterator[PlatformUnderTest]:
    """:func:`running_platform` with ``sizes`` pool pods per runtime, each of them free before it is yielded."""
    async with running_platform(cluster, kube, warm_pool_sizes=sizes, **settings) as platform:
        started = time.monotonic()
        print(f"[pool] at start:\n{await pool_namespace_state(kube)}", file=sys.stderr)
        for runtime, n in sizes.items():
            await wait_free_pool_pods(platform.gateway, runtime, n, kube=kube)
        print(f"[pool] {sizes} free after {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield platform
