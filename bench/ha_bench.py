"""Benchmarks of several gateway replicas (issue 18). Figures, never assertions.

On a local cluster of its own (``kubelambda dev serve``), one warm instance of an echo function, and gateway
processes started here (auth off, the platform's agent key):

1. Warm throughput and p50 / p99 through one replica counting alone (the baseline: no ``PEER_URL``) and through
   three replicas sharing the count at their leader, the calls spread round robin, in the same run, with the same
   client, connections and payload.
2. The latency the shared count adds: p50 through one replica that does not lead (one round trip to the leader
   per call: the slot and the instance in one answer; the releases go back batched, after the response) beside
   the lone replica, at 12 connections and again at 1 and 4, where no queueing hides it.
3. Decider failover: the leader SIGKILLed, the seconds until another replica holds the leader Lease (``--kills``
   times; the replica is replaced after each).
4. A SIGKILLed replica's slots (``--dead-slots`` rounds): ``held`` (reserved 3, timeout 30 s) has its 3 slots held
   by calls of 3 s through a replica that does not lead, which is SIGKILLed at once; the seconds until 3 calls
   through the survivors are all admitted again. Baseline in the same run: the same with the replicas of
   :data:`BEFORE` (the previous commit, from git), which kept those slots until the function's timeout.

On this 2-core machine the three replicas, the agent and the load generator share two cores: the ratio says what
the extra processes and round trips cost here, not what three nodes would give.

Run: ``.venv/bin/python bench/ha_bench.py --requests 3000 --kills 3``; only 4.: ``--only-dead-slots``.

Section 4, last run (2026-12-05 20:45, load 22-47, ``--only-dead-slots --dead-slots 2``): a SIGKILLed non-leader's
3 slots (its calls of 3 s ended) admitted again after 33.5 and 32.8 s with the replicas of 93d123c (held until the
function's timeout, 30 s, after the Lease expired), 5.1 and 4.9 s with this checkout (the Lease, 4 s, and the
next question to the agent).

Last run (2026-12-05 17:40, load 26-46 with test_ha running beside it, ``--requests 600 --rounds 2 --kills 2
--low-requests 150``, strays counted by a new leader): 12 connections: 1 replica counting alone 32 req/s, p50 258 ms;
3 replicas sharing the count 26 req/s, p50 346 ms; one non-leader replica 34 req/s, p50 289 ms (added +31 ms at
p50). 1 connection: p50 9.0 ms alone, 27.0 ms through a non-leader (**+18 ms**); 4 connections: 73 vs 108 ms
(+35 ms). Decider failover: a new leader after 3.9 and 3.8 s, a call through a survivor admitted again after 4.8
and 8.2 s (the new leader has every replica's slots and has asked the agent what it runs; LEASE_SECONDS 4, RENEW 1).

The run before (2026-12-05 14:05, 2 cores at load ~30 with a CI run beside it, ``--requests 600 --rounds 2 --kills 2
--low-requests 150``, per-instance slots counted at the leader, the instance assigned in the slot's answer):
12 connections: 1 replica counting alone 71 req/s, p50 158 ms; 3 replicas sharing the count 33 req/s, p50 311 ms;
one non-leader replica 30 req/s, p50 356 ms (added +199 ms at p50). Where no queueing hides it: 1 connection,
p50 17 ms alone, 43 ms through a non-leader (**+26 ms**, the one round trip to the leader on a starved machine);
4 connections, 72 ms vs 143 ms (+71 ms). Decider failover 4.2, 4.0 s (LEASE_SECONDS 4, RENEW 1). An earlier run
(before per-instance counting, load 30, 2,000 x 2 at 12 connections): 88 vs 45 req/s, +129 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import Platform, inline_function, load_average, pct, platform, post_load, wait, warm_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kltest.gateways import previous_release
from kubelambda.agentauth import bearer, function_token
from kubelambda.devcluster._ports import free_port
from kubelambda.gateway.peers import LEADER_LEASE, url_of
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.names import INVOKE_PORT

NS = "bench"
HANDLER = "def handler(event, context):\n    return event\n"
SLEEPER = (
    "import time\n\n\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {}\n"
)
# The gateway before the leader asked the agents about a dead replica's slots (they stayed a function timeout).
BEFORE = "93d123cca717b21fefc8f7cbef8d2b84aa963b0a"
HELD_RESERVED = 3


class Gateways:
    """``kubelambda gateway`` processes of this bench; ``shared`` ones elect a leader through Leases."""

    def __init__(self, state_dir: Path, kubeconfig: str, **extra: str) -> None:
        self.base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")},
            "KUBELAMBDA_GATEWAY_KUBECONFIG": kubeconfig,
            "KUBELAMBDA_GATEWAY_HOST": "127.0.0.1",
            "KUBELAMBDA_GATEWAY_AUTH_MODE": "none",
            "KUBELAMBDA_GATEWAY_AGENT_KEY": (state_dir / "agent.key").read_text().strip(),
            "KUBELAMBDA_GATEWAY_LEASE_SECONDS": "4",
            "KUBELAMBDA_GATEWAY_LEASE_RENEW_SECONDS": "1",
            **extra,
        }
        self.state_dir = state_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "kubelambda", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def start(self, *, shared: bool) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**self.base, "KUBELAMBDA_GATEWAY_PORT": str(port)}
        if shared:
            env["KUBELAMBDA_GATEWAY_PEER_URL"] = url
        self.procs[url] = self._spawn(env, self.state_dir / f"gateway-{port}.log")

        async def readyz() -> int:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
                return resp.status

        await wait(readyz, lambda s: s == 200, f"gateway {url} ready", 60, tolerate_errors=True)
        return url

    def kill(self, url: str, sig: signal.Signals = signal.SIGKILL) -> None:
        proc = self.procs.pop(url)
        proc.send_signal(sig)
        proc.wait(60)

    def stop(self) -> None:
        for url in list(self.procs):
            self.kill(url)


async def leader(kube: KubeClient) -> str | None:
    lease = await kube.get_or_none(
        resource_path("coordination.k8s.io/v1", "leases", namespace="kubelambda-system", name=LEADER_LEASE)
    )
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
    return url_of(holder) if holder else None


async def spread_load(
    http: aiohttp.ClientSession, urls: list[str], path: str, requests: int, connections: int
) -> tuple[float, list[float]]:
    """``requests`` spread evenly over ``urls`` (``connections`` in all); returns (requests/s, latencies ms)."""
    started = time.perf_counter()
    parts = await asyncio.gather(
        *(post_load(http, f"{u}{path}", requests // len(urls), connections // len(urls)) for u in urls)
    )
    wall = time.perf_counter() - started
    return (requests // len(urls)) * len(urls) / wall, [ms for _, lat in parts for ms in lat]


def row(name: str, rps: float, latencies: list[float]) -> str:
    return f"{name:<46} {rps:>8.0f} req/s   p50 {pct(latencies, 0.5):6.2f} ms   p99 {pct(latencies, 0.99):7.2f} ms"


async def low_concurrency(
    args: argparse.Namespace, http: aiohttp.ClientSession, lone: str, follower: str, path: str
) -> None:
    """The added p50 where it is not hidden behind queueing: 1 and 4 connections, the lone replica beside a
    replica that does not lead (its slot and instance come from the leader in one round trip, the release goes
    back batched, off the response's path), interleaved in the same run."""
    for connections in (1, 4):
        alone: list[float] = []
        shared: list[float] = []
        for _ in range(args.rounds):
            alone += (await spread_load(http, [lone], path, args.low_requests, connections))[1]
            shared += (await spread_load(http, [follower], path, args.low_requests, connections))[1]
        print(
            f"{connections} connection(s), {args.low_requests} x {args.rounds}: p50 alone {pct(alone, 0.5):.2f} ms, "
            f"not the leader {pct(shared, 0.5):.2f} ms, added {pct(shared, 0.5) - pct(alone, 0.5):+.2f} ms"
        )


async def running_at_agent(p: Platform) -> int:
    """How many calls ``held``'s one instance runs (its agent's ``GET /inflight``)."""
    pods = await p.kube.list(
        resource_path("v1", "pods", namespace=NS), params={"labelSelector": "kubelambda.io/function=held"}
    )
    [ip] = [pod["status"]["podIP"] for pod in pods["items"] if (pod.get("status") or {}).get("podIP")]
    token = function_token((p.state_dir / "agent.key").read_text().strip(), NS, "held")
    async with p.http.get(f"http://{ip}:{INVOKE_PORT}/inflight", headers=bearer(token)) as resp:
        return len((await resp.json())["agesMs"])


async def dead_slots(p: Platform, gateways: Gateways) -> float:
    """Seconds from the SIGKILL of a replica (not the leader) whose calls hold all of ``held``'s reserved slots
    and end 3 s later, until as many calls through the survivors are all admitted again."""
    path = f"/2015-03-31/functions/{NS}/held/invocations"
    urls = [await gateways.start(shared=True) for _ in range(3)]
    try:
        head = await wait(lambda: leader(p.kube), lambda u: u in urls, "a leader of the three", 60)
        victim, *survivors = sorted(urls, key=lambda u: u == head)

        async def calls(through: list[str], sleep: float) -> list[int]:
            async def one(i: int) -> int:
                url = through[i % len(through)]
                async with p.http.post(f"{url}{path}", data=f'{{"sleep": {sleep}}}'.encode()) as resp:
                    return resp.status

            return await asyncio.gather(*(one(i) for i in range(HELD_RESERVED)))

        for url in urls:  # each replica knows the instance (and admits again, after a previous set's leader)
            await wait(
                lambda u=url: calls([u], 0),
                lambda s: s == [200] * 3,
                "calls admitted",
                120,
                tolerate_errors=True,
            )

        async def hold() -> None:
            with contextlib.suppress(aiohttp.ClientError):  # its replica dies under it
                await calls([victim], 3)

        holding = asyncio.create_task(hold())
        await wait(
            lambda: running_at_agent(p), lambda n: n == HELD_RESERVED, "the victim's calls running", 30
        )
        gateways.kill(victim)
        killed_at = time.monotonic()
        await wait(lambda: calls(survivors, 0.5), lambda s: s == [200] * 3, "the slots admitted again", 120)
        took = time.monotonic() - killed_at
        await holding
        return took
    finally:
        for url in urls:
            if url in gateways.procs:
                gateways.kill(url, signal.SIGTERM)  # hands the leader Lease on and deletes its member Lease


async def compare_dead_slots(args: argparse.Namespace, p: Platform) -> None:
    """Section 4: the previous commit's replicas (baseline) and this checkout's, alternately."""
    held = inline_function(
        "held",
        NS,
        SLEEPER,
        timeoutSeconds=30,
        scaling={"minInstances": 1, "maxInstances": 1},
        concurrency={"perInstance": HELD_RESERVED, "reserved": HELD_RESERVED},
    )
    await p.kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), held)
    with tempfile.TemporaryDirectory(prefix="kl-bench-ha-before-") as tmp:
        before = previous_release(BEFORE, Path(tmp))
        took: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(args.dead_slots):
            for name, extra in (("before", before), ("now", {})):
                gateways = Gateways(p.state_dir, p.state.kubeconfig, **extra)
                try:
                    took[name].append(await dead_slots(p, gateways))
                finally:
                    gateways.stop()
                print(f"  {name}: {took[name][-1]:.1f} s ({load_average()})", flush=True)
    print(
        f"a SIGKILLed replica's {HELD_RESERVED} slots (calls of 3 s, timeout 30 s, LEASE_SECONDS 4) usable again "
        f"after: {BEFORE[:7]} (baseline) "
        + ", ".join(f"{t:.1f} s" for t in took["before"])
        + "; this checkout "
        + ", ".join(f"{t:.1f} s" for t in took["now"])
    )


