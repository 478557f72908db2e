"""Concurrency limits on the invoke path: a function's reserved concurrency and the shared pool.

Lambda does not queue synchronous invocations over a limit: it answers 429 at once, with the reason
``ReservedFunctionConcurrentInvocationLimitExceeded`` (the function's own limit) or
``ConcurrentInvocationLimitExceeded`` (the account's pool; here, the gateway's pool setting). A slot is held
from admission until the response is complete, so "in flight" is exact, never estimated.

With several gateway replicas the counts live in one of them, the leader (gateway/limits.py): the others ask it
for each slot, so the limits hold across replicas (docs/architecture.md, "Several gateway replicas").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

RESERVED = "ReservedFunctionConcurrentInvocationLimitExceeded"
POOL = "ConcurrentInvocationLimitExceeded"


class Throttled(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class LimitsUnavailable(Exception):
    """No replica could count the slot (the leader is being replaced and did not answer in time): a retryable
    platform error, never a throttle."""


@dataclass
class Throttler:
    """Counts in-flight invocations per function and in total; ``acquire`` raises :class:`Throttled` at a limit."""

    pool_limit: int = 1000
    in_flight: dict[str, int] = field(default_factory=dict)  # per Function object (the autoscaler's input)
    by_function: dict[str, int] = field(default_factory=dict)  # per function with all its versions
    total: int = 0
    last_active: dict[str, float] = field(
        default_factory=dict
    )  # per Function object: last release (monotonic)

    def acquire(
        self, key: str, *, reserved: int | None, function: str | None = None, force: bool = False
    ) -> None:
        """Counts one slot of ``key``. ``function``: what ``reserved`` counts, a function with all its published
        versions, as Lambda counts reserved concurrency (default ``key``). ``force``: count it even over a limit
        (a slot another replica already holds, reported to a new leader)."""
        group = function or key
        if not force:
            if reserved is not None and self.by_function.get(group, 0) >= reserved:
                raise Throttled(RESERVED, f"Rate Exceeded. Reserved concurrency of {group} is {reserved}")
            if self.total >= self.pool_limit:
                raise Throttled(POOL, f"Rate Exceeded. The concurrency pool of {self.pool_limit} is in use")
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.by_function[group] = self.by_function.get(group, 0) + 1
        self.total += 1

    def release(self, key: str, *, function: str | None = None) -> None:
        group = function or key
        self.total -= 1
        self.last_active[key] = time.monotonic()
        for counts, name in ((self.in_flight, key), (self.by_function, group)):
            left = counts[name] - 1
            if left:
                counts[name] = left
            else:
                del counts[name]

    def clear(self) -> None:
        self.in_flight.clear()
        self.by_function.clear()
        self.total = 0

    @contextmanager
    def admit(self, key: str, *, reserved: int | None, function: str | None = None) -> Iterator[None]:
        self.acquire(key, reserved=reserved, function=function)
        try:
            yield
        finally:
            self.release(key, function=function)
