"""Function logs through the gateway (docs/logs.md, "Reading"): ``GET /kubelambda/logs/{namespace}/{name}``.

The log store (NATS JetStream, :mod:`kubelambda.logstore`) is the platform's: tenants do not reach it. This
route reads it for them, authorised as the control-plane API is (the caller signs with an access key or sends a
Kubernetes token; RBAC must allow ``get`` on the Function, as ``kubectl logs`` needs ``pods/log``), so a tenant
reads only the logs of Functions it may read, in its own namespaces.

Query: ``requestId``, ``since``, ``until`` (a duration ago such as ``10m``, or an ISO 8601 time), ``level``,
``filter`` (a substring), ``follow`` (``true``: keep the answer open and send new records as they come).
The answer is NDJSON: one record a line (the fields of :func:`kubelambda.logstore.to_jsonable`), then, unless
following, a last line ``{"done": true, "records": N, "why": "..."}``, ``why`` saying why nothing was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field

import nats
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS

from kubelambda import logstore, natsauth
from kubelambda.gateway.auth import NOBODY, Authoriser, AuthRefused
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.errors import error_response
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.gateway.guarded import GuardedRoutes

logger = logging.getLogger(__name__)

LOGS_PATH = "/kubelambda/logs/{namespace}/{name}"
ACTION = "kubelambda:GetFunctionLogs"
_TRUE = ("1", "true", "yes")


@dataclass
class LogsApi:
    settings: GatewaySettings
    auth: Authoriser
    _nc: NATS | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def register(self, router: GuardedRoutes) -> None:
        router.add_get(LOGS_PATH, self.logs)

    async def _connection(self) -> NATS:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                assert self.settings.nats_url is not None
                url = self.settings.nats_url
                self._nc = await nats.connect(
                    natsauth.servers(url),
                    connect_timeout=3,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    **natsauth.connect_options(url),  # the store's answers come to the gateway's own inbox
                )
            return self._nc

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    def query(self, namespace: str, name: str, params: dict[str, str]) -> logstore.LogQuery:
        """The request's query; raises ``ValueError`` naming the bad parameter."""
        try:
            since = logstore.parse_time(params["since"]) if params.get("since") else None
            until = logstore.parse_time(params["until"]) if params.get("until") else None
        except ValueError as e:
            raise ValueError(f"since/until: {e}") from None
        try:
            level = logstore.check_level(params["level"]) if params.get("level") else None
        except ValueError as e:
            raise ValueError(f"level: {e}") from None
        return logstore.LogQuery(
            namespace,
            name,
            request_id=params.get("requestId") or None,
            since=since,
            until=until,
            contains=params.get("filter") or None,
            level=level,
        )

    async def logs(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        ref = FunctionRef(namespace, name)
        try:
            identity = await self.auth.authenticate(request, b"") if self.auth.enabled else NOBODY
            await self.auth.decide(
                identity,
                ACTION,
                "get",
                namespace,
                name,
                arn=ref.arn(self.settings.region),
                hint=" (reading a Function's logs needs get on it)",
            )
        except AuthRefused as e:
            return error_response(e.code, e.message)
        if self.settings.nats_url is None or not self.settings.logs:
            return error_response(
                "ServiceException",
                "this gateway has no log store (KUBELAMBDA_GATEWAY_NATS_URL unset or KUBELAMBDA_GATEWAY_LOGS off)",
            )
        try:
            query = self.query(namespace, name, dict(request.query))
        except ValueError as e:
            return error_response("InvalidParameterValueException", str(e))
        follow = request.query.get("follow", "").lower() in _TRUE
        try:
            nc = await self._connection()
        except (OSError, TimeoutError, nats.errors.Error) as e:
            logger.warning("Cannot reach the log store at %s: %s", self.settings.nats_url, e)
            return error_response("ServiceException", "the log store cannot be reached; try again")

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        count = 0

        async def pump() -> None:
            nonlocal count
            with contextlib.suppress(logstore.LogStoreError):  # no stream: why_empty says so
                async for record in logstore.read(nc, query, follow=follow):
                    count += 1
                    line = logstore.to_jsonable(record) | ({"truncated": True} if record.truncated else {})
                    await response.write(json.dumps(line).encode() + b"\n")

        # A follower that went away is noticed even while nothing is written: its consumer must not stay.
        task = asyncio.create_task(pump())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=1.0)
                if request.transport is None or request.transport.is_closing():
                    return response
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(ConnectionResetError):
            await task
            why = logstore.why_empty(query, await logstore.stream_state(nc, namespace)) if count == 0 else ""
            await response.write(json.dumps({"done": True, "records": count, "why": why}).encode() + b"\n")
            await response.write_eof()
        return response
