"""Exact concurrency limits across gateway replicas: one replica, the leader, counts every slot and every
instance's worker slots.

A replica admits an invocation by asking the leader (gateway/peers.py) for a slot: ``POST /_kubelambda/limits/
acquire`` with the function, its reserved concurrency, a sequence number of the asking replica and, when the
function has ready instances, their addresses and ``perInstance``; the leader counts the slot in its
:class:`~kubelambda.gateway.throttler.Throttler` or answers Lambda's 429 reason, and in the same answer assigns
an instance with a free worker slot, counted in its own :class:`~kubelambda.gateway.balancer.Balancer` over
every replica's calls. So ``perInstance`` holds across replicas too: two replicas never pick the same busy
instance while another is idle. A call whose instance was not assigned with the slot (all busy, a cold start,
another try after a refusal) asks for one (``place``, held at the leader up to ``wait`` for one to free up).
The slot and its instance are given back in one ``release`` when the response is complete, sent in the
background and batched with the other releases of the moment. The leader admits its own invocations the same
way, without the round trip. So the limits are exact whatever the number of replicas, at the cost of one
loopback-or-pod-network round trip per warm invocation.

Every replica also sends the leader, every ``sync_seconds`` and at once when the leader changes, the full list of
the slots it holds and their instances (``sync``): a lost release is corrected by it, and a new leader learns
every replica's slots before it admits anything (it waits for a sync from every live member, or for that member's
Lease to expire).

A replica that dies (SIGKILL) keeps its slots counted until its member Lease expires (``lease_seconds``): the
limits are then conservative (a caller may be throttled while its slots are in fact free). Once the Lease has
expired, the slots it had not yet sent to an instance go; the ones it had, whose invocations keep running at the
agents (an agent does not stop a function when its caller goes), stay counted while the agent still runs as many
calls that arrived before the leader saw the Lease expired (``GET /inflight``, asked every ``sync_seconds``; a
dead replica sent nothing after it stopped renewing), and at the latest until the function's timeout after they
were placed has passed (the agent ends the invocation by then): the limit is never exceeded by new calls, and
the slots are usable again about a Lease duration after the kill, or once the calls end.

A dead *leader*'s own slots die with its memory, but its calls keep running at the agents. So a new leader asks
every instance it knows (and, later, any instance before it places a call there) which calls it runs and since
when (the agent's ``GET /inflight``): the calls that arrived before this leader took over, less the live
replicas' slots it placed there before (they are in their syncs), are *strays*, counted against their function
and the instance like slots until the agent no longer runs them (it is asked again every ``sync_seconds``). A
call is never placed on an instance before the leader has heard from it (docs/architecture.md).

Every request between replicas names its ``protocol`` (:data:`PROTOCOL`), so replicas of two releases work
together during a rolling update: a leader counts the slots of members that speak :data:`MIN_PROTOCOL` or newer
(a request without the field is protocol 1, a replica from before it) and refuses older ones with a 409 naming
both protocols; a member refused so answers its calls with a retryable ServiceException saying why, never counts
on its own. A leader from before per-instance counting answers ``place`` 404: the member then picks the instance
with its own count (those leaders also count no strays).

The requests between replicas carry a token derived from the platform's agent key (an HMAC), as the agents'
tokens are: tenants reach the gateway's port, never this API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kubelambda.agentauth import bearer, function_token
from kubelambda.gateway.balancer import Balancer
from kubelambda.gateway.guarded import GuardedRoutes
from kubelambda.gateway.peers import Peers, url_of
from kubelambda.gateway.proxy import longest_wait
from kubelambda.gateway.throttler import LimitsUnavailable, Throttled, Throttler
from kubelambda.kube import ApiError

logger = logging.getLogger(__name__)

PREFIX = "/_kubelambda/limits"
TOKEN_HEADER = "X-Kubelambda-Peer-Token"
Endpoints = Callable[[], Sequence[str]]
Instances = Callable[[], Iterable[tuple[str, str, str]]]  # (Function object, what reserved counts, endpoint)
PROTOCOL = 2  # 1: per-instance slots ("slots" in sync, place/unplace); 2: "protocol" in requests, strays
MIN_PROTOCOL = 1
RELEASED_SECONDS = (
    30.0  # how long the leader remembers a released slot against syncs taken before the release
)


def peer_token(agent_key: str) -> str:
    return hmac.new(agent_key.encode(), b"kubelambda gateway peers", hashlib.sha256).hexdigest()


def refuse_if_too_old(status: int, said: dict[str, Any]) -> None:
    """A leader's 409: it counts no slot of this replica's protocol (a rolling update across too many
    releases). Raised as a retryable error naming both, never counted here instead."""
    if status == 409:
        logger.error("The gateway leader refuses this replica: %s", said.get("message"))
        raise LimitsUnavailable(f"Concurrency is counted by a gateway replica that refuses this one: {said}")


@dataclass
class Ticket:
    """One admitted invocation: ``seq`` names its slot at the leader; ``placed``, the instance it holds a
    worker slot of (assigned with the slot, or by :meth:`place`)."""

    seq: int
    placed: str | None = None


@dataclass(frozen=True)
class Admission:
    """What an invocation asks for: a slot of the Function object ``key`` (reserved concurrency counts
    ``function``, all its versions), and, when it has ready instances, one of ``endpoints`` with fewer than
    ``per_instance`` calls; ``timeout``: the function's."""

    key: str
    reserved: int | None
    function: str | None = None
    endpoints: Sequence[str] = ()
    per_instance: int = 1
    timeout: float = 900.0


