"""The async worker as its own process (``kubelambda async-worker``): it invokes through a gateway's Invoke API.

It lives with the gateway, not in kubelambda.asyncworker: it is a client of the gateway's API and uses its
Function watch and access checks, while the gateway runs kubelambda.asyncworker's Worker in process; so the
dependency goes one way, gateway → asyncworker (tests/unit/test_import_cycles.py).

Invoking through the gateway keeps one exact in-flight count (the gateway's throttler), the activator and the
balancer on the path; the event's request id travels in ``X-Kubelambda-Async-Request-Id`` so every attempt
carries it. The Functions' ``spec.async`` comes from the worker's own watch (the gateway's Registry). Whether
the function ran and failed comes from the agent's ``X-Kubelambda-Outcome``, which the gateway passes through.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict

from kubelambda.aiotasks import run_together
from kubelambda.asyncworker.decide import Outcome, outcome_of_answer
from kubelambda.asyncworker.queue import EventQueue
from kubelambda.asyncworker.record import Response
from kubelambda.asyncworker.worker import Worker, WorkerSettings
from kubelambda.gateway.auth.reviews import AccessReviewer
from kubelambda.gateway.registry import Registry, RegistryLookups
from kubelambda.kube import KubeClient
from kubelambda.outcomes import ASYNC_REQUEST_ID_HEADER, FUNCTION_ERROR_HEADER
from kubelambda.plainhttp import Origin, request_head

logger = logging.getLogger(__name__)
# Past the function timeout: the gateway's cold-start allowance (60 s by default) and its own margin.
INVOKE_MARGIN_SECONDS = 120.0


class RemoteInvoker(RegistryLookups):
    def __init__(
        self,
        gateway_url: str,
        http: aiohttp.ClientSession,
        registry: Registry,
        *,
        region: str,
        token: Callable[[], str | None] | None = None,
        access: AccessReviewer | None = None,
    ) -> None:
        self.access = access  # destination checks (gateway/auth); None when the gateway's auth is off
        self.token = (
            token  # the worker's ServiceAccount token: a platform identity to the gateway (gateway/auth)
        )
        self.gateway_url = gateway_url.rstrip("/")
        self.http = http
        # http:// (the gateway's Service): our own client, as the bridges' (kubelambda.plainhttp: a third of
        # aiohttp's CPU per call); https:// goes through aiohttp.
        parts = urllib.parse.urlsplit(self.gateway_url)
        self.plain = (
            Origin(parts.hostname, parts.port or 80) if parts.scheme == "http" and parts.hostname else None
        )
        self.registry = registry
        self.region = region

    def arn_region(self) -> str:
        return self.region

    def close(self) -> None:
        """Closes the kept-alive connections to the gateway."""
        if self.plain is not None:
            self.plain.close()

    def destination_access(self) -> AccessReviewer | None:
        return self.access

    async def invoke_for_worker(
        self, namespace: str, name: str, payload: bytes, *, request_id: str, traceparent: str | None = None
    ) -> tuple[Outcome, Response | None]:
        spec = self.async_function(namespace, name)
        timeout = (spec.timeout_seconds if spec is not None else 900) + INVOKE_MARGIN_SECONDS
        path = urllib.parse.quote(f"{namespace}/{name}", safe="/")
        headers = {"Content-Type": "application/json", ASYNC_REQUEST_ID_HEADER: request_id}
        if traceparent:
            headers["traceparent"] = traceparent
        bearer = self.token() if self.token is not None else None
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        url = f"{self.gateway_url}/2015-03-31/functions/{path}/invocations"
        try:
            if self.plain is not None:
                target = urllib.parse.urlsplit(url).path
                head = request_head(target, self.plain.authority, headers, len(payload))
                answer = await self.plain.post(head, payload, timeout=timeout)
                status, got, body = answer.status, CIMultiDict(answer.headers), answer.body
            else:
                async with self.http.post(
                    url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    status, got, body = resp.status, CIMultiDict(resp.headers), await resp.read()
        except (aiohttp.ClientError, OSError) as e:  # OSError: TimeoutError and the plain client's errors
            logger.warning("Invoking %s/%s through %s failed: %r", namespace, name, self.gateway_url, e)
            return Outcome.SYSTEM_ERROR, None
        outcome = outcome_of_answer(status, got)
        if outcome in (Outcome.SUCCESS, Outcome.FUNCTION_ERROR):
            return outcome, Response(200, got.get(FUNCTION_ERROR_HEADER), body)
        if outcome is Outcome.SYSTEM_ERROR:
            logger.info("The gateway answered %d for %s/%s: %s", status, namespace, name, body[:200])
        return outcome, None


async def run_worker(
    *,
    kube: KubeClient,
    gateway_url: str,
    nats_url: str,
    stream: str,
    region: str,
    settings: WorkerSettings,
    check_destinations: bool = True,
    cache_seconds: float = 5.0,
    replicas: int = 3,
) -> None:
    """Watches Functions and consumes events until cancelled."""
    registry = Registry()
    queue = await EventQueue.connect(nats_url, stream=stream, replicas=replicas)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        access = AccessReviewer(kube, ttl=cache_seconds) if check_destinations else None
        invoker = RemoteInvoker(
            gateway_url, http, registry, region=region, token=kube.bearer_token, access=access
        )
        tasks = [
            asyncio.create_task(registry.run(kube), name="function watch"),
            asyncio.create_task(Worker(queue, invoker, http, settings=settings).run(), name="async worker"),
        ]
        try:
            await run_together(tasks)
        finally:
            invoker.close()
            await queue.close()
