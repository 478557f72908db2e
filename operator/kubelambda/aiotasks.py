"""Running several asyncio tasks as one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def run_together(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Awaits ``tasks`` until they all end or one fails (its exception is raised), or until this is cancelled; in
    each case the others are cancelled and awaited first, so no task outlives the call."""
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
