"""Concurrency limits on the invoke path: a function's reserved concurrency and the shared pool.

Lambda does not queue synchronous invocations over a limit: it answers 429 at once, with the reason
``ReservedFunctionConcurrentInvocationLimitExceeded`` (the function's own limit) or
``ConcurrentInvocationLimitExceeded`` (the account's pool; here, the gateway's pool setting). A slot is held
from admission until the response is complete, so "in flight" is exact, never estimated.
"""

from __future__ import annotations

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


@dataclass
class Throttler:
    """Counts in-flight invocations per function and in total; ``admit`` raises :class:`Throttled` at a limit."""

    pool_limit: int = 1000
    in_flight: dict[str, int] = field(default_factory=dict)  # per Function object (the autoscaler's input)
    by_function: dict[str, int] = field(default_factory=dict)  # per function with all its versions
    total: int = 0

    @contextmanager
    def admit(self, key: str, *, reserved: int | None, function: str | None = None) -> Iterator[None]:
        """``function``: what ``reserved`` counts, a function with all its published versions, as Lambda
        counts reserved concurrency (default ``key``)."""
        group = function or key
        if reserved is not None and self.by_function.get(group, 0) >= reserved:
            raise Throttled(RESERVED, f"Rate Exceeded. Reserved concurrency of {group} is {reserved}")
        if self.total >= self.pool_limit:
            raise Throttled(POOL, f"Rate Exceeded. The concurrency pool of {self.pool_limit} is in use")
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.by_function[group] = self.by_function.get(group, 0) + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            for counts, name in ((self.in_flight, key), (self.by_function, group)):
                left = counts[name] - 1
                if left:
                    counts[name] = left
                else:
                    del counts[name]
