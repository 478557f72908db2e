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
    in_flight: dict[str, int] = field(default_factory=dict)
    total: int = 0

    @contextmanager
    def admit(self, key: str, *, reserved: int | None) -> Iterator[None]:
        current = self.in_flight.get(key, 0)
        if reserved is not None and current >= reserved:
            raise Throttled(RESERVED, f"Rate Exceeded. Reserved concurrency of {key} is {reserved}")
        if self.total >= self.pool_limit:
            raise Throttled(POOL, f"Rate Exceeded. The concurrency pool of {self.pool_limit} is in use")
        self.in_flight[key] = current + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            left = self.in_flight[key] - 1
            if left:
                self.in_flight[key] = left
            else:
                del self.in_flight[key]
