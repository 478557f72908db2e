"""Exact concurrency limits across gateway replicas: one replica, the leader, counts every slot.

A replica admits an invocation by asking the leader (gateway/peers.py) for a slot: ``POST /_kubelambda/limits/
acquire`` with the function, its reserved concurrency and a sequence number of the asking replica; the leader
counts it in its :class:`~kubelambda.gateway.throttler.Throttler` or answers Lambda's 429 reason. The slot is
given back when the response is complete (``release``, sent in the background). The leader admits its own
invocations the same way, without the round trip. So the limits are exact whatever the number of replicas, at
the cost of one loopback-or-pod-network round trip per invocation.

Every replica also sends the leader, every ``sync_seconds`` and at once when the leader changes, the full list of
the slots it holds (``sync``): a lost release is corrected by it, and a new leader learns every replica's slots
before it admits anything (it waits for a sync from every live member, or for that member's Lease to expire).
A replica whose member Lease expires (SIGKILL) has its slots dropped by the leader.

The requests between replicas carry a token derived from the platform's agent key (an HMAC), as the agents'
tokens are: tenants reach the gateway's port, never this API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kubelambda.gateway.peers import Peers, url_of
from kubelambda.gateway.throttler import LimitsUnavailable, Throttled, Throttler
from kubelambda.kube import ApiError

logger = logging.getLogger(__name__)

PREFIX = "/_kubelambda/limits"
TOKEN_HEADER = "X-Kubelambda-Peer-Token"
Slot = tuple[str, str]  # (Function object key "ns/name", what reserved counts "ns/function")


def peer_token(agent_key: str) -> str:
    return hmac.new(agent_key.encode(), b"kubelambda gateway peers", hashlib.sha256).hexdigest()


@dataclass
class LocalLimits:
    """One gateway replica: its own :class:`Throttler` is the whole count."""

    throttler: Throttler

    @asynccontextmanager
    async def admit(
        self, key: str, *, reserved: int | None, function: str | None = None
    ) -> AsyncIterator[None]:
        with self.throttler.admit(key, reserved=reserved, function=function):
            yield

    @property
    def in_flight_here(self) -> int:
        return self.throttler.total


@dataclass
class SharedLimits:
    throttler: Throttler  # the leader's counts of every replica's slots (empty on the others)
    peers: Peers
    http: Callable[[], aiohttp.ClientSession]
    token: str
    wait_seconds: float = 15.0  # how long an admission waits for a leader that counts slots
    sync_seconds: float = 1.0
    held: dict[int, Slot] = field(default_factory=dict)  # this replica's slots, by sequence number
    seq: int = 0
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # leader: every member's slots are known
    _ledger: dict[str, dict[int, Slot]] = field(default_factory=dict)  # leader: member → its slots
    _pending: set[str] = field(default_factory=set)  # leader: members whose first sync is awaited
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _leader_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.peers.on_change.append(self._on_leader)

    # ---- every replica ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def admit(
        self, key: str, *, reserved: int | None, function: str | None = None
    ) -> AsyncIterator[None]:
        group = function or key
        self.seq += 1
        seq = self.seq
        await self._acquire(seq, key, group, reserved)
        self.held[seq] = (key, group)
        try:
            yield
        finally:
            del self.held[seq]
            self._release(seq)

    @property
    def in_flight_here(self) -> int:
        return len(self.held)

    async def _acquire(self, seq: int, key: str, group: str, reserved: int | None) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            leader = self.peers.leader
            if leader is not None and leader == self.peers.identity and self.peers.is_leader:
                if self.synced.is_set():
                    self._count(self.peers.identity, seq, (key, group), reserved)
                    return
            elif leader is not None:
                answer = await self._ask(
                    leader, "acquire", {"seq": seq, "key": key, "function": group, "reserved": reserved}
                )
                if answer is not None:
                    status, body = answer
                    if status == 200 and self.peers.leader == leader:
                        return
                    if status == 200:
                        # Counted by a leader that was replaced meanwhile: this replica's sync to the new one may
                        # have left the slot out, so the new leader counts it again.
                        continue
                    if status == 429:
                        raise Throttled(str(body.get("reason")), str(body.get("message")))
            left = deadline - time.monotonic()
            if left <= 0:
                raise LimitsUnavailable(
                    f"No gateway replica counted the invocation's slot within {self.wait_seconds:g} s "
                    "(the leader is being replaced); try again"
                )
            # Until the leader changes or is ready; then ask again.
            self._leader_changed.clear()
            try:
                async with asyncio.timeout(min(left, 0.2)):
                    await self._leader_changed.wait()
            except TimeoutError:
                pass

    async def _ask(self, leader: str, op: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """One request to the leader: (status, JSON answer), or None when it did not answer."""
        try:
            async with self.http().post(
                f"{url_of(leader)}{PREFIX}/{op}",
                json={"member": self.peers.identity, **body},
                headers={TOKEN_HEADER: self.token},
                timeout=aiohttp.ClientTimeout(total=5, sock_connect=1),
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
            self._spawn(self._ask(leader, "release", {"seq": seq}))

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _sync_body(self) -> dict[str, Any]:
        return {"held": [[seq, key, group] for seq, (key, group) in self.held.items()], "last": self.seq}

    def _on_leader(self, leader: str | None) -> None:
        self._leader_changed.set()
        self.synced.clear()
        self.throttler.clear()
        self._ledger = {}
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
                for member in set(self._ledger) - live - {self.peers.identity}:
                    logger.info(
                        "Gateway replica %s is gone: dropping its %d slots", member, len(self._ledger[member])
                    )
                    for seq in list(self._ledger[member]):
                        self._uncount(member, seq)
                    self._ledger.pop(member, None)

    # ---- the leader ---------------------------------------------------------------------------------------

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
            waiting = live - set(self._ledger) - {me}
            if not waiting:
                self.synced.set()
                self._leader_changed.set()
                logger.info(
                    "Leading %d gateway replicas; their slots known in %.1f s",
                    len(live),
                    time.monotonic() - started,
                )
                return
            await asyncio.sleep(0.2)

    def _count(self, member: str, seq: int, slot: Slot, reserved: int | None, *, force: bool = False) -> None:
        slots = self._ledger.setdefault(member, {})
        if seq in slots:
            return  # a retried request: counted already
        self.throttler.acquire(slot[0], reserved=reserved, function=slot[1], force=force)
        slots[seq] = slot

    def _uncount(self, member: str, seq: int) -> None:
        slot = self._ledger.get(member, {}).pop(seq, None)
        if slot is not None:
            self.throttler.release(slot[0], function=slot[1])

    def _apply_sync(self, member: str, body: dict[str, Any]) -> None:
        held = {int(seq): (str(key), str(group)) for seq, key, group in body["held"]}
        last = int(body["last"])
        slots = self._ledger.setdefault(member, {})
        for seq in [s for s in slots if s <= last and s not in held]:
            self._uncount(member, seq)  # given back; its release was lost or is still on its way
        for seq, slot in held.items():
            self._count(member, seq, slot, None, force=True)

    def _refuse(self, request: web.Request) -> web.Response | None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), self.token):
            return web.json_response({"message": "not a gateway replica"}, status=403)
        if not self.peers.is_leader:
            return web.json_response({"message": "not the leader", "leader": self.peers.leader}, status=503)
        return None

    async def _acquire_handler(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await request.json()
        if not self.synced.is_set():
            return web.json_response({"message": "learning the replicas' slots"}, status=503)
        try:
            self._count(
                str(body["member"]),
                int(body["seq"]),
                (str(body["key"]), str(body["function"])),
                body.get("reserved"),
            )
        except Throttled as e:
            return web.json_response({"reason": e.reason, "message": e.message}, status=429)
        return web.json_response({})

    async def _release_handler(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await request.json()
        self._uncount(str(body["member"]), int(body["seq"]))
        return web.json_response({})

    async def _sync_handler(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await request.json()
        self._apply_sync(str(body["member"]), body)
        return web.json_response({})

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post(f"{PREFIX}/acquire", self._acquire_handler)
        router.add_post(f"{PREFIX}/release", self._release_handler)
        router.add_post(f"{PREFIX}/sync", self._sync_handler)