@dataclass(frozen=True)
class Choice:
    """An instance to find: one of ``endpoints()`` (read again while waiting) with fewer than ``per_instance``
    calls, not in ``avoid``, waiting up to ``wait`` seconds for one to free up."""

    endpoints: Endpoints
    per_instance: int
    wait: float
    avoid: frozenset[str] = frozenset()


@dataclass
class Held:
    """A slot: the Function object (``ns/name``), what reserved concurrency counts (``ns/function``), the
    instance it was placed on, the function's timeout, and (the leader's clock) by when an invocation placed on
    that instance is over at the latest."""

    key: str
    group: str
    timeout: float = 900.0
    endpoint: str | None = None
    until: float = math.inf
    old: bool = False  # leader: placed before this leader took over (by its predecessor)


@dataclass
class Strays:
    """Calls an instance runs that no live replica holds (sent by a leader that died), as the leader counts them
    against the Function object ``key`` (reserved concurrency: ``group``) and the instance."""

    key: str
    group: str
    count: int = 0


_LOCAL = Ticket(0)  # every ticket of LocalLimits, which never changes one


@dataclass
class LocalLimits:
    """One gateway replica: its own :class:`Throttler` and :class:`Balancer` are the whole count.

    The invoke path holds a slot from :meth:`enter` to :meth:`leave` (plain calls rather than a context manager:
    they run on every invocation, and each context manager layer costs Python calls)."""

    throttler: Throttler
    balancer: Balancer

    async def enter(self, want: Admission) -> Ticket:
        self.throttler.acquire(want.key, reserved=want.reserved, function=want.function)
        return _LOCAL  # one replica's slots need no name, nor an instance assigned with them

    def leave(self, want: Admission, ticket: Ticket) -> None:
        self.throttler.release(want.key, function=want.function)

    def take(self, ticket: Ticket, endpoints: Sequence[str], per_instance: int) -> str | None:
        """An instance of ``endpoints`` with a free worker slot now, without waiting (None: :meth:`place`)."""
        return self.balancer.try_acquire(endpoints, per_instance)

    async def place(self, ticket: Ticket, want: Choice) -> str | None:
        return await self.balancer.acquire(
            want.endpoints, want.per_instance, timeout=want.wait, avoid=want.avoid
        )

    def unplace(self, ticket: Ticket, endpoint: str, *, final: bool) -> None:
        self.balancer.release(endpoint)

    @property
    def in_flight_here(self) -> int:
        return self.throttler.total


