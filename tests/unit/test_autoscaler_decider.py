"""Table tests for the autoscaler's pure decision (worked examples in the comments)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from kubelambda.autoscaler import Policy, ScalerState, Stats, decide

P = Policy()  # perInstance 1: one instance per concurrent invocation, as Lambda
P200 = Policy(max_instances=200)
P10 = Policy(per_instance=10)  # at target utilization 0.7, one instance should carry 7 in flight
NOW = 1000.0


@pytest.mark.parametrize(
    ("policy", "stats", "ready", "desired"),
    [
        # 3.5 in flight, one per instance -> 4
        (P, Stats(3.5, 3.5, NOW), 4, 4),
        # one in flight -> exactly one instance (no 0.7 headroom below a single slot)
        (P, Stats(1, 1, NOW), 1, 1),
        # perInstance 10 at 0.7: 7 per instance, 20 in flight -> ceil(20 / 7) = 3
        (P10, Stats(20, 20, NOW), 3, 3),
        # perInstance 2 at 0.7: 1.4 per instance, 4.2 in flight -> 3 (float noise must not make it 4)
        (Policy(per_instance=2), Stats(4.2, 4.2, NOW), 3, 3),
        # maxInstances caps
        (Policy(max_instances=4), Stats(35, 35, NOW), 4, 4),
        # reserved concurrency 6 with perInstance 2 can fill at most 3 instances
        (Policy(per_instance=2, reserved=6), Stats(35, 35, NOW), 3, 3),
        # minInstances keeps warm instances with no traffic at all
        (Policy(min_instances=2), Stats(0, 0, None), 0, 2),
        # nothing ever happened, nothing runs: stay at zero
        (P, Stats(0, 0, None), 0, 0),
        # a request waits in the activator at zero: one instance
        (P, Stats(0, 0, NOW, waiting=1), 0, 1),
    ],
    ids=[
        "stable 3.5",
        "one in flight",
        "per instance 10",
        "per instance 2, float noise",
        "max instances",
        "reserved concurrency",
        "min instances",
        "idle at zero",
        "activator waiting",
    ],
)
def test_desired_instances(policy: Policy, stats: Stats, ready: int, desired: int) -> None:
    result, _ = decide(policy, stats, ready=ready, now=NOW, state=ScalerState())
    assert result.desired == desired, result.reason


@pytest.mark.parametrize(
    ("idle_seconds", "desired"),
    [(0, 1), (59, 1), (60, 0), (600, 0)],
    ids=["just active", "59 s idle", "60 s idle", "10 min idle"],
)
def test_scale_to_zero_waits_for_the_idle_period(idle_seconds: float, desired: int) -> None:
    result, _ = decide(P, Stats(0, 0, NOW - idle_seconds), ready=1, now=NOW, state=ScalerState())
    assert result.desired == desired, result.reason


def test_scale_down_is_rate_limited_to_half_per_decision() -> None:
    # 8 ready, no traffic for long: 8 -> 4 -> 2 -> 1 -> 0, never straight to zero
    ready, seen = 8, []
    state = ScalerState()
    for step in range(5):
        result, state = decide(P, Stats(0, 0, NOW - 600), ready=ready, now=NOW + step, state=state)
        seen.append(result.desired)
        ready = result.desired
    assert seen == [4, 2, 1, 0, 0]


def test_a_surge_panics_and_holds_its_peak_until_a_calm_stable_window() -> None:
    # 2 ready, the last 6 s averaged 42 in flight: ceil(42 / 7) = 6 >= 2 x 2 -> panic at 6
    state = ScalerState()
    result, state = decide(P10, Stats(10, 42, NOW), ready=2, now=NOW, state=state)
    assert (result.desired, result.panicking) == (6, True)
    # 10 s later the burst is gone from the panic window but panic holds the peak: no scale-down
    result, state = decide(P10, Stats(10, 5, NOW + 10), ready=6, now=NOW + 10, state=state)
    assert (result.desired, result.panicking) == (6, True)
    # a stable window (60 s) after the last surge: calm, the stable average decides (ceil(14 / 7) = 2),
    # limited to halving per decision: 6 -> 3
    result, state = decide(P10, Stats(14, 14, NOW + 60), ready=6, now=NOW + 60, state=state)
    assert (result.desired, result.panicking) == (3, False)
    assert state == ScalerState(asked=3)


def test_a_new_surge_extends_the_panic() -> None:
    state = ScalerState()
    _, state = decide(P, Stats(1, 4, NOW), ready=2, now=NOW, state=state)
    # 50 s later another surge (6 ready, 13 in flight over 6 s: 13 >= 2 x 6): panic renewed, at 13
    result, state = decide(P, Stats(2, 13, NOW + 50), ready=6, now=NOW + 50, state=state)
    assert (result.desired, result.panicking) == (13, True)
    # 60 s after the FIRST surge but only 10 s after the second: still panicking, still 13
    result, state = decide(P, Stats(2, 1, NOW + 60), ready=13, now=NOW + 60, state=state)
    assert (result.desired, result.panicking) == (13, True)


def test_scale_up_rate_limit() -> None:
    result, _ = decide(
        Policy(max_scale_up_rate=2.0), Stats(70, 70, NOW), ready=3, now=NOW, state=ScalerState()
    )
    assert result.desired == 6  # wanted 70, at most 3 x 2 per decision


def test_idle_for_the_whole_period_scales_to_zero_before_the_stable_window_forgets() -> None:
    # scaleToZeroAfterSeconds 5: the stable average (60 s) still shows the last burst, but nothing has been
    # in flight for 5 s, so the function goes to zero (rate-limited: 1 -> 0)
    policy = Policy(scale_to_zero_after=5)
    result, _ = decide(policy, Stats(0.4, 0, NOW - 5), ready=1, now=NOW, state=ScalerState())
    assert result.desired == 0, result.reason
    # 4 s idle: not yet
    result, _ = decide(policy, Stats(0.4, 0, NOW - 4), ready=1, now=NOW, state=ScalerState())
    assert result.desired == 1, result.reason


def test_stale_averages_do_not_bring_an_idle_function_back_from_zero() -> None:
    # Scaled to zero 2 s after its last request; the windows still average 0.1 in flight
    policy = Policy(scale_to_zero_after=0)
    result, _ = decide(policy, Stats(0.06, 0.1, NOW - 2), ready=0, now=NOW, state=ScalerState())
    assert result.desired == 0, result.reason
    # ...but a request waiting in the activator does
    result, _ = decide(policy, Stats(0.06, 0.1, NOW, waiting=1), ready=0, now=NOW, state=ScalerState())
    assert result.desired == 1, result.reason


def test_never_to_zero_under_a_running_request() -> None:
    # scaleToZeroAfterSeconds 0 and a long request still running: its instance stays
    policy = Policy(scale_to_zero_after=0)
    result, _ = decide(policy, Stats(0, 0, NOW - 10, in_flight=1), ready=1, now=NOW, state=ScalerState())
    assert result.desired == 1, result.reason


def test_a_burst_is_asked_for_at_the_next_decision_not_over_the_panic_window() -> None:
    # 200 first calls at once, one instance ready (the activator's): the 6 s window still averages 30 in flight,
    # but 200 are in flight now: all 200 instances at once, not 30, then more as the average catches up
    result, _ = decide(P200, Stats(3, 30, NOW, in_flight=200), ready=1, now=NOW, state=ScalerState())
    assert (result.desired, result.panicking) == (200, True), result.reason


def test_pods_asked_away_and_still_listed_ready_are_not_asked_back() -> None:
    # 6 ready, 3 in flight: halve to 3. Two seconds later the endpoints list 10 ready: 4 pods that were starting
    # got ready, the 3 removed ones are still listed (terminating). Counting them would ask for 5: a re-add.
    state = ScalerState()
    result, state = decide(P, Stats(3, 3, NOW), ready=6, now=NOW, state=state)
    assert result.desired == 3, result.reason
    result, state = decide(P, Stats(3, 3, NOW + 2), ready=10, now=NOW + 2, state=state)
    assert result.desired == 3, result.reason


def test_a_panic_during_a_scale_down_holds_what_it_asked_not_what_still_terminates() -> None:
    # Scaled 40 -> 20; the 20 removed still show ready when a surge comes (48 in flight: 48 >= 2 x 20):
    # the panic asks for 48, and what it holds is its own ask, never the 40 listed
    state = ScalerState(asked=20)
    result, state = decide(P, Stats(10, 48, NOW, in_flight=48), ready=40, now=NOW, state=state)
    assert (result.desired, result.panicking) == (48, True), result.reason
    result, state = decide(P, Stats(10, 30, NOW + 2, in_flight=30), ready=60, now=NOW + 2, state=state)
    assert result.desired == 48, result.reason


def test_the_activators_instance_from_zero_counts_as_serving() -> None:
    # The last decision asked for 0; the activator brought one up for a request: it serves until idle
    result, _ = decide(P, Stats(0, 0, NOW - 1), ready=1, now=NOW, state=ScalerState(asked=0))
    assert result.desired == 1, result.reason


class _Pods:
    """A Deployment's pods as the gateway's endpoints show them: a pod asked for is ready ``start`` s later and
    listed ``lag`` s after that; a removed pod (starting ones first, then the newest ready) is unlisted only
    ``terminate`` s later."""

    def __init__(self, start: float, lag: float, terminate: float) -> None:
        self.start, self.lag, self.terminate = start, lag, terminate
        self.pods: list[list[float]] = []  # [ready at, unlisted at (inf while kept)]

    def scale(self, now: float, replicas: int) -> None:
        kept = sorted((p for p in self.pods if p[1] == float("inf")), key=lambda p: p[0])
        for pod in kept[replicas:][::-1]:
            pod[1] = now if pod[0] > now else now + self.terminate
        self.pods += [[now + self.start, float("inf")] for _ in range(replicas - len(kept))]

    def listed(self, now: float) -> int:
        return sum(1 for ready, gone in self.pods if ready + self.lag <= now < gone)


def _simulate(
    policy: Policy, load: Callable[[float], int], pods: _Pods, seconds: float
) -> list[tuple[float, int]]:
    """The scaler's loop (a sample every 0.5 s, a decision every 2 s) against ``pods``: what each decision asked."""
    state, samples, asked = ScalerState(), list[tuple[float, int]](), []
    for tick in range(int(seconds * 2)):
        now = tick * 0.5
        samples.append((now, load(now)))
        if tick % 4:
            continue

        def average(window: float, at: float = now) -> float:
            values = [v for t, v in samples if t > at - window]
            return sum(values) / len(values)

        last = max((t for t, v in samples if v), default=None)
        stats = Stats(average(60), average(6), last, in_flight=load(now))
        result, state = decide(policy, stats, ready=pods.listed(now), now=now, state=state)
        pods.scale(now, result.desired)
        asked.append((now, result.desired))
    return asked


