"""Several gateway replicas: who is alive, and which one leads (coordination.k8s.io Leases).

Each replica holds a member Lease (``kubelambda-gateway-<hash>``, label ``kubelambda.io/gateway-member``) and
renews it every ``renew_seconds``; every replica also tries to take or renew the leader Lease
(``kubelambda-gateway-leader``). The leader counts every replica's in-flight slots (gateway/limits.py) and is the
one autoscaler (gateway/scaler.py). A Lease is judged expired as client-go does: by how long its resourceVersion
has not changed *as this process observed it* (no clock is compared across machines). A leader that cannot renew
stops acting as one before any other replica may take over (``renew_seconds`` short of ``lease_seconds``), and
one that stops (SIGTERM) hands the Lease back, so the next takes over at its next renewal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from kubelambda.kube import ApiError, KubeClient, resource_path

logger = logging.getLogger(__name__)

LEADER_LEASE = "kubelambda-gateway-leader"
MEMBER_LABEL = "kubelambda.io/gateway-member"
JSON = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def url_of(identity: str) -> str:
    """A replica's URL (``http://host:port``) from its identity ``<url>#<random>``."""
    return identity.partition("#")[0]


@dataclass
class Peers:
    kube: KubeClient
    namespace: str
    url: str  # where the other replicas reach this one
    lease_seconds: float = 8.0
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
    def is_leader(self) -> bool:
        fresh = time.monotonic() - self._renewed < self.lease_seconds - self.renew_seconds
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
            # Renewing its own Lease: one write, on the resourceVersion it wrote last (a loaded API server answers
            # slowly, and the renewal must land within LEASE_SECONDS - LEASE_RENEW_SECONDS of the last).
            spec = self._held.get("spec") or {}
            body = {
                "metadata": {
                    "name": LEADER_LEASE,
                    "resourceVersion": self._held["metadata"]["resourceVersion"],
                },
                "spec": self._spec(
                    transitions=int(spec.get("leaseTransitions") or 0), acquired=spec.get("acquireTime")
                ),
            }
            try:
                self._held = await self.kube.replace(self._path(LEADER_LEASE), body)
            except ApiError as e:
                if e.status not in (404, 409):
                    raise
                self._held = None  # written by someone else meanwhile: read it
            else:
                self._renewed = now
                return
        self._held = None
        lease = await self.kube.get_or_none(self._path(LEADER_LEASE))
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
            self._renewed = now
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
        self._renewed = now
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

    async def step(self) -> None:
        # Both at once: under load each write may take seconds, and the leader's renewal is due on time.
        await asyncio.gather(self._renew_member(), self._lead())
        if self.leader is not None:
            self.joined.set()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.step()
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not renew the gateway Leases: %s", e)
            took = time.monotonic() - started
            if not self.is_leader and self.leader == self.identity:
                # Not renewed in time: stop acting as the leader.
                logger.warning(
                    "Renewing the leader Lease took %.1f s: not leading until a renewal is on time", took
                )
                self._set_leader(None)
            # Every renew_seconds from the last start, not after it: a slow renewal does not delay the next.
            await asyncio.sleep(max(self.renew_seconds - took, 0.0))

    async def resign(self) -> None:
        """Hands the leader Lease back, if held, and never takes it again: the next replica takes over at its
        next renewal instead of after the Lease expires. The member Lease stays (this replica's slots count)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            lease = await self.kube.get_or_none(self._path(LEADER_LEASE))
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                await self.kube.replace(self._path(LEADER_LEASE), lease)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("Could not hand the gateway leader's Lease back: %s", e)
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
