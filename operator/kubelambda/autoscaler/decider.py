"""The autoscaler's decision: how many instances a function wants, from what it observed. Pure.

Modelled on Knative's KPA: concurrency averaged over a long *stable* window (60 s) and a short *panic*
window (6 s). Normally the stable average decides, which keeps the count steady under jitter; when the
panic average alone would need at least ``panic_threshold`` x the ready instances, the decider panics:
it follows the panic window and does not scale down until a whole stable window has passed calmly.

Worked example (perInstance 10, targetUtilization 0.7, so one instance should carry 7 in-flight requests):
  stable average 35 in flight → ceil(35 / 7) = 5 instances;
  2 ready, panic average 42 → ceil(42 / 7) = 6 ≥ 2 x 2 → panic, want 6 now (rate limit permitting);
  traffic stops: stable average falls to 0 → want 0, but only after ``scale_to_zero_after`` seconds with
  nothing in flight; until then the current count is kept (never below 1 while anything was recent).

Two rules keep it from lagging or flapping (issue 24):
- in panic it follows what is in flight *now* as well as the panic average: a burst from zero asks for every
  instance it needs at the next decision, not over the panic window while the average catches up;
- it counts no more instances than it last asked for (``ready`` capped by :attr:`ScalerState.asked`): pods it
  removed stay ready for a while (terminating, the endpoints lag), and counting them as serving would hold a
  panic at them or halve from them, asking back for pods it had just removed.

The clock is a parameter (``now``) and the only state is :class:`ScalerState`, returned with the result,
so table tests can replay minutes of traffic instantly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Policy:
    """From a Function's ``spec.scaling`` and ``spec.concurrency``."""

    min_instances: int = 0
    max_instances: int = 100
    per_instance: int = 1
    target_utilization: float = 0.7
    reserved: int | None = None  # reserved concurrency: no more instances than it can use
    scale_to_zero_after: float = 60.0  # seconds with nothing in flight before going to 0
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0  # panic when the panic window wants ≥ 2 x the ready instances
    max_scale_up_rate: float = 1000.0  # at most ready x rate instances per decision
    max_scale_down_rate: float = 2.0  # at least ready / rate instances per decision

    @property
    def target_per_instance(self) -> float:
        """In-flight invocations one instance should carry: ``perInstance x targetUtilization``, but never
        below one. An instance that runs one invocation at a time is planned at exactly one, as a Lambda
        execution environment is (Knative's 0.7 for containerConcurrency 1 would start two pods per request)."""
        return max(1.0, self.per_instance * self.target_utilization)

    @property
    def ceiling(self) -> int:
        """The most instances the function may have: maxInstances, and what reserved concurrency can fill."""
        if self.reserved is None:
            return self.max_instances
        return min(self.max_instances, math.ceil(self.reserved / self.per_instance))


@dataclass(frozen=True)
class Stats:
    """Observed load: average in-flight (running + queued) requests over each window."""

    stable_concurrency: float
    panic_concurrency: float
    last_active: float | None  # when something was last in flight (monotonic seconds), None if never
    waiting: int = 0  # requests held by the activator for want of an instance
    in_flight: int = 0  # admitted and unanswered right now (never scale to zero under a running request)


@dataclass(frozen=True)
class ScalerState:
    panic_since: float | None = None  # the last surge while panicking; None when calm
    panic_peak: int = 0  # the most instances wanted during this panic: never scale below it while panicking
    asked: int | None = None  # what the last decision asked for (None: nothing yet)


@dataclass(frozen=True)
class ScaleResult:
    desired: int
    panicking: bool
    reason: str


def _instances_for(concurrency: float, per_instance: float) -> int:
    # The epsilon keeps float noise from adding an instance: 4.2 / 0.7 is 6.000000000000001, and needs 6.
    return max(0, math.ceil(concurrency / per_instance - 1e-9))


def decide(
    policy: Policy, stats: Stats, *, ready: int, now: float, state: ScalerState
) -> tuple[ScaleResult, ScalerState]:
    """Desired instances for one function. ``ready`` is how many instances serve now."""
    stable_want = _instances_for(stats.stable_concurrency, policy.target_per_instance)
    # The panic window's average, or what is in flight right now if more (a burst has not filled the window yet).
    panic_want = _instances_for(max(stats.panic_concurrency, stats.in_flight), policy.target_per_instance)
    # What serves and stays: instances removed by the last decision may still show as ready (terminating).
    # (The activator's instance from zero is not counted here but still kept until idle, below.)
    serving = ready if state.asked is None else min(ready, state.asked)

    # Panic: the short window needs at least panic_threshold x what serves now (or anything, from zero).
    surge = panic_want > 0 and (serving == 0 or panic_want / serving >= policy.panic_threshold)
    panic_since = state.panic_since
    if surge:
        panic_since = now  # (re)start the panic: it lasts a stable window past the last surge
    elif panic_since is not None and now - panic_since >= policy.stable_window:
        panic_since = None  # a whole stable window without a surge: calm again

    if panic_since is not None:
        # While panicking, never below what is ready nor below the panic's peak: scaling down waits for calm.
        want = max(panic_want, stable_want, state.panic_peak, serving)
        reason = (
            f"panic: {stats.panic_concurrency:.2f} in flight over the panic window, {stats.in_flight} now"
        )
        new_state = ScalerState(panic_since=panic_since, panic_peak=max(state.panic_peak, want))
    else:
        want = stable_want
        reason = f"stable: {stats.stable_concurrency:.2f} in flight over the stable window"
        new_state = ScalerState()

    # Nothing in flight for the whole idle period: zero, whatever the (slower) stable average still says.
    idle_for = math.inf if stats.last_active is None else now - stats.last_active
    # (Also at zero ready: stale window averages must not bring back a function nobody is calling.)
    if want > 0 and idle_for >= policy.scale_to_zero_after and stats.waiting == 0 and stats.in_flight == 0:
        want = 0
        new_state = ScalerState()
        panic_since = None

    if stats.waiting > 0:
        want = max(want, 1)
        reason = f"{stats.waiting} request(s) waiting for an instance"

    # Rate limits relative to what is ready (from zero, scaling up is limited by the ceiling only).
    if serving > 0:
        want = min(want, math.ceil(serving * policy.max_scale_up_rate))
        want = max(want, math.floor(serving / policy.max_scale_down_rate))

    # Scale to zero only after the idle period; until then keep at least one instance.
    if want == 0 and ready > 0:
        if idle_for < policy.scale_to_zero_after or stats.in_flight > 0:
            want = 1
            reason = f"idle {idle_for:.0f} s of {policy.scale_to_zero_after:.0f} s before scaling to zero"
        else:
            reason = f"idle for {idle_for:.0f} s: scaling to zero"

    bounded = min(max(want, policy.min_instances), policy.ceiling)
    if bounded != want:
        reason += f"; bounded to [{policy.min_instances}, {policy.ceiling}]"
    return ScaleResult(desired=bounded, panicking=panic_since is not None, reason=reason), replace(
        new_state, asked=bounded
    )
