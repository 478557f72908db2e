"""The thin loop around the autoscaler's pure decider: sample, decide, write the Deployment scale.

In-flight concurrency per function (admitted and not yet answered, the throttler's exact count) is sampled
every ``sample`` seconds; every ``interval`` seconds each function's stable and panic window averages go to
:func:`kubelambda.autoscaler.decide`, and a changed decision is written to the Deployment's scale subresource.
One gateway replica decides (leader election for several replicas is still to come).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kubelambda import metrics
from kubelambda.autoscaler import Policy, ScalerState, Stats, decide
from kubelambda.gateway.activator import deployment_name_of, scale_path, write_scale
from kubelambda.gateway.registry import FunctionEntry, Key
from kubelambda.kube import ApiError

if TYPE_CHECKING:
    from kubelambda.gateway.app import Gateway

logger = logging.getLogger(__name__)


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
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    last_active: float | None = None
    state: ScalerState = field(default_factory=ScalerState)
    written: int | None = None  # the replicas we last wrote or confirmed, to skip needless reads


@dataclass
class Autoscaler:
    gateway: Gateway
    interval: float = 2.0
    sample: float = 0.5
    tracks: dict[Key, _Track] = field(default_factory=dict)

    def note_active(self, key: Key, now: float) -> None:
        """Records activity the sampler may miss: an invocation served by a warm-pool pod can start and end
        between two samples, and the function must not look idle ("idle for inf s") while its own instance
        is still starting."""
        self.tracks.setdefault(key, _Track()).last_active = now

    def _sample(self, now: float) -> None:
        in_flight = self.gateway.path.throttler.in_flight
        for key in self.gateway.registry.functions:
            track = self.tracks.setdefault(key, _Track())
            value = in_flight.get(f"{key[0]}/{key[1]}", 0)
            track.samples.append((now, value))
            if value:
                track.last_active = now
            horizon = now - Policy().stable_window
            while track.samples and track.samples[0][0] < horizon:
                track.samples.popleft()
        for key in set(self.tracks) - set(self.gateway.registry.functions):
            del self.tracks[key]

    @staticmethod
    def _average(samples: collections.deque[tuple[float, int]], since: float) -> float:
        values = [v for t, v in samples if t >= since]
        return sum(values) / len(values) if values else 0.0

    async def decide_once(self, now: float) -> None:
        for key, fn in list(self.gateway.registry.functions.items()):
            track = self.tracks.get(key)
            if track is None:
                continue
            policy = policy_of(fn)
            ready = len(self.gateway.registry.ready_endpoints(key))
            pool = self.gateway.path.warm_pool
            # Specialised warm-pool pods serve the function until its own instances are ready: they count as
            # serving instances, so the function is not scaled back to zero under them (docs/warm-pools.md).
            serving = ready + (len(pool.endpoints(fn)) if pool is not None else 0)
            in_flight = self.gateway.path.throttler.in_flight.get(f"{key[0]}/{key[1]}", 0)
            if in_flight:
                track.last_active = now
            stats = Stats(
                stable_concurrency=self._average(track.samples, now - policy.stable_window),
                panic_concurrency=self._average(track.samples, now - policy.panic_window),
                last_active=track.last_active,
                waiting=in_flight if serving == 0 else 0,
                in_flight=in_flight,
            )
            result, track.state = decide(policy, stats, ready=serving, now=now, state=track.state)
            metrics.AUTOSCALER_DESIRED.labels(*key).set(result.desired)
            metrics.AUTOSCALER_READY.labels(*key).set(ready)
            await self._apply(fn, track, result.desired, ready=ready, reason=result.reason)

    async def _apply(
        self, fn: FunctionEntry, track: _Track, desired: int, *, ready: int, reason: str
    ) -> None:
        # Settled (what we wrote is what serves): nothing to read or write. Otherwise read the scale first:
        # the activator, or the operator creating the Deployment, may have written it since.
        if track.written == desired and ready == desired:
            return
        kube = self.gateway.kube
        name = deployment_name_of(fn)
        try:
            scale = await kube.get(scale_path(fn.namespace, name))
            current = int(scale.get("spec", {}).get("replicas", 0))
            if current != desired:
                await write_scale(kube, fn.namespace, name, desired)
                logger.info("Scaled %s/%s from %d to %d (%s)", fn.namespace, name, current, desired, reason)
            track.written = desired
        except ApiError as e:
            if e.status != 404:  # the Deployment is not there yet (or any more): nothing to scale
                logger.warning("Could not scale %s/%s: %s", fn.namespace, name, e)
            track.written = None

    async def run(self) -> None:
        next_decision = time.monotonic()
        while True:
            now = time.monotonic()
            self._sample(now)
            if now >= next_decision:
                await self.decide_once(now)
                next_decision = now + self.interval
            await asyncio.sleep(self.sample)