def _never_back_up(asked: list[tuple[float, int]]) -> None:
    """Once the asks go down they never go up again (the loads below only fall after their peak)."""
    down = next(i for i in range(1, len(asked)) if asked[i][1] < asked[i - 1][1])
    after = [d for _, d in asked[down:]]
    assert all(b <= a for a, b in itertools.pairwise(after)), asked[down - 1 :]
    assert after[-1] == 0, asked[-5:]


def _steps(*steps: tuple[float, int]) -> Callable[[float], int]:
    """In flight over time: ``(until, value)`` steps."""
    return lambda t: next((v for until, v in steps if t < until), 0)


@pytest.mark.parametrize(("start", "lag", "terminate"), [(3, 1, 4), (8, 3, 6), (1, 0.5, 10)])
def test_a_falling_load_scales_down_without_flapping(start: float, lag: float, terminate: float) -> None:
    """A burst from zero and a falling load, pods that start slowly and stay listed while terminating: the
    burst is asked for at once, and once it scales down it never asks for more."""
    load = _steps((10, 0), (20, 200), (90, 60), (150, 20), (200, 5))
    asked = _simulate(
        Policy(max_instances=200, scale_to_zero_after=30), load, _Pods(start, lag, terminate), 300
    )
    assert dict(asked)[10] == 200, asked  # the burst's first decision asks for all of it
    _never_back_up(asked)


def test_pods_listed_late_during_a_scale_down_are_not_asked_back() -> None:
    """Two waves of a burst, then idle (scaleToZeroAfterSeconds 2): the second wave's pods are ready but not
    listed yet when the scale-down removes them (newest first), and then listed while terminating; counting
    them, the next decision asked for half of them back."""
    load = _steps((10, 0), (12, 100), (13, 200))
    _never_back_up(_simulate(Policy(max_instances=200, scale_to_zero_after=2), load, _Pods(3, 3, 10), 120))