@dataclass
class SharedLimits:
    throttler: Throttler  # the leader's counts of every replica's slots (empty on the others)
    peers: Peers
    http: Callable[[], aiohttp.ClientSession]
    token: str
    balancer: Balancer = field(default_factory=Balancer)  # this replica's own calls per instance (warm pools)
    wait_seconds: float = 15.0  # how long an admission waits for a leader that counts slots
    sync_seconds: float = 1.0
    release_batch_seconds: float = 0.005  # releases of the moment go to the leader in one request
    held: dict[int, Held] = field(default_factory=dict)  # this replica's slots, by sequence number
    seq: int = 0
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # leader: every member's slots are known
    instances: Balancer = field(default_factory=Balancer)  # leader: every replica's calls per instance
    _ledger: dict[str, dict[int, Held]] = field(default_factory=dict)  # leader: member → its slots
    _gone: dict[str, float] = field(
        default_factory=dict
    )  # leader: members whose Lease expired, slots still counted → when it saw the Lease expired (monotonic)
    _released: dict[str, dict[int, float]] = field(
        default_factory=dict
    )  # leader: member → seq → when released
    _releasing: list[int] = field(default_factory=list)  # released here, not yet sent to the leader
    _asking: set[int] = field(default_factory=set)  # slots asked of the leader, not answered yet
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _leader_changed: asyncio.Event = field(default_factory=asyncio.Event)
    agent_key: str | None = None  # to ask the agents what they run (their function's token)
    instances_known: Instances = lambda: ()  # every ready instance (the registry): a new leader asks them all
    _term: int = 0  # leader changes seen: an agent's answer from before the last one is not used
    _since: float = 0.0  # leader: when it took over (monotonic)
    _heard: dict[str, Strays] = field(default_factory=dict)  # leader: instances heard since, their strays
    _hearing: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # leader: instances being asked
    _checking: dict[str, asyncio.Task[None]] = field(
        default_factory=dict
    )  # leader: instances asked which of gone members' calls they still run
    _synced_at: dict[str, float] = field(default_factory=dict)  # leader: member → its last sync (monotonic)

    def __post_init__(self) -> None:
        self.peers.on_change.append(self._on_leader)

    # ---- every replica ------------------------------------------------------------------------------------

    async def enter(self, want: Admission) -> Ticket:
        """A slot counted at the leader (and the instance it assigned with it, if any); :meth:`leave` gives both
        back."""
        self.seq += 1
        ticket = Ticket(self.seq)
        slot = Held(want.key, want.function or want.key, timeout=want.timeout)
        self._asking.add(ticket.seq)
        try:
            placed = await self._acquire(
                ticket.seq, slot, want.reserved, list(want.endpoints), want.per_instance
            )
        finally:
            self._asking.discard(ticket.seq)
        self.held[ticket.seq] = slot
        if placed is not None:
            self._placed_here(ticket, placed)
        return ticket

    def leave(self, want: Admission, ticket: Ticket) -> None:
        del self.held[ticket.seq]
        if ticket.placed is not None:  # assigned with the slot and never used
            self.balancer.release(ticket.placed)
        self._release(ticket.seq)  # the slot and its instance, in one

    def take(self, ticket: Ticket, endpoints: Sequence[str], per_instance: int) -> str | None:
        """The instance assigned with the slot, while it is still one of ``endpoints`` (None: :meth:`place`)."""
        placed = ticket.placed
        return placed if placed is not None and placed in endpoints else None

    @property
    def in_flight_here(self) -> int:
        return len(self.held)

    def _placed_here(self, ticket: Ticket, endpoint: str) -> None:
        ticket.placed = endpoint
        self.held[ticket.seq].endpoint = endpoint
        self.balancer.load[endpoint] = self.balancer.load.get(endpoint, 0) + 1

    async def place(self, ticket: Ticket, want: Choice) -> str | None:
        """An instance of ``endpoints()`` with a free worker slot, counted over every replica's calls; None when
        none freed up within ``wait``."""
        endpoints, per_instance, avoid = want.endpoints, want.per_instance, want.avoid
        if ticket.placed is not None:
            if ticket.placed in endpoints() and ticket.placed not in avoid:
                return ticket.placed
            self.unplace(ticket, ticket.placed, final=False)  # gone meanwhile: give it back, pick again
        deadline = time.monotonic() + want.wait
        no_leader_deadline = self._leader_wait()
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            leader = self.peers.leader
            found: str | None = None
            asked = False
            if leader is not None and leader == self.peers.identity and self.peers.is_leader:
                if self.synced.is_set():
                    # Short waits: endpoints() is read again, so an instance that became ready is seen.
                    found = await self._place_for(
                        leader, ticket.seq, endpoints, per_instance, avoid, min(left, 0.5)
                    )
                    asked = True
            elif leader is not None:
                answer = await self._ask(
                    leader,
                    "place",
                    {
                        "seq": ticket.seq,
                        "endpoints": list(endpoints()),
                        "perInstance": per_instance,
                        "avoid": sorted(avoid),
                        "wait": min(left, 0.5),
                    },
                    timeout=min(left, 0.5) + 5,
                )
                if answer is not None and answer[0] == 200 and self.peers.leader == leader:
                    found = answer[1].get("endpoint")
                    asked = True
                elif answer is not None and answer[0] == 409:
                    refuse_if_too_old(*answer)
                elif answer is not None and answer[0] == 404:
                    # A leader from before per-instance counting (a rolling update): this replica's own count.
                    found = await self.balancer.acquire(endpoints, per_instance, timeout=left, avoid=avoid)
                    if found is not None:
                        ticket.placed = found
                        self.held[ticket.seq].endpoint = found
                    return found
            if found is not None:
                if ticket.seq in self.held:
                    self._placed_here(ticket, found)
                return found
            if asked and time.monotonic() >= deadline:
                return None  # every instance busy for ``wait``: the caller's 429
            if not asked:
                # No leader that answers (it is being replaced): that time is not "every instance busy".
                # Until it changes, then ask again, as long as an admission waits for one.
                if no_leader_deadline() <= 0:
                    raise LimitsUnavailable(
                        f"No gateway replica assigned an instance within {self.wait_seconds:g} s of a leader change "
                        "(the leader is being replaced); try again"
                    )
                paused = time.monotonic()
                self._leader_changed.clear()
                try:
                    async with asyncio.timeout(0.2):
                        await self._leader_changed.wait()
                except TimeoutError:
                    pass
                deadline += time.monotonic() - paused

    def unplace(self, ticket: Ticket, endpoint: str, *, final: bool) -> None:
        """Gives back the instance's worker slot. ``final``: the call is over; its slot's release, which follows,
        gives the instance back at the leader too. Otherwise (another try elsewhere) the leader is told now."""
        self.balancer.release(endpoint)
        ticket.placed = None
        slot = self.held.get(ticket.seq)
        if slot is not None:
            slot.endpoint = None
        if final:
            return
        leader = self.peers.leader
        if leader == self.peers.identity:
            self._unplace(leader, ticket.seq)
        elif leader is not None:
            self._spawn(self._ask(leader, "unplace", {"seq": ticket.seq}))

    async def _acquire(
        self, seq: int, slot: Held, reserved: int | None, endpoints: list[str], per_instance: int
    ) -> str | None:
        """Counts the slot at the leader; the instance assigned with it, if any."""
        left_for_leader = self._leader_wait()
        while True:
            leader = self.peers.leader
            if leader is not None and leader == self.peers.identity and self.peers.is_leader:
                if self.synced.is_set():
                    await self._hear(slot.key, slot.group, endpoints)
                    return self._grant(leader, seq, slot, reserved, endpoints, per_instance)
            elif leader is not None:
                body: dict[str, Any] = {
                    "seq": seq,
                    "key": slot.key,
                    "function": slot.group,
                    "reserved": reserved,
                    "timeout": slot.timeout,
                }
                if endpoints:
                    body |= {"endpoints": endpoints, "perInstance": per_instance}
                answer = await self._ask(leader, "acquire", body)
                if answer is not None:
                    status, said = answer
                    if status == 200 and self.peers.leader == leader:
                        endpoint = said.get("endpoint")
                        return str(endpoint) if endpoint is not None else None
                    if status == 200:
                        # Counted by a leader that was replaced meanwhile: this replica's sync to the new one may
                        # have left the slot out, so the new leader counts it again.
                        continue
                    if status == 429:
                        raise Throttled(str(said.get("reason")), str(said.get("message")))
                    refuse_if_too_old(status, said)
            left = left_for_leader()
            if left <= 0:
                raise LimitsUnavailable(
                    f"No gateway replica counted the invocation's slot within {self.wait_seconds:g} s of a leader change "
                    "(the leader is being replaced); try again"
                )
            # Until the leader changes or is ready; then ask again.
            self._leader_changed.clear()
            try:
                async with asyncio.timeout(min(left, 0.2)):
                    await self._leader_changed.wait()
            except TimeoutError:
                pass

    def _leader_wait(self) -> Callable[[], float]:
        """The seconds an admission has left to wait for a leader that counts: ``wait_seconds`` from now or from
        the last leader change it saw (a new leader learning the replicas' slots is progress; under load that
        took 10 s after its Lease took 8), at most twice ``wait_seconds`` in all."""
        started = time.monotonic()
        term, deadline = self._term, started + self.wait_seconds

        def left() -> float:
            nonlocal term, deadline
            now = time.monotonic()
            if self._term != term:
                term, deadline = self._term, min(now + self.wait_seconds, started + 2 * self.wait_seconds)
            return deadline - now

        return left

    async def _ask(
        self, leader: str, op: str, body: dict[str, Any], *, timeout: float = 5.0
    ) -> tuple[int, dict[str, Any]] | None:
        """One request to the leader: (status, JSON answer), or None when it did not answer."""
        try:
            async with self.http().post(
                f"{url_of(leader)}{PREFIX}/{op}",
                json={"member": self.peers.identity, "protocol": PROTOCOL, **body},
                headers={TOKEN_HEADER: self.token},
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=1),
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.debug("The gateway leader %s did not answer %s: %s", leader, op, e)
            return None

    def _release(self, seq: int) -> None:
        leader = self.peers.leader
        if leader == self.peers.identity:
            self._uncount(self.peers.identity, seq)
        elif leader is not None:
            # Not awaited: the response is complete already. A lost release is corrected by the next sync.
            if not self._releasing:
                self._spawn(self._send_releases())
            self._releasing.append(seq)

    async def _send_releases(self) -> None:
        await asyncio.sleep(self.release_batch_seconds)
        seqs, self._releasing = self._releasing, []
        leader = self.peers.leader
        if leader is not None and leader != self.peers.identity:
            await self._ask(leader, "release", {"seqs": seqs})
        elif leader is not None:
            for seq in seqs:
                self._uncount(leader, seq)

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _sync_body(self) -> dict[str, Any]:
        # "held" as replicas before per-instance counting sent it (a rolling update mixes versions); the rest
        # in "slots": seq → [instance or null, function timeout].
        return {
            "held": [[seq, slot.key, slot.group] for seq, slot in self.held.items()],
            "slots": {str(seq): [slot.endpoint, slot.timeout] for seq, slot in self.held.items()},
            # Not past a slot still being asked for: the leader may have granted it, and it is not in "held" yet.
            "last": min(self._asking, default=self.seq + 1) - 1,
        }

    def _on_leader(self, leader: str | None) -> None:
        self._leader_changed.set()
        self.synced.clear()
        self._term += 1
        self._since = time.monotonic()
        self._heard = {}
        self._hearing = {}
        self._checking = {}
        self._synced_at = {}
        self.throttler.clear()
        self.instances = Balancer()
        self._ledger = {}
        self._gone = {}
        self._released = {}
        if leader is not None and leader == self.peers.identity:
            # This replica's own slots first; the others' come with their syncs (see _await_members).
            self._apply_sync(self.peers.identity, self._sync_body())
            self._spawn(self._await_members())
        elif leader is not None:
            self._spawn(self._ask(leader, "sync", self._sync_body()))

    async def run(self) -> None:
        """Sends this replica's slots to the leader every ``sync_seconds``; the leader drops dead members'."""
        while True:
            await asyncio.sleep(self.sync_seconds)
            leader = self.peers.leader
            if leader is None:
                continue
            if leader != self.peers.identity:
                await self._ask(leader, "sync", self._sync_body())
            elif self.synced.is_set():
                try:
                    live = await self.peers.members()
                except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                    logger.warning("Could not list the gateway replicas: %s", e)
                    continue
                self.drop_gone(live | {self.peers.identity}, time.monotonic())
                for endpoint, strays in list(self._heard.items()):
                    if strays.count and endpoint not in self._hearing:  # until the agent no longer runs them
                        self._asking_agent(strays.key, strays.group, endpoint)
                for endpoint, key in self._gone_placed().items():
                    if endpoint not in self._checking:  # until the agent no longer runs their calls
                        self._checking_agent(key, endpoint)

    # ---- the leader ---------------------------------------------------------------------------------------

    def drop_gone(self, live: set[str], now: float) -> None:
        """The slots of members not in ``live`` (their Lease expired): those never placed on an instance go
        now; those placed stay counted until the agent no longer runs that many calls from before ``now``
        (:meth:`_free_gone`, asked every ``sync_seconds``), at the latest until their invocation is over at the
        agent (``Held.until``)."""
        for member in set(self._gone) & live:  # renewed its Lease again (it was too slow, not dead)
            del self._gone[member]
        for member in set(self._ledger) - live:
            slots = self._ledger[member]
            if member not in self._gone:
                self._gone[member] = now
                placed = sum(s.endpoint is not None for s in slots.values())
                logger.info(
                    "Gateway replica %s is gone: dropping %d slots; %d placed on instances stay counted while "
                    "the agents run that many calls from before (or until their function timeout has passed)",
                    member,
                    len(slots) - placed,
                    placed,
                )
            for seq, slot in list(slots.items()):
                if slot.endpoint is None or slot.until <= now:
                    self._uncount(member, seq)
            if not slots:
                self._forget(member)

    def _forget(self, member: str) -> None:
        """A gone member whose slots are all free."""
        self._ledger.pop(member, None)
        self._gone.pop(member, None)
        self._released.pop(member, None)
        self._synced_at.pop(member, None)

    def _gone_placed(self) -> dict[str, str]:
        """The instances gone members' slots are placed on → the Function object (for the agent's token)."""
        return {
            s.endpoint: s.key
            for m in self._gone
            for s in self._ledger.get(m, {}).values()
            if s.endpoint is not None
        }

    def _checking_agent(self, key: str, endpoint: str) -> None:
        async def check() -> None:
            term, sent = self._term, time.monotonic()
            ages = await self._agent_ages(key, endpoint)
            if term != self._term:
                return  # the leader changed meanwhile
            self._checking.pop(endpoint, None)
            self._free_gone(endpoint, ages, sent)

        task = self._checking[endpoint] = asyncio.create_task(check())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _free_gone(self, endpoint: str, ages: list[float] | None, sent: float) -> None:
        """Frees the slots gone members placed on ``endpoint`` beyond the calls its agent runs that arrived
        before the last of those members was seen gone: every call a dead replica sent arrived before then (it
        stopped renewing its Lease a Lease duration earlier), so the rest are over or were never sent. ``ages``:
        the agent's answer, asked at ``sent`` (monotonic; None: it did not say, and the slots stay). A member
        whose Lease looks expired but which sent a sync within a Lease duration is alive (the API server was slow
        to take its renewals): it may still send a call it was given an instance for, so its slots stay."""
        silent = [
            m for m in self._gone if sent - self._synced_at.get(m, -math.inf) >= self.peers.lease_seconds
        ]
        slots = [
            (member, seq)
            for member in silent
            for seq, s in self._ledger.get(member, {}).items()
            if s.endpoint == endpoint
        ]
        if not slots:
            return
        if ages is None:
            if any(e == endpoint for _, _, e in self.instances_known()):
                return  # not known: counted until their timeout
            ages = []  # the instance is gone, and its calls with it
        seen_gone = max(self._gone[member] for member, _ in slots)
        # Arrived before ``seen_gone`` (measured from before the request: never fewer). Calls of live replicas
        # among them are counted here too: the safe side.
        before = sum(age >= sent - seen_gone for age in ages)
        free = slots[: max(len(slots) - before, 0)]
        if free:
            logger.info(
                "The agent at %s no longer runs %d call(s) of gone gateway replicas: their slots are free",
                endpoint,
                len(free),
            )
        for member, seq in free:
            self._uncount(member, seq)
            if not self._ledger.get(member):
                self._forget(member)

    async def _await_members(self) -> None:
        """A new leader admits nothing until every live member has told it its slots (or has gone)."""
        me = self.peers.identity
        started = time.monotonic()
        while self.peers.leader == me:
            try:
                live = await self.peers.members()
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not list the gateway replicas: %s", e)
                await asyncio.sleep(0.2)
                continue
            # Not the leader whose expired Lease this one took: it did not renew for LEASE_SECONDS (dead, or
            # too slow to lead). Its member Lease would take as long again to be seen expired; its calls still
            # running are strays, and if it lives its next sync counts its slots.
            waiting = live - set(self._ledger) - {me, self.peers.previous}
            if not waiting:
                # Every instance's strays before anything is admitted: the pool limit counts them all.
                await asyncio.gather(*(self._hear(k, g, [e]) for k, g, e in list(self.instances_known())))
                if self.peers.leader != me:
                    return
                self.synced.set()
                self._leader_changed.set()
                logger.info(
                    "Leading %d gateway replicas; their slots known in %.1f s",
                    len(live),
                    time.monotonic() - started,
                )
                return
            await asyncio.sleep(0.2)

    def _count(self, member: str, seq: int, slot: Held, reserved: int | None, *, force: bool = False) -> Held:
        slots = self._ledger.setdefault(member, {})
        found = slots.get(seq)
        if found is not None:
            return found  # a retried request: counted already
        self.throttler.acquire(slot.key, reserved=reserved, function=slot.group, force=force)
        counted = slots[seq] = Held(slot.key, slot.group, timeout=slot.timeout)
        return counted

    def _grant(
        self, member: str, seq: int, slot: Held, reserved: int | None, endpoints: list[str], per_instance: int
    ) -> str | None:
        """Counts a slot (or raises :class:`Throttled`) and places it on one of ``endpoints`` with a free worker
        slot, if one is free now."""
        counted = self._count(member, seq, slot, reserved)
        if counted.endpoint is not None:
            return counted.endpoint
        endpoint = self.instances.try_acquire(endpoints, per_instance) if endpoints else None
        if endpoint is not None:
            self._set_placed(counted, endpoint)
        return endpoint

    async def _hear(self, key: str, group: str, endpoints: Iterable[str]) -> None:
        """Until every one of ``endpoints`` has told this leader what it runs (once per instance and term)."""
        waits = []
        for endpoint in endpoints:
            if endpoint in self._heard:
                continue
            waits.append(
                asyncio.shield(self._hearing.get(endpoint) or self._asking_agent(key, group, endpoint))
            )
        if waits:
            await asyncio.gather(*waits)

    def _asking_agent(self, key: str, group: str, endpoint: str) -> asyncio.Task[None]:
        task = self._hearing[endpoint] = asyncio.create_task(self._ask_agent(key, group, endpoint))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _ask_agent(self, key: str, group: str, endpoint: str) -> None:
        """Asks the agent at ``endpoint`` the ages of the calls it runs; counts as strays those older than this
        leader's term that no live replica's slot placed before it accounts for."""
        term, sent = self._term, time.monotonic()
        # Gone (it runs nothing any more), or not answering: counted as running nothing of the last leader's.
        ages = await self._agent_ages(key, endpoint) or []
        if term != self._term:
            return  # the leader changed meanwhile
        self._hearing.pop(endpoint, None)
        self._count_strays(key, group, endpoint, ages, sent)

    async def _agent_ages(self, key: str, endpoint: str) -> list[float] | None:
        """How long ago (s) each call the agent at ``endpoint`` runs arrived (``GET /inflight``, with the token
        of the Function object ``key``); None when it did not say (logged)."""
        try:
            namespace, _, name = key.partition("/")
            token = function_token(self.agent_key, namespace, name) if self.agent_key else ""
            async with self.http().get(
                f"http://{endpoint}/inflight",
                headers=bearer(token),
                timeout=aiohttp.ClientTimeout(total=5, sock_connect=2),
            ) as resp:
                if resp.status == 200:
                    return [float(a) / 1000 for a in (await resp.json(content_type=None))["agesMs"]]
                # An agent from before GET /inflight: what it runs is not known.
                logger.warning("The agent at %s answered GET /inflight with %d", endpoint, resp.status)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            logger.warning("Could not ask the agent at %s what it runs: %s", endpoint, e)
        return None

    def _count_strays(self, key: str, group: str, endpoint: str, ages: list[float], sent: float) -> None:
        """``ages``: of the calls the agent at ``endpoint`` answered it runs, asked at ``sent`` (monotonic)."""
        # Older than this term: arrived before the takeover (measured from before the request: never fewer).
        before = sum(age >= sent - self._since for age in ages)
        ours = sum(
            s.endpoint == endpoint and s.old for slots in self._ledger.values() for s in slots.values()
        )
        strays = self._heard.setdefault(endpoint, Strays(key, group))
        count = max(before - ours, 0)
        if count != strays.count:
            logger.info(
                "The agent at %s runs %d call(s) of %s no live gateway replica holds: counted",
                endpoint,
                count,
                key,
            )
        for _ in range(count - strays.count):
            self.throttler.acquire(strays.key, reserved=None, function=strays.group, force=True)
            self.instances.load[endpoint] = self.instances.load.get(endpoint, 0) + 1
        for _ in range(strays.count - count):
            self.throttler.release(strays.key, function=strays.group)
            self.instances.release(endpoint)
        strays.count = count

    def _set_placed(self, slot: Held, endpoint: str) -> None:
        slot.endpoint = endpoint
        # The agent ends the invocation at its timeout after a runtime takes it (after its init, if one was
        # still initialising), which is after now.
        slot.until = time.monotonic() + longest_wait(slot.timeout)

    async def _place_for(
        self,
        member: str,
        seq: int,
        endpoints: Endpoints,
        per_instance: int,
        avoid: frozenset[str],
        wait: float,
    ) -> str | None:
        self._unplace(member, seq)  # a retried request, or another try elsewhere
        slot = self._ledger.get(member, {}).get(seq)
        if slot is not None:
            await self._hear(slot.key, slot.group, endpoints())
        instances = self.instances
        endpoint = await instances.acquire(endpoints, per_instance, timeout=wait, avoid=avoid)
        if endpoint is None:
            return None
        slot = self._ledger.get(member, {}).get(seq)
        if slot is None or instances is not self.instances or slot.endpoint is not None:
            # Released meanwhile (the caller gave up), or the leader changed: not placed.
            instances.release(endpoint)
            return None
        self._set_placed(slot, endpoint)
        return endpoint

    def _unplace(self, member: str, seq: int) -> None:
        slot = self._ledger.get(member, {}).get(seq)
        if slot is not None and slot.endpoint is not None:
            self.instances.release(slot.endpoint)
            slot.endpoint = None
            slot.until = math.inf
            slot.old = False

    def _uncount(self, member: str, seq: int) -> None:
        if member != self.peers.identity:  # (this replica's own slots are never synced to itself)
            self._released.setdefault(member, {})[seq] = time.monotonic()
        self._unplace(member, seq)
        slot = self._ledger.get(member, {}).pop(seq, None)
        if slot is not None:
            self.throttler.release(slot.key, function=slot.group)

    def _apply_sync(self, member: str, body: dict[str, Any]) -> None:
        self._synced_at[member] = time.monotonic()
        more = body.get("slots") or {}
        rows: dict[int, Held] = {}
        for seq, key, group in body["held"]:
            endpoint, timeout = more.get(str(seq)) or (None, 900.0)
            rows[int(seq)] = Held(str(key), str(group), timeout=float(timeout), endpoint=endpoint)
        last = int(body["last"])
        slots = self._ledger.setdefault(member, {})
        for seq in [s for s in slots if s <= last and s not in rows]:
            self._uncount(member, seq)  # given back; its release was lost or is still on its way
        # A sync taken before a release may arrive after it: a slot released here is not counted again.
        released = self._released.setdefault(member, {})
        old = time.monotonic() - RELEASED_SECONDS
        for seq in [s for s, at in released.items() if at < old]:
            del released[seq]
        for seq, row in rows.items():
            if seq in released:
                continue
            counted = self._count(member, seq, row, None, force=True)
            # A placement the replica does not list yet may be an answer still on its way: kept (the slot's
            # release gives it back). One it lists elsewhere, or one this leader did not make, is counted as
            # listed, even over perInstance.
            if row.endpoint is not None and counted.endpoint != row.endpoint:
                self._unplace(member, seq)
                self.instances.load[row.endpoint] = self.instances.load.get(row.endpoint, 0) + 1
                self._set_placed(counted, row.endpoint)
                counted.old = not self.synced.is_set()  # placed by the previous leader

    def _serve(
        self, op: Callable[[dict[str, Any]], Awaitable[web.Response]], *, counting: bool = False
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A handler of the API between replicas: the peer token, this replica leading and (``counting``) knowing
        every replica's slots, then ``op`` on the JSON body."""

        async def handle(request: web.Request) -> web.Response:
            if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), self.token):
                return web.json_response({"message": "not a gateway replica"}, status=403)
            if not self.peers.is_leader:
                return web.json_response(
                    {"message": "not the leader", "leader": self.peers.leader}, status=503
                )
            body = await request.json()
            protocol = body.get("protocol", 1)
            if not isinstance(protocol, int) or protocol < MIN_PROTOCOL:
                logger.error("Refused gateway replica %s of peer protocol %r", body.get("member"), protocol)
                message = (
                    f"the gateway replica speaks peer protocol {protocol!r}; the leader speaks {PROTOCOL} and "
                    f"counts replicas of protocol {MIN_PROTOCOL} or newer: update the replica"
                )
                return web.json_response({"message": message, "protocol": PROTOCOL}, status=409)
            if counting and not self.synced.is_set():
                return web.json_response({"message": "learning the replicas' slots"}, status=503)
            return await op(body)

        return handle

    async def _acquire_op(self, body: dict[str, Any]) -> web.Response:
        slot = Held(str(body["key"]), str(body["function"]), timeout=float(body.get("timeout", 900.0)))
        endpoints = [str(e) for e in body.get("endpoints") or ()]
        await self._hear(slot.key, slot.group, endpoints)
        try:
            endpoint = self._grant(
                str(body["member"]),
                int(body["seq"]),
                slot,
                body.get("reserved"),
                endpoints,
                int(body.get("perInstance", 1)),
            )
        except Throttled as e:
            return web.json_response({"reason": e.reason, "message": e.message}, status=429)
        return web.json_response({"endpoint": endpoint})

    async def _place_op(self, body: dict[str, Any]) -> web.Response:
        endpoints = [str(e) for e in body["endpoints"]]
        endpoint = await self._place_for(
            str(body["member"]),
            int(body["seq"]),
            lambda: endpoints,
            int(body["perInstance"]),
            frozenset(str(e) for e in body.get("avoid") or ()),
            min(float(body.get("wait", 0)), 5.0),
        )
        return web.json_response({"endpoint": endpoint})

    async def _unplace_op(self, body: dict[str, Any]) -> web.Response:
        self._unplace(str(body["member"]), int(body["seq"]))
        return web.json_response({})

    async def _release_op(self, body: dict[str, Any]) -> web.Response:
        member = str(body["member"])
        for seq in body.get("seqs") or [body["seq"]]:
            self._uncount(member, int(seq))
        return web.json_response({})

    async def _sync_op(self, body: dict[str, Any]) -> web.Response:
        self._apply_sync(str(body["member"]), body)
        return web.json_response({})

    def register(self, router: GuardedRoutes) -> None:
        router.add_post(f"{PREFIX}/acquire", self._serve(self._acquire_op, counting=True))
        router.add_post(f"{PREFIX}/place", self._serve(self._place_op, counting=True))
        router.add_post(f"{PREFIX}/unplace", self._serve(self._unplace_op))
        router.add_post(f"{PREFIX}/release", self._serve(self._release_op))
        router.add_post(f"{PREFIX}/sync", self._serve(self._sync_op))
