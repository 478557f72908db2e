"""The autoscaler's loop around the decider: an API server that times out for a moment does not end it."""

from __future__ import annotations

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
