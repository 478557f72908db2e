"""Table tests for the autoscaler's pure decision (worked examples in the comments)."""

from __future__ import annotations

import pytest

from kubelambda.autoscaler import Policy, ScalerState, Stats, decide

P = Policy()  # perInstance 1: one instance per concurrent invocation, as Lambda
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
    assert state == ScalerState()


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
