"""What every bridge source gets: its Trigger, an invoker, a checkpoint, a status reporter and Secrets.

A source is one class per kind of event source (``bucket``, ``schedule``, a queue broker, a stream broker) with
``routes()`` (extra HTTP routes on the bridge's server, e.g. a webhook) and ``run()`` (consume until cancelled).
The framework (``kubelambda.bridge._main``) builds the context, serves ``/healthz``, ``/metrics`` and the routes,
and runs the source.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from kubelambda import metrics, tracing
from kubelambda.api.v1alpha1 import GROUP, VERSION, Trigger
from kubelambda.jsonobj import JSON, utcnow
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.plainhttp import PlainHttp
from kubelambda.resources.bridge import checkpoint_name

log = logging.getLogger("kubelambda.bridge")
BRIDGE_FIELD_MANAGER = "kubelambda-bridge"
SOURCE_REACHABLE = "SourceReachable"
TOKEN_REREAD_SECONDS = 30.0
"""How long the bridge reuses its ServiceAccount token before reading it again: the kubelet renews a projected
token when 80 % of its lifetime (at least 10 minutes) has passed, long before the old one expires."""
T = TypeVar("T")


async def within(step: Awaitable[T], seconds: float, what: str) -> T:
    """Awaits ``step`` (a broker's connect, a first request) for at most ``seconds``: a broker that accepted the
    connection and then does not answer raises ``ConnectionError("<what> within <seconds> s")``, which the
    bridges report (``SourceReachable`` False) and retry like a refused connection. A ``TimeoutError`` of the
    client's own passes through unchanged: it says what the client waited for."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await step
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ConnectionError(f"{what} within {seconds:g} s") from None


@dataclass(frozen=True)
class InvokeResult:
    """The gateway's answer to one invocation."""

    status: int
    payload: bytes
    request_id: str
    function_error: str | None = None

    @property
    def ok(self) -> bool:
        """The function ran and succeeded (sync 200 without X-Amz-Function-Error, or async 202 accepted)."""
        return self.status in (200, 202, 204) and self.function_error is None

    @property
    def throttled(self) -> bool:
        return self.status == 429

    @property
    def platform_error(self) -> bool:
        """Not the function's fault (gateway or platform 5xx, unreachable): retry without counting."""
        return self.status >= 500 or self.status == 0

    def json(self) -> Any:
        """The response payload as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            return None


class Invoker:
    """Invokes the Trigger's Function through the gateway's Invoke API (same path as every other caller)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        gateway_url: str,
        namespace: str,
        function: str,
        timeout_seconds: float = 1020.0,
        token: Callable[[], str | None] | None = None,
    ) -> None:
        path = urllib.parse.quote(f"{namespace}/{function}", safe="/")
        self.url = f"{gateway_url.rstrip('/')}/2015-03-31/functions/{path}/invocations"
        self.http = http
        self.token = token  # the bridge's ServiceAccount token, sent as a bearer token (gateway/auth)
        self.timeout_seconds = timeout_seconds
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._bearer: tuple[float, str | None] | None = None
        # http:// (the gateway's Service in the cluster): a request and its answer in ~20 µs of CPU instead of
        # aiohttp's ~150-250 (kubelambda.plainhttp); https:// goes through aiohttp.
        self.plain = PlainHttp(self.url) if self.url.startswith("http://") else None

    def _bearer_token(self) -> str | None:
        """The token, re-read at most every ``TOKEN_REREAD_SECONDS`` (in a pod it is a file the kubelet
        rotates: reading it for every batch was three system calls per invocation)."""
        if self.token is None:
            return None
        now = time.monotonic()
        if self._bearer is None or now - self._bearer[0] >= TOKEN_REREAD_SECONDS:
            self._bearer = (now, self.token())
        return self._bearer[1]

    async def invoke(
        self,
        payload: bytes | Mapping[str, Any],
        *,
        asynchronous: bool = False,
        idempotency_key: str | None = None,
    ) -> InvokeResult:
        """One invocation; ``asynchronous`` makes it an Event invocation (202 once persisted by the gateway).

        ``idempotency_key`` (Event only) makes the request id a function of the key, so an event re-sent after
        a crash is stored once within JetStream's duplicate window and carries the same request id.

        Connection failures come back as status 0 (a platform error), never as exceptions, so every source
        handles "the gateway is down" the way it handles a 5xx.
        """
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Invocation-Type": "Event" if asynchronous else "RequestResponse",
        }
        if idempotency_key is not None:
            headers["X-Kubelambda-Idempotency-Key"] = idempotency_key
        if (traceparent := tracing.current_traceparent()) is not None:  # the batch's span (docs/tracing.md)
            headers[tracing.TRACEPARENT] = traceparent
        bearer = self._bearer_token()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        started = time.perf_counter()
        try:
            if self.plain is not None:
                answer = await self.plain.post(body, headers, timeout=self.timeout_seconds)
                result = InvokeResult(
                    status=answer.status,
                    payload=answer.body,
                    request_id=answer.headers.get("x-amzn-requestid", ""),
                    function_error=answer.headers.get("x-amz-function-error"),
                )
            else:
                async with self.http.post(self.url, data=body, headers=headers, timeout=self.timeout) as resp:
                    result = InvokeResult(
                        status=resp.status,
                        payload=await resp.read(),
                        request_id=resp.headers.get("X-Amzn-RequestId", ""),
                        function_error=resp.headers.get("X-Amz-Function-Error"),
                    )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            result = InvokeResult(status=0, payload=(str(e) or type(e).__name__).encode(), request_id="")
        outcome = (
            "success"
            if result.ok
            else "throttled"
            if result.throttled
            else "function_error"
            if result.function_error
            else "error"
        )
        metrics.BRIDGE_INVOCATIONS.labels(outcome).inc()
        metrics.BRIDGE_INVOKE_SECONDS.observe(time.perf_counter() - started)
        return result

    def close(self) -> None:
        """Closes the kept-alive connections to the gateway."""
        if self.plain is not None:
            self.plain.close()


