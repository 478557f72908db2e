"""Worker slots per instance: an instance runs ``perInstance`` invocations at once, and no more.

The gateway counts what it sends to each endpoint and picks the one with the most free slots, so the
agent's own refusal (429, all workers busy) is the exception, for instance when several gateways share pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Balancer:
    load: dict[str, int] = field(default_factory=dict)
    _freed: asyncio.Event = field(default_factory=asyncio.Event)
    _waiting: int = 0  # acquires waiting for a release

    def try_acquire(
        self, endpoints: Sequence[str], per_instance: int, *, avoid: frozenset[str] = frozenset()
    ) -> str | None:
        best, best_load = None, per_instance
        for endpoint in endpoints:
            current = self.load.get(endpoint, 0)
            if current < best_load and endpoint not in avoid:
                best, best_load = endpoint, current
        if best is not None:
            self.load[best] = best_load + 1
        return best

    async def acquire(
        self,
        endpoints: Callable[[], Sequence[str]],
        per_instance: int,
        *,
        timeout: float,
        avoid: frozenset[str] = frozenset(),
    ) -> str | None:
        """An endpoint with a free slot, waiting up to ``timeout`` for one to free up or appear."""
        deadline = time.monotonic() + timeout
        while True:
            chosen = self.try_acquire(endpoints(), per_instance, avoid=avoid)
            if chosen is not None:
                return chosen
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            freed = self._freed
            # Slots free up on release (an event); new endpoints appear through the registry (polled).
            self._waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), min(left, 0.05))
            finally:
                self._waiting -= 1

    def release(self, endpoint: str) -> None:
        left = self.load.get(endpoint, 0) - 1
        if left > 0:
            self.load[endpoint] = left
        else:
            self.load.pop(endpoint, None)
        # Wake every waiter once, then start a fresh event for the next wait (none to wake: the usual case of a
        # warm call, which found its slot without waiting, costs nothing here).
        if self._waiting:
            self._freed.set()
            self._freed = asyncio.Event()
