"""How the gateway registers its HTTP routes: every handler wrapped by one guard (``Gateway._guarded``: held body
bytes given back, unexpected errors answered without detail), rather than by an aiohttp middleware, since with any
middleware at all aiohttp runs every request through two more coroutines, the Invoke API's too (issue 24)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardedRoutes:
    """The part of an aiohttp router the gateway's modules register with, each handler passed through ``guard``."""

    def __init__(self, router: web.UrlDispatcher, guard: Callable[[Handler], Handler]) -> None:
        self.router = router
        self.guard = guard

    def add_route(self, method: str, path: str, handler: Handler, **options: Any) -> web.AbstractRoute:
        return self.router.add_route(method, path, self.guard(handler), **options)

    def add_get(self, path: str, handler: Handler, **options: Any) -> web.AbstractRoute:
        return self.router.add_get(path, self.guard(handler), **options)

    def add_post(self, path: str, handler: Handler, **options: Any) -> web.AbstractRoute:
        return self.router.add_post(path, self.guard(handler), **options)
