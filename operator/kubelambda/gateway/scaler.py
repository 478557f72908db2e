"""The thin loop around the autoscaler's pure decider: sample, decide, write the Deployment scale.

In-flight concurrency per function (admitted and not yet answered, the throttler's exact count) is sampled
every ``sample`` seconds; every ``interval`` seconds each function's stable and panic window averages go to
:func:`kubelambda.autoscaler.decide`, and a changed decision is written to the Deployment's scale subresource.
With several gateway replicas only the leader decides (gateway/peers.py): its counts hold every replica's slots
(gateway/limits.py). A new leader first learns every replica's slots; then, for one stable window, it only scales
up: its own samples are too few to scale a busy function down, let alone to zero, during the hand-over.

Its inputs are narrow: the in-flight counts (a :class:`~kubelambda.gateway.throttler.Throttler`), the registry
(Functions and their ready endpoints), how many warm-pool pods serve a function, and the API client that writes
the scale.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from kubelambda import metrics
from kubelambda.autoscaler import Policy, ScalerState, Stats, decide
from kubelambda.gateway.activator import deployment_name_of, scale_path, write_scale
from kubelambda.gateway.registry import FunctionEntry, Key, Registry
from kubelambda.gateway.throttler import Throttler
from kubelambda.kube import ApiError, KubeClient
from kubelambda.resources.names import scale_role_name

logger = logging.getLogger(__name__)

DENIED_QUIET_SECONDS = 30.0
"""How long a 403 on a function's scale is retried quietly before one warning: a new Function (a published
version) is in the registry before the operator has granted its per-function Role (resources/rbac.py)."""
DENIED_RETRY_MAX_SECONDS = 16.0
"""The longest back-off between two tries of a scale the API server refused with 403."""


def policy_of(fn: FunctionEntry) -> Policy:
    s = fn.spec
    return Policy(
        min_instances=s.scaling.min_instances,
        max_instances=s.scaling.max_instances,
        per_instance=s.concurrency.per_instance,
        target_utilization=s.scaling.target_utilization,
        reserved=s.concurrency.reserved,
        scale_to_zero_after=float(s.scaling.scale_to_zero_after_seconds),
    )


@dataclass
class _Track:
    first: float | None = None  # the first sample taken of this function (monotonic)
    # The samples within the stable window that were not 0 (in flight then), oldest first; None for none. Every
    # function is sampled at every tick (Autoscaler.ticks), so the 0s are the ticks missing here: an idle
    # function keeps none (with 10,000 Functions, 120 tuples each held 100 MB and cost the gateway's CPU).
    busy: collections.deque[tuple[float, int]] | None = None
    last_active: float | None = None
    state: ScalerState = field(default_factory=ScalerState)
    written: int | None = None  # the replicas we last wrote or confirmed, to skip needless reads
    denied_since: float | None = None  # the first of the 403s in a row (monotonic)
    denials: int = 0  # 403s in a row
    retry_at: float = 0.0  # after a 403: no try before (monotonic; back-off)
    denied_warned: bool = False  # the one warning of this run of 403s was logged


def _no_pool(fn: FunctionEntry) -> int:
    return 0


def _always() -> bool:
    return True


@dataclass
class Autoscaler:
    counts: Throttler  # in flight per Function object ("ns/name"); on the leader, every replica's
    registry: Registry
    kube: KubeClient  # writes the Deployments' scale
    pool_serving: Callable[[FunctionEntry], int] = _no_pool  # specialised warm-pool pods serving a function
    is_decider: Callable[[], bool] = _always  # this replica leads (and knows every replica's slots)
    hand_over: bool = False  # several replicas: a new decider settles first (see _take_over)
    interval: float = 2.0
    sample: float = 0.5
    tracks: dict[Key, _Track] = field(default_factory=dict)
    ticks: collections.deque[float] = field(default_factory=collections.deque)  # sample times, stable window
    decider_since: float | None = None  # when this replica became the decider (monotonic)

    def note_active(self, key: Key, now: float) -> None:
        """Records activity the sampler may miss: an invocation served by a warm-pool pod can start and end
        between two samples, and the function must not look idle ("idle for inf s") while its own instance
        is still starting."""
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = _Track()
        track.last_active = now

    def _sample(self, now: float) -> None:
        in_flight = self.counts.in_flight
        horizon = now - Policy().stable_window
        self.ticks.append(now)
        while self.ticks[0] < horizon:
            self.ticks.popleft()
        for key in self.registry.functions:
            track = self.tracks.get(key)
            if track is None:
                track = self.tracks[key] = _Track()
            if track.first is None:
                track.first = now
            name = f"{key[0]}/{key[1]}"
            value = in_flight.get(name, 0)
            if value:
                if track.busy is None:
                    track.busy = collections.deque()
                track.busy.append((now, value))
                track.last_active = now
            else:
                released = self.counts.last_active.get(name)
                if released is not None and (track.last_active is None or released > track.last_active):
                    track.last_active = released  # a short invocation (of any replica) between two samples
            busy = track.busy
            if busy is not None:
                while busy and busy[0][0] < horizon:
                    busy.popleft()
                if not busy:
                    track.busy = None
        if len(self.tracks) > len(self.registry.functions):
            for key in set(self.tracks) - set(self.registry.functions):
                del self.tracks[key]

    def _average(self, track: _Track, since: float) -> float:
        """The mean of the function's samples taken at or after ``since`` (0 when there are none)."""
        if track.first is None:
            return 0.0
        taken = len(self.ticks) - bisect.bisect_left(self.ticks, max(since, track.first))
        if not taken or track.busy is None:
            return 0.0
        return sum(v for t, v in track.busy if t >= since) / taken

    async def decide_once(self, now: float) -> None:
        settling = (
            self.hand_over
            and self.decider_since is not None
            and now - self.decider_since < Policy().stable_window
        )
        for key, fn in list(self.registry.functions.items()):
            track = self.tracks.get(key)
            if track is None:
                continue
            policy = policy_of(fn)
            ready = len(self.registry.ready_endpoints(key))
            # Specialised warm-pool pods serve the function until its own instances are ready: they count as
            # serving instances, so the function is not scaled back to zero under them (docs/warm-pools.md).
            serving = ready + self.pool_serving(fn)
            in_flight = self.counts.in_flight.get(f"{key[0]}/{key[1]}", 0)
            if in_flight:
                track.last_active = now
            stats = Stats(
                stable_concurrency=self._average(track, now - policy.stable_window),
                panic_concurrency=self._average(track, now - policy.panic_window),
                last_active=track.last_active,
                waiting=in_flight if serving == 0 else 0,
                in_flight=in_flight,
            )
            result, track.state = decide(policy, stats, ready=serving, now=now, state=track.state)
            desired = result.desired
            if settling and desired < ready:
                desired = ready  # a new decider: up only, until its window holds a stable window of samples
            metrics.AUTOSCALER_DESIRED.labels(*key).set(desired)
            metrics.AUTOSCALER_READY.labels(*key).set(ready)
            await self._apply(fn, track, desired, ready=ready, reason=result.reason, now=now)

    async def _apply(
        self, fn: FunctionEntry, track: _Track, desired: int, *, ready: int, reason: str, now: float
    ) -> None:
        # Settled (what we wrote is what serves): nothing to read or write. Otherwise read the scale first:
        # the activator, or the operator creating the Deployment, may have written it since.
        if track.written == desired and ready == desired:
            return
        if now < track.retry_at:
            return  # refused (403) a moment ago: backing off
        kube = self.kube
        name = deployment_name_of(fn)
        try:
            scale = await kube.get(scale_path(fn.namespace, name))
            current = int(scale.get("spec", {}).get("replicas", 0))
            if current != desired:
                await write_scale(kube, fn.namespace, name, desired)
                logger.info("Scaled %s/%s from %d to %d (%s)", fn.namespace, name, current, desired, reason)
            track.written = desired
        except ApiError as e:
            track.written = None
            if e.status == 403:
                self._denied(fn, track, now, e)
            elif e.status != 404:  # the Deployment is not there yet (or any more): nothing to scale
                logger.warning("Could not scale %s/%s: %s", fn.namespace, name, e)
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            # An API server too slow or gone for a moment (a burst at load 40 timed it out): the next decision
            # tries again. Raised, it ended the autoscaler's task and with it the gateway, losing the calls.
            logger.warning("Could not reach the API server to scale %s/%s: %r", fn.namespace, name, e)
            track.written = None
            return
        if track.denied_since is not None:
            if track.denied_warned:
                logger.info(
                    "May scale %s/%s now (refused for %.0f s)", fn.namespace, name, now - track.denied_since
                )
            track.denied_since, track.denials, track.retry_at, track.denied_warned = None, 0, 0.0, False

    def _denied(self, fn: FunctionEntry, track: _Track, now: float, e: ApiError) -> None:
        """A 403: retried with back-off, quietly at first (the operator grants the function's Role just after
        the Function appears); one warning, naming the cause, once it lasts :data:`DENIED_QUIET_SECONDS`."""
        if track.denied_since is None:
            track.denied_since = now
        track.denials += 1
        track.retry_at = now + min(self.interval * 2 ** (track.denials - 1), DENIED_RETRY_MAX_SECONDS)
        name = deployment_name_of(fn)
        refused_for = now - track.denied_since
        if refused_for >= DENIED_QUIET_SECONDS and not track.denied_warned:
            track.denied_warned = True
            logger.warning(
                "Could not scale %s/%s for %.0f s: this gateway may not (403). The operator grants it per "
                "function, with the Role and RoleBinding %s/%s; is the operator running and the Function "
                "reconciled? Still trying. %s",
                fn.namespace,
                name,
                refused_for,
                fn.namespace,
                scale_role_name(fn.name),
                e,
            )
        else:
            logger.debug("Could not scale %s/%s yet (403, try %d): %s", fn.namespace, name, track.denials, e)

    def _take_over(self, now: float) -> None:
        """This replica just became the decider: fresh windows, and every function counts as active now (its
        idle time is unknown here), so nothing is scaled to zero before a whole idle period has been watched."""
        self.decider_since = now
        if self.hand_over:
            self.tracks = {key: _Track(last_active=now) for key in self.registry.functions}
            logger.info("This gateway replica decides the scaling now")

    async def run(self) -> None:
        next_decision = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.is_decider():
                self.decider_since = None
                await asyncio.sleep(self.sample)
                continue
            if self.decider_since is None:
                self._take_over(now)
            self._sample(now)
            if now >= next_decision:
                await self.decide_once(now)
                next_decision = now + self.interval
            await asyncio.sleep(self.sample)