class Checkpoint:
    """String key/values kept in the Trigger's checkpoint ConfigMap (created by the operator, owned by the
    Trigger, so it goes with it). Saves are server-side applies of the whole map: keys left out are removed."""

    def __init__(self, kube: KubeClient, *, namespace: str, trigger: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = checkpoint_name(trigger)
        self.path = resource_path("v1", "configmaps", namespace=namespace, name=self.name)

    async def load(self) -> dict[str, str]:
        found = await self.kube.get_or_none(self.path)
        if found is None:
            return {}
        return dict(found.get("data") or {})

    async def save(self, data: Mapping[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "data": dict(sorted(data.items())),
        }
        await self.kube.apply(self.path, body, field_manager=BRIDGE_FIELD_MANAGER)
        metrics.BRIDGE_CHECKPOINTS.inc()


class StatusReporter:
    """The bridge's part of the Trigger's status: ``SourceReachable``, ``lastEventTime``, ``lag``,
    ``iteratorAgeSeconds``, ``eventsDelivered``.

    Written by server-side apply on the status subresource with the bridge's own field manager, so it merges
    with the operator's ``Ready`` condition (conditions are a map keyed by type) instead of replacing it.
    Writes are coalesced: at most one per ``interval`` seconds, except a change of reachability, which is
    written at once.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        trigger: str,
        generation: int | None,
        interval: float = 10.0,
    ) -> None:
        self.kube = kube
        self.path = resource_path(
            f"{GROUP}/{VERSION}", "triggers", namespace=namespace, name=trigger, subresource="status"
        )
        self.trigger = trigger
        self.generation = generation
        self.interval = interval
        self.reachable: bool | None = None
        self.reachable_message = ""
        self.reachable_since = utcnow()
        self.last_event: float | None = None
        """When events were last delivered (``time.time()``; formatted only when the status is written: a
        timestamp string per batch was 1.5 % of a queue bridge's samples at batch 10)."""
        self.events = 0
        self.lag: int | None = None
        self.iterator_age: float | None = None
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()

    def source_reachable(self, reachable: bool, message: str = "") -> None:
        """Reports whether the source answered; the message names the error when it did not."""
        metrics.BRIDGE_SOURCE_UP.set(1 if reachable else 0)
        if reachable != self.reachable or (not reachable and message != self.reachable_message):
            if reachable != self.reachable:
                self.reachable_since = utcnow()
                self._urgent.set()
                if reachable:
                    log.info("Reached the source of Trigger %s", self.trigger)
                else:
                    log.warning("Could not reach the source of Trigger %s: %s", self.trigger, message)
            self.reachable = reachable
            self.reachable_message = message
            self._dirty.set()

    def delivered(self, count: int = 1) -> None:
        """``count`` events or records were handed to the function (accepted or processed)."""
        self.events += count
        self.last_event = time.time()
        metrics.BRIDGE_EVENTS.inc(count)
        self._dirty.set()

    def set_lag(self, lag: int | None, *, iterator_age_seconds: float | None = None) -> None:
        if lag is not None:
            metrics.BRIDGE_LAG.set(lag)
        if iterator_age_seconds is not None:
            metrics.BRIDGE_ITERATOR_AGE.set(iterator_age_seconds)
        if lag != self.lag or iterator_age_seconds != self.iterator_age:
            self.lag = lag
            self.iterator_age = iterator_age_seconds
            self._dirty.set()

    def body(self) -> JSON:
        status: JSON = {"eventsDelivered": self.events}
        if self.last_event is not None:
            status["lastEventTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_event))
        if self.lag is not None:
            status["lag"] = self.lag
        if self.iterator_age is not None:
            status["iteratorAgeSeconds"] = round(self.iterator_age, 3)
        if self.reachable is not None:
            condition: JSON = {
                "type": SOURCE_REACHABLE,
                "status": "True" if self.reachable else "False",
                "reason": "Reachable" if self.reachable else "Unreachable",
                "message": self.reachable_message[:32000],
                "lastTransitionTime": self.reachable_since,
            }
            if self.generation is not None:
                condition["observedGeneration"] = self.generation
            status["conditions"] = [condition]
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Trigger", "status": status}

    async def flush(self) -> None:
        self._dirty.clear()
        self._urgent.clear()
        body = self.body()
        body["metadata"] = {"name": self.trigger}
        try:
            await self.kube.apply(self.path, body, field_manager=BRIDGE_FIELD_MANAGER)
        except ApiError as e:
            if e.status != 404:  # the Trigger is being deleted: nothing to report to
                log.warning("Could not write the status of Trigger %s: %s", self.trigger, e)
                self._dirty.set()

    async def run(self) -> None:
        """Writes the status when it changed, coalescing changes within ``interval``."""
        while True:
            await self._dirty.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), timeout=self.interval)
            await self.flush()


class Secrets:
    """Reads the Secrets a Trigger names (its bridge's Role allows exactly those)."""

    def __init__(self, kube: KubeClient, *, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    async def get(self, name: str) -> dict[str, str]:
        """The Secret's data, decoded; raises ``KeyError`` naming the Secret when it does not exist."""
        found = await self.kube.get_or_none(
            resource_path("v1", "secrets", namespace=self.namespace, name=name)
        )
        if found is None:
            raise KeyError(f"Secret {self.namespace}/{name} does not exist")
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


@dataclass
class BridgeContext:
    """Everything a source needs; built once per bridge process."""

    trigger: Trigger
    namespace: str
    name: str
    kube: KubeClient
    invoker: Invoker
    checkpoint: Checkpoint
    status: StatusReporter
    secrets: Secrets
    http: aiohttp.ClientSession
    region: str = "us-east-1"
    bridge_id: str = ""
    trigger_meta: JSON = field(default_factory=dict)
    """The Trigger's ``metadata`` as read at start (uid, creationTimestamp, generation)."""

    def __post_init__(self) -> None:
        if not self.bridge_id:
            self.bridge_id = f"{self.namespace}/{self.name}/{uuid.uuid4().hex[:8]}"


class Source(Protocol):
    """One kind of event source. Constructed with the context; ``run`` consumes until cancelled."""

    def routes(self) -> list[web.RouteDef]:
        """Extra routes on the bridge's HTTP server (e.g. a notification webhook); usually none."""
        ...

    async def run(self) -> None: ...
