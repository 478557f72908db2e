"""The autoscaler's loop around the decider: an API server that times out for a moment does not end it."""

from __future__ import annotations

import random
import time
from typing import Any

import aiohttp
import pytest

from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.gateway.registry import FunctionEntry, Registry
from kubelambda.gateway.scaler import Autoscaler
from kubelambda.gateway.throttler import Throttler


class _Unreachable:
    """An API server that does not answer in time (as at load 40, during a burst of 200 pods): every request
    raises what the client raises then. (A real API server cannot be made to time out on demand.)"""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.requests = 0

    async def get(self, path: str, **_: Any) -> dict[str, Any]:
        self.requests += 1
        raise self.error


@pytest.mark.parametrize(
    "error", [TimeoutError(), aiohttp.ClientConnectionError("reset"), OSError("unreachable")]
)
async def test_an_api_server_not_answering_does_not_end_the_autoscaler(error: Exception) -> None:
    registry = Registry()
    body = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x = 1"}}}
    fn = FunctionEntry("shop", "orders", FunctionSpec.model_validate(body), True, "")
    registry.functions[fn.key] = fn
    kube = _Unreachable(error)
    scaler = Autoscaler(Throttler(), registry, kube)  # type: ignore[arg-type]
    now = time.monotonic()
    scaler._sample(now)
    # Raised, this ended the autoscaler's task, and the gateway with it (every call in flight lost).
    await scaler.decide_once(now)
    await scaler.decide_once(now + 2)
    assert kube.requests == 2  # tried again at the next decision
    assert scaler.tracks[fn.key].written is None


def _function(name: str) -> FunctionEntry:
    body = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": "x = 1"}}}
    return FunctionEntry("shop", name, FunctionSpec.model_validate(body), True, "")


def test_the_window_averages_count_every_sample_and_an_idle_function_keeps_none() -> None:
    """The stable (60 s) and panic (6 s) averages are the means of every sample in the window, 0s included,
    from the function's first sample on (one that appears later has fewer); only the samples that were not 0
    are kept."""
    registry, counts = Registry(), Throttler()
    busy, idle, late = _function("busy"), _function("idle"), _function("late")
    registry.functions.update({busy.key: busy, idle.key: idle})
    scaler = Autoscaler(counts, registry, None)  # type: ignore[arg-type]
    rng = random.Random(7)
    history: dict[tuple[str, str], list[tuple[float, int]]] = {busy.key: [], idle.key: [], late.key: []}
    now = 1000.0
    for tick in range(400):  # 200 s of samples every 0.5 s
        now += 0.5
        if tick == 150:
            registry.functions[late.key] = late
        for fn in registry.functions.values():
            value = rng.choice([0, 0, 0, 1, 3]) if fn is not idle and tick % 50 < 20 else 0
            counts.in_flight[f"shop/{fn.name}"] = value
            history[fn.key].append((now, value))
        scaler._sample(now)
        for key, samples in history.items():
            if key not in registry.functions:
                continue
            for window in (60.0, 6.0):
                values = [v for t, v in samples if t >= now - window]
                want = sum(values) / len(values)
                assert scaler._average(scaler.tracks[key], now - window) == pytest.approx(want)
    assert scaler.tracks[idle.key].busy is None
    assert len(scaler.ticks) == 121  # the stable window's, shared by every function
    del registry.functions[late.key]
    scaler._sample(now + 0.5)
    assert set(scaler.tracks) == {busy.key, idle.key}
