"""Three gateway replicas (processes) on the local cluster: exact limits, one decider, drain.

The replicas share the slots' count at the leader (a Lease) and it alone autoscales (docs/architecture.md,
"Several gateway replicas"). Calls are spread over the replicas round robin; what the agents saw is read from their
own metrics, so a slot admitted twice would show there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from kltest import Cluster, manifests, wait_for
from kltest.gateways import Replica, Replicas, leader_url, previous_release, ready, start_replicas
from kltest.platform import (
    AGENT_KEY,
    FAST_ASYNC,
    apply_ready,
    async_stream_drained,
    lambda_client,
    python_function,
    start_operator,
)
from kubelambda.agentauth import bearer, function_token
from kubelambda.devcluster.servers import NatsServer
from kubelambda.gateway.balancer import Balancer
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.limits import PREFIX, PROTOCOL, TOKEN_HEADER, peer_token
from kubelambda.gateway.registry import Registry
from kubelambda.gateway.throttler import POOL, RESERVED
from kubelambda.gateway.warmpool import PoolPod, WarmPool
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.names import INVOKE_PORT
from kubelambda.resources.warmpool import CLAIMED_BY_ANNOTATION, POOL_LABEL, POOL_RUNTIME_LABEL

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
POOL_LIMIT = 5
WORKER_CONCURRENCY = 8  # events each replica's worker holds unacknowledged: all a SIGKILL can make run twice
CALLERS = 12  # concurrent sync callers, and as many Event posters, in the SIGKILL test

# Waits for the file event["gate"] (the function runs as a process of the local node, so it sees the test's
# files): every admitted call is in flight at once until the test opens the gate. With event["runs"], each run
# leaves a file named after its request id there (the test counts the runs of each Event).
HANDLER = """
import os
import time


def handler(event, context):
    if event.get("runs"):
        open(os.path.join(event["runs"], f"{context.aws_request_id}.{time.time_ns()}"), "w").close()
    gate = event.get("gate")
    deadline = time.time() + 120
    while gate and not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.05)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"i": event.get("i")}
