"""Several gateway replicas: who is alive, and which one leads (coordination.k8s.io Leases).

Each replica holds a member Lease (``kubelambda-gateway-<hash>``, label ``kubelambda.io/gateway-member``) and
renews it every ``renew_seconds``; every replica also tries to take or renew the leader Lease
(``kubelambda-gateway-leader``) every half ``renew_seconds``. The leader counts every replica's in-flight slots
(gateway/limits.py) and is the one autoscaler (gateway/scaler.py). A Lease is judged expired as client-go does: by
how long its resourceVersion has not changed *as this process observed it* (no clock is compared across
machines). A follower's clock for a renewal therefore starts after that renewal's write began; so the leader acts
as one until ``renew_deadline`` (a second short of ``lease_seconds``) after the *start* of its last successful
renewal, and not a moment later however slowly the write was answered: two replicas never both act as leader.
Renewals are not held up by a slow one: a new one starts every half ``renew_seconds`` (a JSON patch that tests
the holder, so renewals in flight together do not conflict, and one landing after another replica took the Lease
fails), so a renewal that takes up to ``renew_deadline`` less that interval keeps the leadership. One that stops
(SIGTERM) hands the Lease back, so the next takes over at its next read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kubelambda.kube import ApiError, KubeClient, resource_path

logger = logging.getLogger(__name__)

LEADER_LEASE = "kubelambda-gateway-leader"
RENEW_MARGIN_SECONDS = 1.0  # the leader stops acting this long before a follower may judge its Lease expired
MAX_RENEWALS = 8  # leader renewals in flight at once (a loaded API server answers in seconds)
MEMBER_LABEL = "kubelambda.io/gateway-member"
JSON = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def leading_for(lease_seconds: float, renew_seconds: float) -> float:
    """The renew deadline: how long after the start of its last successful renewal a leader acts as one. A
    follower judges the Lease expired ``lease_seconds`` after it first read that renewal, which is after the write
    began: a margin short of that (client-go's default is 10 s of 15), and never shorter than one renew interval."""
    return max(lease_seconds - RENEW_MARGIN_SECONDS, renew_seconds)


def url_of(identity: str) -> str:
    """A replica's URL (``http://host:port``) from its identity ``<url>#<random>``."""
    return identity.partition("#")[0]


@dataclass
class Peers:
    kube: KubeClient
    namespace: str
    url: str  # where the other replicas reach this one
    lease_seconds: float = 10.0
    renew_seconds: float = 2.0
    identity: str = field(init=False)
    leader: str | None = None  # the identity holding the leader Lease, as last read
    on_change: list[Callable[[str | None], None]] = field(default_factory=list)
    _renewed: float = -1e9  # monotonic time of this replica's last successful leader renewal
    _observed: dict[str, tuple[str, float]] = field(
        default_factory=dict
    )  # Lease → (resourceVersion, seen at)
    _stopping: bool = False
    _held: JSON | None = None  # the leader Lease as this replica last wrote it (renewed with one write)
    previous: str | None = None  # the holder whose expired leader Lease this replica took (dead, or too slow)
    joined: asyncio.Event = field(default_factory=asyncio.Event)  # the member Lease exists, a leader is known

    def __post_init__(self) -> None:
        # A restarted process is a new member: the slots its predecessor held are not its own.
        self.identity = f"{self.url}#{uuid.uuid4().hex[:8]}"

    @property
    def member_lease(self) -> str:
        return f"kubelambda-gateway-{hashlib.sha256(self.identity.encode()).hexdigest()[:12]}"

    @property
    def renew_deadline(self) -> float:
        """How long after the start of its last successful renewal the leader acts as one."""
        return leading_for(self.lease_seconds, self.renew_seconds)

    @property
    def is_leader(self) -> bool:
        fresh = time.monotonic() - self._renewed < self.renew_deadline
        return self.leader == self.identity and fresh and not self._stopping

    def _path(self, name: str | None = None) -> str:
        return resource_path("coordination.k8s.io/v1", "leases", namespace=self.namespace, name=name)

    def _live(self, lease: JSON, now: float) -> bool:
        """Whether ``lease`` was renewed within its duration, by this process's observation."""
        meta = lease["metadata"]
        name, rv = meta["name"], meta.get("resourceVersion", "")
        seen = self._observed.get(name)
        if seen is None or seen[0] != rv:
            self._observed[name] = seen = (rv, now)
        spec = lease.get("spec") or {}
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        return bool(spec.get("holderIdentity")) and now - seen[1] < duration

    def _spec(self, *, transitions: int = 0, acquired: str | None = None) -> JSON:
        now = _now()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_seconds)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _renew_member(self) -> None:
        name = self.member_lease
        try:
            await self.kube.patch(self._path(name), {"spec": {"renewTime": _now()}})
        except ApiError as e:
            if e.status != 404:
                raise
            body: JSON = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "labels": {MEMBER_LABEL: "true"}},
                "spec": self._spec(),
            }
            await self.kube.create(self._path(), body)

    async def _lead(self) -> None:
        """Takes the leader Lease if it is free or expired, renews it if ours; records who holds it."""
        now = time.monotonic()
        if self._held is not None and self.leader == self.identity and not self._stopping:
            # Renewing its own Lease: one write that tests it still holds it (not a resourceVersion precondition,
            # so that the renewals in flight together under a loaded API server do not fail each other).
            patch = [
                {"op": "test", "path": "/spec/holderIdentity", "value": self.identity},
                {"op": "replace", "path": "/spec/renewTime", "value": _now()},
            ]
            try:
                self._held = await self.kube.patch(self._path(LEADER_LEASE), patch, patch_type="json")
            except ApiError as e:
                if e.status >= 500:
                    raise
                # Taken by someone else (the test failed) or deleted: read it.
                logger.warning("Could not renew the leader Lease: %s", e)
            else:
                self._renewed = max(self._renewed, now)  # renewals may succeed out of order
                return
            if self._renewed > now:
                return  # a renewal that started after this one succeeded: still held
        self._held = None
        lease = await self.kube.get_or_none(self._path(LEADER_LEASE))
        if self._renewed > now:
            return  # this replica took or renewed the Lease while this read was on its way: it is out of date
        if self._stopping:
            # Draining: never leads again, but follows who does (its slots go to that leader until it stops).
            holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or None
            self._set_leader(holder if holder != self.identity and lease and self._live(lease, now) else None)
            return
        if lease is None:
            body = {"metadata": {"name": LEADER_LEASE}, "spec": self._spec()}
            try:
                self._held = await self.kube.create(self._path(), body)
            except ApiError as e:
                if e.status == 409:  # another replica created it first
                    return
                raise
            self._renewed = max(self._renewed, now)
            self._set_leader(self.identity)
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        if holder != self.identity and self._live(lease, now):
            self._set_leader(holder)
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        # The read's resourceVersion is the precondition: of two replicas taking an expired Lease, one wins.
        body = {
            "metadata": {"name": LEADER_LEASE, "resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(transitions=transitions, acquired=acquired),
        }
        try:
            self._held = await self.kube.replace(self._path(LEADER_LEASE), body)
        except ApiError as e:
            if e.status == 409:
                return  # someone else renewed or took it: read again next round
            raise
        self._renewed = max(self._renewed, now)
        if holder != self.identity:
            self.previous = holder
        self._set_leader(self.identity)

    def _set_leader(self, leader: str | None) -> None:
        if leader != self.leader:
            logger.info("Gateway leader: %s (this replica: %s)", leader, self.identity)
            self.leader = leader
            for callback in self.on_change:
                callback(leader)

    async def members(self) -> set[str]:
        """Identities of the replicas whose member Lease is live."""
        now = time.monotonic()
        found = await self.kube.list(self._path(), params={"labelSelector": MEMBER_LABEL})
        return {
            lease["spec"]["holderIdentity"] for lease in found.get("items") or [] if self._live(lease, now)
        }

    async def _logged(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        try:
            await call()
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("Could not %s: %s", what, e)
        took = time.monotonic() - started
        if took > self.renew_seconds:
            logger.info("%s took %.1f s", what.capitalize(), took)
        if self.leader is not None:
            self.joined.set()

    async def run(self) -> None:
        """The member Lease renewed every ``renew_seconds``; the leader Lease taken or renewed every half of it,
        without waiting for a slow one (at most ``MAX_RENEWALS`` in flight): under load a successful renewal may
        take seconds, and the next must not start only after it."""
        member = asyncio.create_task(self._members_loop(), name="member lease")
        leading: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(leading) < MAX_RENEWALS:
                    task = asyncio.create_task(self._logged("renew the leader Lease", self._lead))
                    leading.add(task)
                    task.add_done_callback(leading.discard)
                await asyncio.sleep(self.renew_seconds / 2)
                if not self.is_leader and self.leader == self.identity:
                    # No renewal succeeded within the deadline: stop acting as the leader (before any other
                    # replica may take over); a renewal that lands later makes it lead again.
                    logger.warning(
                        "No renewal of the leader Lease started within the last %.1f s succeeded: not leading",
                        self.renew_deadline,
                    )
                    self._set_leader(None)
        finally:
            member.cancel()
            for task in leading:
                task.cancel()

    async def _members_loop(self) -> None:
        while True:
            started = time.monotonic()
            await self._logged("renew this replica's member Lease", self._renew_member)
            await asyncio.sleep(max(self.renew_seconds - (time.monotonic() - started), 0.0))

    async def resign(self) -> None:
        """Hands the leader Lease back, if held, and never takes it again: the next replica takes over at its
        next renewal instead of after the Lease expires. The member Lease stays (this replica's slots count)."""
        if self._stopping:
            return
        self._stopping = True
        for _ in range(3):  # a renewal still in flight may land first (a conflict): read it again
            try:
                lease = await self.kube.get_or_none(self._path(LEADER_LEASE))
                if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    lease["spec"]["holderIdentity"] = None
                    await self.kube.replace(self._path(LEADER_LEASE), lease)
                break
            except ApiError as e:
                if e.status == 409:
                    continue
                logger.warning("Could not hand the gateway leader's Lease back: %s", e)
                break
            except (aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not hand the gateway leader's Lease back: %s", e)
                break
        self._set_leader(None)  # until the next renewal reads who took over

    async def leave(self) -> None:
        """Deletes the member Lease (this replica holds no slot any more)."""
        try:
            await self.kube.delete(self._path(self.member_lease))
        except ApiError as e:
            if e.status != 404:
                logger.warning("Could not delete this gateway replica's Lease: %s", e)
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("Could not delete this gateway replica's Lease: %s", e)
