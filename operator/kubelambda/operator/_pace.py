"""How hard the operator presses the API server: how many reconciles run at once, and how long a write the
API server could not handle (429, 5xx, a timeout) waits before it is tried again.

The number of reconciles at once adapts to what the API server sustains (additive increase, multiplicative
decrease): each reconcile that finishes raises it by about one per round of reconciles, up to
``reconcile_workers``; an overloaded answer halves it (at most once per :data:`CUT_SECONDS`, since the answers
of the reconciles already running report the same overload). Retries wait a random share of a doubling
back-off, so the reconciles that failed together do not come back together.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from kubelambda.kube import ApiError

# Answers that say "not now" rather than "no": the same request may succeed later.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 4  # of one object's read or write before the whole reconcile is retried (by kopf)
BACKOFF_BASE = 0.5  # seconds; the n-th retry waits up to BACKOFF_BASE * 2**n, at most BACKOFF_MAX
BACKOFF_MAX = 10.0
CUT_SECONDS = 2.0
MIN_LIMIT = 2

T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is the API server being too busy (or briefly away), not a refusal."""
    if isinstance(error, ApiError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, TimeoutError | aiohttp.ClientError)


def backoff_seconds(attempt: int, *, rand: Callable[[], float] = random.random) -> float:
    """The wait before retry ``attempt`` (0 = the first retry): half the doubling cap plus a random share of the
    other half, so waits grow and never line up."""
    cap = min(BACKOFF_MAX, BACKOFF_BASE * 2.0**attempt)
    return cap / 2 + rand() * cap / 2


class AdaptiveLimit:
    """An ``async with`` limit on reconciles at once whose size follows the API server (module docstring)."""

    def __init__(
        self, maximum: int, *, minimum: int = MIN_LIMIT, clock: Callable[[], float] = time.monotonic
    ):
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.limit = float(maximum)
        self.held = 0
        self._clock = clock
        self._last_cut = float("-inf")
        self._free = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._free:
            await self._free.wait_for(lambda: self.held < int(self.limit))
            self.held += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._free:
            self.held -= 1
            self._free.notify(max(0, int(self.limit) - self.held))

    def succeeded(self) -> None:
        """A reconcile finished without an overloaded answer: about one more per round of reconciles."""
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def overloaded(self) -> None:
        """The API server answered 429/5xx or not in time: halve (once per CUT_SECONDS)."""
        now = self._clock()
        if now - self._last_cut >= CUT_SECONDS:
            self._last_cut = now
            self.limit = max(float(self.minimum), self.limit / 2)


async def retrying(call: Callable[[], Awaitable[T]], *, overloaded: Callable[[], None]) -> T:
    """``call()``, again after a jittered back-off while the API server answers transiently (``overloaded`` is
    told each time), at most :data:`ATTEMPTS` times; any other error, or the last, is raised."""
    attempt = 0
    while True:
        try:
            return await call()
        except (ApiError, TimeoutError, aiohttp.ClientError) as e:
            if not is_transient(e) or attempt + 1 >= ATTEMPTS:
                raise
            overloaded()
            await asyncio.sleep(backoff_seconds(attempt))
            attempt += 1