"""


def settings(nats_server: NatsServer) -> dict[str, Any]:
    return {
        "drain_delay_seconds": 2,
        "nats_url": nats_server.url,
        "async_worker_concurrency": WORKER_CONCURRENCY,
        "async_ack_wait_seconds": 10,
        **FAST_ASYNC,
    }


@pytest.fixture(scope="module")
async def replicas(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Replicas]:
    running = await start_replicas(
        cluster, kube, tmp_path_factory.mktemp("gateways"), 3, pool_limit=POOL_LIMIT, **settings(nats_server)
    )
    try:
        operator = await start_operator(
            cluster, kube, problem_retry_seconds=1.0, gateway_url=running[0].url, agent_key=AGENT_KEY
        )
        try:
            yield running
        finally:
            await operator.stop()
    finally:
        running.stop()


async def deploy(cluster: Cluster, kube: KubeClient, namespace: str, name: str, **spec: Any) -> None:
    spec.setdefault("timeoutSeconds", 30)
    # Up to 16 workers in one instance: the example's 128 MB (and its CPU share) would OOM-kill or starve them.
    spec.setdefault("memoryMB", 512)
    await apply_ready(cluster, kube, namespace, python_function(name, HANDLER, **spec), timeout=120)


async def agents(kube: KubeClient, namespace: str, name: str) -> list[str]:
    pods = await kube.list(
        resource_path("v1", "pods", namespace=namespace),
        params={"labelSelector": f"kubelambda.io/function={name}"},
    )
    return [
        f"{p['status']['podIP']}:{INVOKE_PORT}" for p in pods["items"] if (p.get("status") or {}).get("podIP")
    ]


async def agent_metrics(namespace: str, name: str, endpoint: str) -> dict[str, float]:
    """The agent's invocations by outcome and its in-flight gauge (``inflight``)."""
    token = function_token(AGENT_KEY, namespace, name)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{endpoint}/metrics", headers=bearer(token)) as resp,
    ):
        text = await resp.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kubelambda_agent_invocations_total{"):
            found[line.split('outcome="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kubelambda_agent_inflight_invocations"):
            found["inflight"] = found.get("inflight", 0) + float(line.rsplit(" ", 1)[1])
    return found


async def in_flight(namespace: str, name: str, endpoint: str, count: int) -> None:
    """Until the agent at ``endpoint`` has exactly ``count`` calls in flight."""
    await wait_for(
        lambda: agent_metrics(namespace, name, endpoint),
        lambda m: m.get("inflight") == count,
        what=f"{count} calls of {name} in flight",
        timeout=60,
    )


def outcome(client: Any, name: str, payload: JSON, *, why: bool = False) -> str:
    """ "200", the 429's reason (with its message if ``why``), or the ServiceException."""
    try:
        response = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    except client.exceptions.TooManyRequestsException as e:
        reason = str(e.response.get("Reason"))
        return f"{reason}: {e}" if why else reason
    except client.exceptions.ServiceException as e:
        return f"ServiceException: {e}"
    return str(response["StatusCode"])


async def first_calls(members: list[Replica], namespace: str, name: str) -> list[Any]:
    """A first call through each replica: the instance is ready and every replica knows it. Their clients."""
    clients = [lambda_client(r.url) for r in members]
    for client in clients:
        await wait_for(
            lambda c=client: asyncio.to_thread(outcome, c, f"{namespace}/{name}", {}),
            lambda o: o == "200",
            what="a first call through each replica",
            timeout=120,
        )
    return clients


async def flood_through_a_gate(
    members: list[Replica],
    kube: KubeClient,
    namespace: str,
    name: str,
    *,
    gate: Path,
    limit: int,
    reason: str,
) -> None:
    """30 callers spread over ``members``, each call held in the function until ``gate`` exists: exactly
    ``limit`` run (the agent's own counts say so), the other ``30 - limit`` get 429 with ``reason``."""
    clients = await first_calls(members, namespace, name)
    [endpoint] = await agents(kube, namespace, name)
    before = await agent_metrics(namespace, name, endpoint)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(30) as pool:
        calls = [
            loop.run_in_executor(
                pool, outcome, clients[i % len(clients)], f"{namespace}/{name}", {"gate": str(gate), "i": i}
            )
            for i in range(30)
        ]
        # Every call is either refused or held in the function: then open the gate.
        held = await wait_for(
            lambda: agent_metrics(namespace, name, endpoint),
            lambda m: m.get("inflight", 0) >= limit and sum(c.done() for c in calls) >= 30 - limit,
            what=f"{limit} calls held in the function and {30 - limit} refused",
            timeout=90,
        )
        assert held["inflight"] == limit, held
        gate.touch()
        outcomes = await asyncio.gather(*calls)
    assert sorted(outcomes) == ["200"] * limit + [reason] * (30 - limit), outcomes
    after = await agent_metrics(namespace, name, endpoint)
    assert after.get("success", 0) - before.get("success", 0) == limit, (before, after)
    assert after.get("refused_busy", 0) == 0, after


async def test_of_replicas_claiming_one_pool_pod_exactly_one_gets_it(
    kube: KubeClient, namespace: str
) -> None:
    """The claim is an annotation patch whose precondition is the resourceVersion each replica watched."""
    doc = manifests.pod("pooled", ["sleep", "60"], grace=1)
    doc["metadata"]["labels"] = {POOL_LABEL: "python3.11", POOL_RUNTIME_LABEL: "python3.11"}
    await kube.create(resource_path("v1", "pods", namespace=namespace), doc)
    # Ready: no more status writes change its resourceVersion under the claims.
    body = await wait_for(
        lambda: kube.get(resource_path("v1", "pods", namespace=namespace, name="pooled")),
        lambda p: PoolPod.from_body(p).ready,
        what="the pod ready",
        timeout=60,
    )
    settings = GatewaySettings(warm_pool_namespace=namespace)
    pools = [WarmPool(settings, kube, Registry(), Balancer(), identity=f"replica-{i}") for i in range(3)]
    seen = PoolPod.from_body(body)  # what each replica's watch showed it
    assert seen.free
    won = await asyncio.gather(*(pool._claim(seen) for pool in pools))
    assert sorted(won) == [False, False, True], won
    after = await kube.get(resource_path("v1", "pods", namespace=namespace, name="pooled"))
    winner = next(pool.identity for pool, w in zip(pools, won, strict=True) if w)
    assert after["metadata"]["annotations"][CLAIMED_BY_ANNOTATION] == winner
    assert not PoolPod.from_body(after).free  # no replica's watch offers it again


@pytest.mark.parametrize(
    ("limit", "reason", "concurrency", "scaling"),
    [
        # Ten workers on the one instance: only the replicas' shared count keeps it at five. (minInstances 0:
        # the API wants minInstances x perInstance within reserved; the first calls start the instance.)
        (
            5,
            RESERVED,
            {"reserved": 5, "perInstance": 10},
            {"minInstances": 0, "scaleToZeroAfterSeconds": 600},
        ),
        (POOL_LIMIT, POOL, {"perInstance": 10}, {"minInstances": 1}),
    ],
    ids=["reserved concurrency", "the pool limit"],
)
async def test_a_limit_holds_across_three_replicas(
    replicas: Replicas,
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    tmp_path: Path,
    limit: int,
    reason: str,
    concurrency: JSON,
    scaling: JSON,
) -> None:
    name = "reserved" if reason == RESERVED else "pooled"
    await deploy(
        cluster,
        kube,
        namespace,
        name,
        timeoutSeconds=90,
        concurrency=concurrency,
        scaling={**scaling, "maxInstances": 1},
    )
    await flood_through_a_gate(
        replicas.members, kube, namespace, name, gate=tmp_path / "open", limit=limit, reason=reason
    )


async def scale_of(kube: KubeClient, namespace: str, name: str) -> int:
    scale = await kube.get(
        resource_path("apps/v1", "deployments", namespace=namespace, name=name, subresource="scale")
    )
    return int(scale["spec"].get("replicas", 0))


async def test_a_sigkilled_decider_is_replaced_within_15_s_without_scaling_to_zero(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    scaling = {"minInstances": 0, "maxInstances": 6, "scaleToZeroAfterSeconds": 5}
    await deploy(cluster, kube, namespace, "steady", concurrency={"perInstance": 1}, scaling=scaling)
    await replicas.top_up(3)
    leader = await wait_for(lambda: leader_url(kube), bool, what="a leader")
    others = [r for r in replicas.live if r.url != leader]
    [killed] = [r for r in replicas.live if r.url == leader]
    clients = [lambda_client(r.url) for r in others]
    stop = False
    outcomes: list[str] = []

    def steady(client: Any) -> None:  # one caller at a time per client: two in flight, steadily
        while not stop:
            outcomes.append(outcome(client, f"{namespace}/steady", {"sleep": 0.3}, why=True))

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(len(clients)) as pool:
        callers = [loop.run_in_executor(pool, steady, c) for c in clients]
        try:
            steady_value = await wait_for(
                lambda: scale_of(kube, namespace, "steady"),
                lambda n: n >= 2,
                what="scaled up under load",
                timeout=120,
            )
            leading = {
                r.url: r.log.read_text().count("Leading ") for r in others
            }  # (when it knows all slots)
            killed.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            new = await wait_for(
                lambda: leader_url(kube),
                lambda url: url is not None and url != leader,
                what="a new leader",
                timeout=20,
            )
            # Deciding (and admitting): it holds the Lease and knows every replica's slots.
            [successor] = [r for r in others if r.url == new]
            await wait_for(
                lambda: asyncio.sleep(0, result=successor.log.read_text().count("Leading ")),
                lambda n: n > leading[new],
                what="the new leader knowing every replica's slots",
                timeout=20,
            )
            took = time.monotonic() - killed_at
            assert took <= 15, f"the new decider {new} took {took:.1f} s"
            # 30 s after the kill (watched, not slept): never scaled to zero, and within 1 of the steady value.
            seen: list[int] = []
            while time.monotonic() - killed_at < 30:
                seen.append(await scale_of(kube, namespace, "steady"))
                await asyncio.sleep(0.5)
            assert min(seen) > 0, seen
            assert abs(seen[-1] - steady_value) <= 1, (steady_value, seen)
        finally:
            stop = True
            await asyncio.gather(*callers)
    # Only the dead replica's calls could fail; these went to the others (held while the leader changed). The
    # instances' worker slots are counted at the leader with the function's (gateway/limits.py): two replicas
    # never pick the same busy instance while another is free, so no call is throttled.
    assert set(outcomes) == {"200"}, [(o, outcomes.count(o)) for o in sorted(set(outcomes))]


@dataclass
class Orphans:
    """Three calls of ``orphans`` (reserved 5) held at the agent by ``gate``, sent through ``victim``, which
    is SIGKILLed; ``call(i)`` sends a gated call through a survivor; ``peak``: the most calls the agent was seen
    running since before the kill (sampled every 0.1 s)."""

    namespace: str
    victim: Replica
    survivors: list[Replica]
    clients: list[Any]  # the survivors'
    endpoint: str
    gate: Path
    pool: ThreadPoolExecutor
    peak: list[float] = field(default_factory=list)

    def call(self, i: int) -> asyncio.Future[str]:
        client = self.clients[i % len(self.clients)]
        payload = {"gate": str(self.gate), "i": 100 + i}
        return asyncio.get_running_loop().run_in_executor(
            self.pool, outcome, client, f"{self.namespace}/orphans", payload
        )

    def logs(self) -> str:
        return "".join(r.log.read_text() for r in self.survivors)

    async def running(self) -> dict[str, float]:
        return await agent_metrics(self.namespace, "orphans", self.endpoint)


# The function's timeout: far longer than the wait for the victim's slots to be free again, so they are freed
# because the agent no longer runs the calls (GET /inflight), not because their timeout passed.
ORPHANS_TIMEOUT = 600
FREED_WITHIN = 120


@contextlib.asynccontextmanager
async def orphans_of_a_killed_replica(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str, tmp_path: Path, *, leader: bool
) -> AsyncIterator[Orphans]:
    """Deploys ``orphans`` and yields once the victim (the leader, or not) holding three calls at the agent is
    SIGKILLed; on leaving, opens the gate and waits for the victim's slots to be free again (five calls at once
    all admitted): once the agent no longer runs them, long before the function's timeout after they were
    placed has passed. The agent never ran more than 5."""
    await deploy(
        cluster,
        kube,
        namespace,
        "orphans",
        timeoutSeconds=ORPHANS_TIMEOUT,
        concurrency={"reserved": 5, "perInstance": 10},
        scaling={"minInstances": 0, "maxInstances": 1, "scaleToZeroAfterSeconds": 600},
    )
    await replicas.top_up(3)
    leader_at = await wait_for(lambda: leader_url(kube), bool, what="a leader")
    victim = next(r for r in replicas.live if (r.url == leader_at) == leader)
    survivors = [r for r in replicas.live if r is not victim]
    clients = await first_calls([victim, *survivors], namespace, "orphans")
    [endpoint] = await agents(kube, namespace, "orphans")
    path = f"/2015-03-31/functions/{namespace}/orphans/invocations"
    gate = tmp_path / "open"

    async def through_the_victim(http: aiohttp.ClientSession, i: int) -> None:
        with contextlib.suppress(aiohttp.ClientError):  # its replica dies under it
            async with http.post(f"{victim.url}{path}", data=json.dumps({"gate": str(gate), "i": i})):
                pass

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        sent = [asyncio.create_task(through_the_victim(http, i)) for i in range(3)]
        await in_flight(namespace, "orphans", endpoint, 3)
        with ThreadPoolExecutor(12) as pool:
            orphans = Orphans(namespace, victim, survivors, clients[1:], endpoint, gate, pool)

            async def watch() -> None:
                while True:
                    orphans.peak.append((await orphans.running()).get("inflight", 0))
                    await asyncio.sleep(0.1)

            watching = asyncio.create_task(watch())
            try:
                victim.signal(signal.SIGKILL)
                yield orphans
            finally:
                gate.touch()
                watching.cancel()
        await asyncio.gather(*sent)
    assert orphans.peak, "the agent's in-flight gauge was never read"
    assert max(orphans.peak) <= 5, orphans.peak

    # The victim's slots free again: five calls at once (each held a second, so they overlap) are all admitted.
    async def five_at_once() -> list[str]:
        return await asyncio.gather(
            *(
                asyncio.to_thread(outcome, clients[1 + i % 2], f"{namespace}/orphans", {"sleep": 1})
                for i in range(5)
            )
        )

    await wait_for(
        five_at_once,
        lambda got: got == ["200"] * 5,
        what="the victim's slots free again",
        timeout=FREED_WITHIN,
    )


async def two_admitted_four_refused(orphans: Orphans) -> list[asyncio.Future[str]]:
    """Six gated calls through the survivors: the 2 free slots run (the agent at 5), 4 are refused."""
    early = [orphans.call(i) for i in range(6)]
    held = await wait_for(
        orphans.running,
        lambda m: m.get("inflight", 0) >= 5 and sum(c.done() for c in early) >= 4,
        what="2 more calls held and 4 refused",
        timeout=60,
    )
    assert held["inflight"] == 5, held
    return early


async def late_calls_refused(orphans: Orphans, early: list[asyncio.Future[str]]) -> None:
    """While the victim's calls still run: six more calls all refused, the agent at 5; then the gate opens and
    the early calls end (2 answered, 4 refused)."""
    late = await asyncio.gather(*(orphans.call(10 + i) for i in range(6)))
    assert late == [RESERVED] * 6, late
    assert (await orphans.running())["inflight"] == 5
    orphans.gate.touch()
    assert sorted(await asyncio.gather(*early)) == ["200"] * 2 + [RESERVED] * 4


async def test_a_sigkilled_replicas_calls_keep_their_slots_while_they_run_at_the_agent(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """Reserved 5; a replica that does not lead has 3 calls running at the agent (held by a gate) and is
    SIGKILLed. Its slots stay counted while its member Lease is live, and once the leader has seen the Lease
    expire too (its log says so): the 3 calls still run at the agent, so new calls through the survivors get
    only the 2 free slots, and the agent never sees more than 5. The slots go once the agent no longer runs the
    calls (the leader asks it, GET /inflight), not a function timeout later."""
    async with orphans_of_a_killed_replica(
        replicas, cluster, kube, namespace, tmp_path, leader=False
    ) as orphans:
        early = await two_admitted_four_refused(orphans)  # while the victim's Lease is live
        # The leader has seen the Lease expire: the 3 calls still run at the agent and stay counted (as the
        # victim's placed slots, or, by a leader that took over since, as strays it learnt of from the agent).
        await wait_for(
            lambda: asyncio.sleep(0, result=orphans.logs()),
            lambda log: "is gone: dropping 0 slots; 3 placed" in log or "runs 3 call(s) of" in log,
            what="the leader dropping the victim",
            timeout=60,
        )
        await late_calls_refused(orphans, early)


async def test_a_sigkilled_leaders_calls_running_at_the_agent_stay_counted(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """Reserved 5; the leader itself has 3 calls running at the agent and is SIGKILLed: its count dies with it.
    The new leader asks the agent what it runs (GET /inflight) before it places anything there and counts the 3
    calls older than its term that no live replica holds: new calls get only the 2 free slots, the agent never
    runs more than 5, and once the gate opens (the agent no longer runs them) the slots are free again."""
    async with orphans_of_a_killed_replica(
        replicas, cluster, kube, namespace, tmp_path, leader=True
    ) as orphans:
        early = await two_admitted_four_refused(orphans)  # once a new leader counts (the calls wait for it)
        new = await wait_for(
            lambda: leader_url(kube), lambda u: u not in (None, orphans.victim.url), what="a leader"
        )
        assert new in {r.url for r in orphans.survivors}
        assert "runs 3 call(s) of" in orphans.logs()
        await late_calls_refused(orphans, early)


async def test_sigterm_drains_the_calls_in_flight(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    one = {"minInstances": 1, "maxInstances": 1}
    await deploy(cluster, kube, namespace, "drained", concurrency={"perInstance": 3}, scaling=one)
    await replicas.top_up(2)
    # The leader: its drain also hands the Lease on, and its slots to the next leader.
    leader = await wait_for(lambda: leader_url(kube), bool, what="a leader")
    [target] = [r for r in replicas.live if r.url == leader]
    client = lambda_client(target.url)
    await wait_for(
        lambda: asyncio.to_thread(outcome, client, f"{namespace}/drained", {}),
        lambda o: o == "200",
        what="a first call",
        timeout=120,
    )
    [endpoint] = await agents(kube, namespace, "drained")
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(3) as pool:
        calls = [
            loop.run_in_executor(pool, outcome, client, f"{namespace}/drained", {"sleep": 4, "i": i})
            for i in range(3)
        ]
        await in_flight(namespace, "drained", endpoint, 3)
        target.signal(signal.SIGTERM)
        # Not ready at once (Services stop sending), while the calls in flight go on.
        await wait_for(
            lambda: ready(target.url), lambda status: status == 503, what="readiness off", timeout=5
        )
        outcomes = await asyncio.gather(*calls)
    assert outcomes == ["200"] * 3, outcomes
    code = await asyncio.to_thread(target.process.wait, 60)
    assert code == 0, target.log.read_text()[-3000:]
    # The others carry on, under a new leader.
    survivor = replicas.live[0]
    assert await asyncio.to_thread(outcome, lambda_client(survivor.url), f"{namespace}/drained", {}) == "200"
    assert await leader_url(kube) == survivor.url


async def test_a_sigkilled_replica_fails_only_its_own_calls_and_loses_no_event(
    replicas: Replicas,
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    """1,000 sync calls and 1,000 Events spread over three replicas; a replica that does not lead is SIGKILLed
    mid-run (and taken out of the spread first, as a Service does once its endpoint goes). Three replicas of
    their own, with the default pool limit (the module's is 5). The Events' success records go to a NATS subject
    a stream captures (published with ``Nats-Msg-Id``, docs/async.md): exactly one per accepted Event."""
    replicas.stop()
    fresh = await start_replicas(cluster, kube, tmp_path, 3, **settings(nats_server))
    nc = await nats.connect(nats_server.url)
    try:
        stored = RecordStream(nc.jetstream(), f"HA_OK_{namespace.replace('-', '_')}", f"haok.{namespace}")
        await stored.create()
        runs = tmp_path / "runs"
        runs.mkdir()
        await under_load_kill_one(fresh, cluster, kube, namespace, stored, runs)
        await async_stream_drained(nats_server.url, timeout=120)  # no redelivery still to come
        seen = await stored.request_ids()
        ran = [f.name.split(".")[0] for f in runs.iterdir()]
    finally:
        await nc.close()
        fresh.stop()
    twice = {rid for rid in set(ran) if ran.count(rid) > 1}
    # At-least-once runs: only the events the dead replica's worker held unacknowledged may have run twice.
    print(f"{len(twice)} Event(s) ran twice (the dead worker's, redelivered); {len(seen)} records stored")
    assert len(twice) <= WORKER_CONCURRENCY, twice
    recorded_twice = {rid for rid in set(seen) if seen.count(rid) > 1}
    assert recorded_twice == set(), (
        f"{len(recorded_twice)} Events recorded twice: {sorted(recorded_twice)[:10]}"
    )


@dataclass
class RecordStream:
    """A JetStream stream capturing a destination subject (its default duplicate window, 2 minutes)."""

    js: Any
    name: str
    subject: str

    async def create(self) -> None:
        await self.js.add_stream(
            StreamConfig(name=self.name, subjects=[self.subject], storage=StorageType.FILE)
        )

    async def request_ids(self) -> list[str]:
        """The request id of every record stored, in order."""
        last = int((await self.js.stream_info(self.name)).state.last_seq)
        found = []
        for seq in range(1, last + 1):
            msg = await self.js.get_msg(self.name, seq)
            found.append(json.loads(msg.data or b"")["requestContext"]["requestId"])
        return found


async def under_load_kill_one(
    replicas: Replicas, cluster: Cluster, kube: KubeClient, namespace: str, stored: RecordStream, runs: Path
) -> None:
    await deploy(
        cluster,
        kube,
        namespace,
        "mixed",
        timeoutSeconds=30,
        # Room for every sync caller and every replica's worker at once (12 + 3 x 8 of 48 slots): a call the
        # instances had no room for would be a 429, not a failure of the kill.
        concurrency={"perInstance": 16},
        scaling={"minInstances": 3, "maxInstances": 3},
        **{"async": {"maxRetries": 2, "onSuccess": {"nats": stored.subject}}},
    )
    leader = await wait_for(lambda: leader_url(kube), bool, what="a leader")
    members = replicas.live
    victim = next(r for r in members if r.url != leader)
    dead: set[str] = set()
    path = f"/2015-03-31/functions/{namespace}/mixed/invocations"
    for r in members:
        await wait_for(
            lambda r=r: asyncio.to_thread(outcome, lambda_client(r.url), f"{namespace}/mixed", {}),
            lambda o: o == "200",
            what="a first call through each replica",
            timeout=120,
        )
    failed: list[str] = []  # the replica each failed call went to
    accepted: set[str] = set()
    done = 0
    sync_work = iter(range(1000))
    event_work = iter(range(1000))

    def target(k: int) -> str:
        live = [r.url for r in members if r.url not in dead]
        return live[k % len(live)]

    async def sync_caller(http: aiohttp.ClientSession, k: int) -> None:
        nonlocal done
        for i in sync_work:
            url = target(k + i)
            try:
                async with http.post(f"{url}{path}", data=json.dumps({"i": i}).encode()) as resp:
                    said = await resp.read()
                    if resp.status != 200:
                        failed.append(f"{url} {resp.status} {said[:300]!r}")
            except aiohttp.ClientError:
                failed.append(url)
            done += 1

    async def event_poster(http: aiohttp.ClientSession, k: int) -> None:
        for i in event_work:
            url = target(k + i)
            try:
                async with http.post(
                    f"{url}{path}",
                    data=json.dumps({"i": i, "runs": str(runs)}).encode(),
                    headers={"X-Amz-Invocation-Type": "Event"},
                ) as resp:
                    if resp.status == 202:
                        accepted.add(resp.headers["X-Amzn-RequestId"])
                    else:
                        failed.append(f"{url} {resp.status} (Event) {(await resp.read())[:300]!r}")
            except aiohttp.ClientError:
                failed.append(url)

    async def kill_mid_run() -> None:
        await wait_for(
            lambda: asyncio.sleep(0, result=done), lambda n: n >= 300, what="300 calls", timeout=300
        )
        dead.add(victim.url)  # no new calls go there; those in flight there now may fail
        victim.signal(signal.SIGKILL)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(
            kill_mid_run(),
            *(sync_caller(http, k) for k in range(CALLERS)),
            *(event_poster(http, k) for k in range(CALLERS)),
        )
    assert victim.process.poll() is not None, "the replica was killed before the calls ended"
    # Only calls in flight on the killed replica failed: at most one per caller.
    assert [f for f in failed if f != victim.url] == [], failed
    assert len(failed) <= 2 * CALLERS, failed
    print(
        f"\nSIGKILL of {victim.url}: {len(failed)} call(s) in flight there failed; {len(accepted)} Events accepted"
    )

    async def missing() -> set[str]:
        return accepted - set(await stored.request_ids())

    await wait_for(missing, lambda m: not m, what="a record of every Event", timeout=300)


PREVIOUS_RELEASE = "0948460f40e853935900c6a9b4487815169bd2ac"  # the gateway before peer protocol 2


async def test_replicas_of_the_previous_release_and_this_one_count_slots_together(
    replicas: Replicas,
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    """A rolling update: a replica of the previous release (its code from git, peer protocol 1, no ``protocol``
    field) leads two of this one; then a replica of this release leads one of the previous. Either way reserved 5
    holds over 30 callers spread over all three (the agent runs exactly 5, 25 get 429). A replica of a protocol
    the leader no longer counts is refused with a 409 naming both protocols."""
    replicas.stop()
    old = previous_release(PREVIOUS_RELEASE, tmp_path)
    mixed = await start_replicas(
        cluster, kube, tmp_path, 1, pool_limit=POOL_LIMIT, **settings(nats_server), extra_env=old
    )
    try:
        await wait_for(
            lambda: leader_url(kube), lambda url: url == mixed[0].url, what="the old replica leading"
        )
        await mixed.top_up(3)
        await deploy(
            cluster,
            kube,
            namespace,
            "rolling",
            timeoutSeconds=90,
            concurrency={"reserved": 5, "perInstance": 10},
            scaling={"minInstances": 0, "maxInstances": 1, "scaleToZeroAfterSeconds": 600},
        )
        flood = {"limit": 5, "reason": RESERVED}
        await flood_through_a_gate(mixed.live, kube, namespace, "rolling", gate=tmp_path / "one", **flood)
        # The old leader drains (SIGTERM hands the Lease on to a new replica); another old one joins.
        mixed[0].signal(signal.SIGTERM)
        assert await asyncio.to_thread(mixed[0].process.wait, 60) == 0, mixed[0].log.read_text()[-3000:]
        new = {mixed[1].url, mixed[2].url}
        leader = await wait_for(
            lambda: leader_url(kube), lambda url: url in new, what="a new replica leading"
        )
        await mixed.top_up(3, extra=old)
        await flood_through_a_gate(mixed.live, kube, namespace, "rolling", gate=tmp_path / "two", **flood)
        # A replica of protocol 0 (none speaks it): refused, with both protocols named.
        body = {"member": "http://127.0.0.1:1#old", "protocol": 0, "seq": 1, "key": f"{namespace}/rolling"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{leader}{PREFIX}/acquire", json=body, headers={TOKEN_HEADER: peer_token(AGENT_KEY)}
            ) as resp,
        ):
            said = await resp.json()
        assert resp.status == 409, said
        assert f"speaks peer protocol 0; the leader speaks {PROTOCOL}" in said["message"], said
    finally:
        mixed.stop()
