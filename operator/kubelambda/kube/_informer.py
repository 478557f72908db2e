"""List, then watch, forever: the informer pattern without the framework.

``on_list`` gets every object after each (re)list, so a consumer can drop what disappeared while the watch
was down; ``on_event`` gets each change after that. A watch whose version is too old (410) relists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from kubelambda.jsonobj import JSON
from kubelambda.kube._client import ApiError, KubeClient

logger = logging.getLogger(__name__)


async def list_and_watch(
    kube: KubeClient,
    path: str,
    *,
    on_list: Callable[[list[JSON]], Awaitable[None]],
    on_event: Callable[[str, JSON], Awaitable[None]],
    params: Mapping[str, str] | None = None,
    retry_seconds: float = 1.0,
) -> None:
    version = ""
    while True:
        try:
            if not version:
                listing = await kube.list(path, params=params)
                await on_list(listing["items"])
                version = listing["metadata"]["resourceVersion"]
            async for event in kube.watch(path, params=params, resource_version=version):
                version = event.object["metadata"].get("resourceVersion", version)
                if event.type != "BOOKMARK":
                    await on_event(event.type, event.object)
        except ApiError as e:
            if e.status == 410:
                version = ""  # too old: list again
                continue
            logger.warning("Watch of %s failed: %s", path, e)
            await asyncio.sleep(retry_seconds)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.warning("Watch of %s broke: %s", path, e)
            await asyncio.sleep(retry_seconds)