async def run(args: argparse.Namespace, p: Platform) -> None:
    gateways = Gateways(p.state_dir, p.state.kubeconfig)
    path = f"/2015-03-31/functions/{NS}/echo/invocations"
    kube, http = p.kube, p.http
    try:
        doc = warm_function("echo", NS, HANDLER, per_instance=args.connections)
        await kube.create(resource_path("kubelambda.io/v1alpha1", "functions", namespace=NS), doc)
        lone = await gateways.start(shared=False)

        async def echo() -> int:
            async with http.post(f"{lone}{path}", data=b"{}") as resp:
                return resp.status

        await wait(echo, lambda s: s == 200, "the warm instance through the lone gateway", 180)
        urls = [await gateways.start(shared=True) for _ in range(3)]
        head = await wait(lambda: leader(kube), lambda u: u in urls, "a leader of the three", 60)
        follower = next(u for u in urls if u != head)
        for u in urls:  # warm each one's connections and registry
            await post_load(http, f"{u}{path}", 50, 2)
        await post_load(http, f"{lone}{path}", 50, 2)
        results = []
        for _ in range(args.rounds):  # interleaved, so that drift in the machine's load hits both alike
            results.append(
                (
                    "1 replica, counting alone (baseline)",
                    *await spread_load(http, [lone], path, args.requests, args.connections),
                )
            )
            results.append(
                (
                    "3 replicas, shared count, spread",
                    *await spread_load(http, urls, path, args.requests, args.connections),
                )
            )
            results.append(("1 of 3 replicas, not the leader (round trip)", *await spread_load(
                http, [follower], path, args.requests, args.connections)))  # fmt: skip
        print(f"\nwarm echo, {args.requests} requests x {args.rounds} rounds, {args.connections} connections")
        for name in dict.fromkeys(r[0] for r in results):
            rps = [r[1] for r in results if r[0] == name]
            latencies = [ms for r in results if r[0] == name for ms in r[2]]
            print(row(name, sum(rps) / len(rps), latencies))
        base = [ms for r in results if r[0].startswith("1 replica") for ms in r[2]]
        shared = [ms for r in results if r[0].startswith("1 of 3") for ms in r[2]]
        print(f"added p50 of the shared count: {pct(shared, 0.5) - pct(base, 0.5):+.2f} ms")
        await low_concurrency(args, http, lone, follower, path)
        gateways.kill(lone)
        took, served = [], []
        for _ in range(args.kills):
            head = await wait(lambda: leader(kube), lambda u: u in gateways.procs, "a leader", 60)
            survivor = next(u for u in gateways.procs if u != head)
            gateways.kill(head)
            killed_at = time.monotonic()
            await wait(
                lambda: leader(kube), lambda u: u is not None and u in gateways.procs, "a new leader", 60
            )
            took.append(time.monotonic() - killed_at)

            async def through_survivor(url: str = survivor) -> int:
                async with http.post(f"{url}{path}", data=b"{}") as resp:
                    return resp.status

            # Admitting again: the new leader has every replica's slots and has asked the agents what they run.
            await wait(
                through_survivor,
                lambda s: s == 200,
                "a call admitted by the new leader",
                60,
                tolerate_errors=True,
            )
            served.append(time.monotonic() - killed_at)
            await gateways.start(shared=True)
        print(
            "decider failover after SIGKILL (LEASE_SECONDS 4, RENEW 1): new leader "
            + ", ".join(f"{t:.1f} s" for t in took)
            + "; first call admitted again "
            + ", ".join(f"{t:.1f} s" for t in served)
        )
    finally:
        gateways.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--low-requests", type=int, default=400)  # per round at 1 and at 4 connections
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--dead-slots", type=int, default=1)  # rounds of section 4
    parser.add_argument("--only-dead-slots", action="store_true")
    args = parser.parse_args()
    async with platform("ha", NS, connections=0) as p:
        if not args.only_dead_slots:
            await run(args, p)
        await compare_dead_slots(args, p)


if __name__ == "__main__":
    asyncio.run(main())
