"""An HTTP destination for invocation records: every record POSTed to /<key> is kept under that key.

It binds port 0 and reads back the port it got, so no other process can take the port in between."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kltest.wait import wait_for

JSON = dict[str, Any]


class Records:
    def __init__(self) -> None:
        self.got: dict[str, list[JSON]] = {}
        self.port = 0  # known once started
        self.runner: web.AppRunner | None = None

    def url(self, key: str) -> str:
        assert self.port, "Records.start() first"
        return f"http://127.0.0.1:{self.port}/{key}"

    def of(self, key: str) -> list[JSON]:
        return self.got.setdefault(key, [])

    async def _post(self, request: web.Request) -> web.Response:
        self.of(request.match_info["key"]).append(await request.json())
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{key}", self._post)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def wait(self, key: str, count: int = 1, *, timeout: float = 90) -> list[JSON]:
        return await wait_for(
            lambda: asyncio.sleep(0, result=list(self.of(key))),
            lambda got: len(got) >= count,
            what=f"{count} record(s) at /{key}",
            timeout=timeout,
        )
