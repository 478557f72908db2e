"""Waiting on a condition with a deadline, and failing with what was last seen (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Calls ``probe`` until ``done(result)``; on timeout fails naming ``what`` and the last result seen."""
    deadline = time.monotonic() + timeout
    last: object = "nothing yet"
    while True:
        try:
            result = await probe()
        except Exception as e:  # a probe may fail while the thing it watches is still appearing
            last = f"{type(e).__name__}: {e}"
        else:
            if done(result):
                return result
            last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(interval)
