"""The gateway's HTTP surface: the Lambda Invoke API, /healthz, /readyz and /metrics.

One invocation: identity → decision (gateway/auth: who calls, and may they invoke this Function) → name →
Function (cache) → checks (type, size, JSON, Ready) → throttler (exact in-flight) → an instance with a free slot
(or the activator, from zero) → the agent → the response, unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import generate_latest

from kubelambda import metrics
from kubelambda.asyncworker.decide import Outcome
from kubelambda.asyncworker.queue import EventQueue, QueuedEvent
from kubelambda.asyncworker.record import Response
from kubelambda.gateway import httpapi
from kubelambda.gateway.activator import Activator
from kubelambda.gateway.auth import (
    INVOKE,
    PUBLIC,
    Authoriser,
    AuthRefused,
    Identity,
    destination_refusal,
)
from kubelambda.gateway.balancer import Balancer
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.errors import error_response
from kubelambda.gateway.functionname import BadFunctionName, FunctionRef, parse_function_name
from kubelambda.gateway.proxy import Invocation, Result, TryElsewhere, forward
from kubelambda.gateway.registry import FunctionEntry, Registry, RegistryLookups
from kubelambda.gateway.routes import Match, RouteTable
from kubelambda.gateway.throttler import Throttled, Throttler
from kubelambda.kube import ApiError, KubeClient

if TYPE_CHECKING:
    from kubelambda.gateway.scaler import Autoscaler
    from kubelambda.gateway.warmpool import WarmPool

logger = logging.getLogger(__name__)

INVOKE_PATH = "/2015-03-31/functions/{name:.+}/invocations"
COLD_START_HEADER = "X-Kubelambda-Cold-Start"
WARM_POOL_HEADER = "X-Kubelambda-Warm-Pool"  # the pool pod that answered (docs/warm-pools.md)
ASYNC_REQUEST_ID_HEADER = "X-Kubelambda-Async-Request-Id"
IDEMPOTENCY_KEY_HEADER = "X-Kubelambda-Idempotency-Key"
"""An Event invocation's caller-chosen key (a bridge's tick or object version): the request id is derived from
it, so a caller that re-sends after a crash gets the same request id, and JetStream's duplicate window
(``Nats-Msg-Id``) stores the event once."""


@dataclass
class Gateway(RegistryLookups):
    settings: GatewaySettings
    kube: KubeClient
    registry: Registry = field(default_factory=Registry)
    routes: RouteTable = field(default_factory=RouteTable)  # HTTP Triggers (``/api/<namespace>/<path>``)
    throttler: Throttler = field(init=False)
    balancer: Balancer = field(default_factory=Balancer)
    activator: Activator = field(init=False)
    auth: Authoriser = field(init=False)
    session: aiohttp.ClientSession | None = None
    autoscaler: Autoscaler | None = None
    queue: EventQueue | None = None  # Event invocations, when NATS is configured
    warm_pool: WarmPool | None = None  # when KUBELAMBDA_GATEWAY_WARM_POOL_SIZES names a pool
    _runner: web.AppRunner | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _function_metrics: dict[tuple[str, str], _FunctionMetrics] = field(default_factory=dict)
    _cold_waiting: dict[tuple[str, str], int] = field(default_factory=dict)  # per function, in the activator

    def __post_init__(self) -> None:
        self.throttler = Throttler(pool_limit=self.settings.pool_limit)
        self.activator = Activator(self.kube)
        self.auth = Authoriser(self.settings, self.kube)

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False,
            )
        return self.session

    # ---- the Invoke API -------------------------------------------------------------------------------

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        s = self.settings
        try:
            ref = parse_function_name(request.match_info["name"], default_namespace=s.default_namespace)
        except BadFunctionName as e:
            return error_response("InvalidParameterValueException", str(e))
        if request.query.get("Qualifier", "$LATEST") != "$LATEST" or ref.qualifier != "$LATEST":
            return error_response(
                "ResourceNotFoundException",
                f"Function not found: {ref.arn(s.region)}:{ref.qualifier}: kubelambda serves only $LATEST",
            )
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in ("RequestResponse", "Event", "DryRun"):
            return error_response(
                "InvalidParameterValueException",
                f"X-Amz-Invocation-Type {kind!r} must be RequestResponse, Event or DryRun",
            )
        body = await _read_body(request, s.max_request_bytes)
        if body is None:
            return error_response(
                "RequestTooLargeException",
                f"Request must be smaller than {s.max_request_bytes} bytes for the InvokeFunction operation",
            )
        # Identity and decision before anything else is looked at: a refused caller learns nothing more.
        try:
            caller = await self.auth.authorise(request, INVOKE, ref, body=body)
        except AuthRefused as e:
            return error_response(e.code, e.message)
        if body:
            try:
                json.loads(body)
            except ValueError:
                return error_response(
                    "InvalidRequestContentException", "Could not parse request body into json: not valid JSON"
                )
        fn = self.registry.function(ref)
        if fn is None:
            return error_response("ResourceNotFoundException", f"Function not found: {ref.arn(s.region)}")
        if not fn.ready:
            return error_response(
                "ResourceNotReadyException",
                f"Function {fn.namespace}/{fn.name} is not Ready ({fn.not_ready}); see kubectl describe fn {fn.name}",
            )
        if kind == "DryRun":
            return web.Response(status=204, headers={"X-Amz-Executed-Version": "$LATEST"})
        if kind == "Event":
            return await self._enqueue(fn, body or b"{}", key=self._idempotency_key(request, caller))
        return await self._run(request, caller, fn, ref, body or b"{}", started)

    def _idempotency_key(self, request: web.Request, caller: Identity) -> str | None:
        """The platform's key as sent; anyone else's scoped to the caller, so it never collides with a bridge's
        or another tenant's (the request id, and JetStream's duplicate window, derive from it)."""
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if not key or self.auth.is_platform(caller):
            return key
        return f"caller:{caller.username}/{key}"

    async def _enqueue(self, fn: FunctionEntry, body: bytes, *, key: str | None = None) -> web.Response:
        """Stores an Event invocation in JetStream and answers 202 once the store is acknowledged."""
        s = self.settings
        if self.queue is None:
            return error_response(
                "NotImplementedException",
                "Event (asynchronous) invocations need NATS JetStream: this gateway has no "
                "KUBELAMBDA_GATEWAY_NATS_URL",
            )
        if len(body) > s.async_max_event_bytes:
            return error_response(
                "RequestTooLargeException",
                f"Request must be smaller than {s.async_max_event_bytes} bytes for the Event invocation type",
            )
        if key:
            request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubelambda:{fn.namespace}/{fn.name}/{key}"))
        else:
            request_id = str(uuid.uuid4())
        event = QueuedEvent(
            namespace=fn.namespace,
            function=fn.name,
            request_id=request_id,
            payload=body,
            enqueued_at=time.time(),
        )
        try:
            await self.queue.publish(event)
        except Exception as e:  # NATS down or JetStream refusing: nothing was promised yet
            logger.warning("Could not queue an event for %s/%s: %s", fn.namespace, fn.name, e)
            return error_response("ServiceException", f"Could not queue the event: {type(e).__name__}: {e}")
        metrics.ASYNC_ACCEPTED.labels(fn.namespace, fn.name).inc()
        return web.Response(status=202, headers={"X-Amzn-RequestId": request_id})

    # ---- the async worker's way in (kubelambda.asyncworker.Invoker) ----------------------------------

    def arn_region(self) -> str:
        return self.settings.region

    async def destination_refusal(self, namespace: str, source: str, target: str) -> str | None:
        fn = self.registry.functions.get((namespace, source))
        return await destination_refusal(
            self.auth.access if self.auth.enabled else None,
            namespace,
            source,
            fn.spec.service_account_name if fn is not None else None,
            target,
            arn=self.function_arn(namespace, target),
        )

    async def invoke_for_worker(
        self, namespace: str, name: str, payload: bytes, *, request_id: str
    ) -> tuple[Outcome, Response | None]:
        """One attempt of a queued event through the sync path (throttler, activator, balancer)."""
        fn = self.registry.functions.get((namespace, name))
        if fn is None or not fn.ready:
            return Outcome.SYSTEM_ERROR, None
        invocation = Invocation(
            request_id=request_id,
            arn=self.function_arn(namespace, name),
            timeout_seconds=float(fn.spec.timeout_seconds),
            body=payload,
            log_tail=False,
        )
        try:
            result, _ = await self._invoke(fn, invocation, time.monotonic())
        except Throttled:
            return Outcome.THROTTLED, None
        except Unavailable as e:
            throttled = e.code == "TooManyRequestsException"
            return (Outcome.THROTTLED if throttled else Outcome.SYSTEM_ERROR), None
        error = result.headers.get("X-Amz-Function-Error")
        if error is not None:
            return Outcome.FUNCTION_ERROR, Response(result.status, error, result.body)
        if result.status != 200:
            return Outcome.SYSTEM_ERROR, None
        return Outcome.SUCCESS, Response(result.status, None, result.body)

    def _metrics(self, fn: FunctionEntry) -> _FunctionMetrics:
        found = self._function_metrics.get(fn.key)
        if found is None:
            found = self._function_metrics[fn.key] = _FunctionMetrics(fn.namespace, fn.name)
        return found

    async def _run(
        self,
        request: web.Request,
        caller: Identity,
        fn: FunctionEntry,
        ref: FunctionRef,
        body: bytes,
        started: float,
    ) -> web.StreamResponse:
        invocation = Invocation.new(
            arn=ref.arn(self.settings.region),
            timeout_seconds=float(fn.spec.timeout_seconds),
            body=body,
            log_tail=request.headers.get("X-Amz-Log-Type") == "Tail",
            client_context=request.headers.get("X-Amz-Client-Context"),
            trace_id=request.headers.get("X-Amzn-Trace-Id"),
        )
        # A standalone async worker (kubelambda.asyncworker.remote) keeps an event's request id on every attempt.
        async_request_id = request.headers.get(ASYNC_REQUEST_ID_HEADER)
        if async_request_id and self.auth.is_platform(caller):
            invocation = dataclasses.replace(invocation, request_id=async_request_id[:64])
        try:
            result, cold = await self._invoke(fn, invocation, started)
        except Throttled as e:
            return error_response("TooManyRequestsException", e.message, reason=e.reason)
        except Unavailable as e:
            return error_response(e.code, e.message, reason=e.reason)
        headers = {**result.headers, COLD_START_HEADER: "true" if cold else "false"}
        headers.setdefault("X-Amz-Executed-Version", "$LATEST")
        return web.Response(status=result.status, body=result.body, headers=headers)

    async def _invoke(self, fn: FunctionEntry, invocation: Invocation, started: float) -> tuple[Result, bool]:
        """The sync path shared by the Invoke API and the async worker: throttler (exact in-flight), then
        :meth:`_route`. Raises :class:`Throttled` or :class:`Unavailable`; counts the outcome either way."""
        m = self._metrics(fn)
        try:
            with self.throttler.admit(f"{fn.namespace}/{fn.name}", reserved=fn.spec.concurrency.reserved):
                m.concurrent.inc()
                try:
                    result, cold = await self._route(fn, invocation)
                finally:
                    m.concurrent.dec()
                    # An invocation shorter than the sampling interval is never seen in flight by the
                    # sampler: without this a function whose requests are all short looked idle forever
                    # ("idle for inf s") and was scaled to zero right under them.
                    if self.autoscaler is not None:
                        self.autoscaler.note_active(fn.key, time.monotonic())
        except Throttled as e:
            metrics.GATEWAY_THROTTLES.labels(fn.namespace, fn.name, e.reason).inc()
            m.outcomes["throttled"].inc()
            raise
        except Unavailable:
            m.outcomes["error"].inc()
            raise
        m.outcomes[result.outcome].inc()
        m.duration.observe(time.monotonic() - started)
        return result, cold

    async def _route(self, fn: FunctionEntry, invocation: Invocation) -> tuple[Result, bool]:
        s = self.settings
        spec = fn.spec
        labels = (fn.namespace, fn.name)
        cold = False
        tried: set[str] = set()
        give_up = time.monotonic() + spec.timeout_seconds + s.cold_start_allowance_seconds
        while True:
            endpoints_of = partial(self.registry.ready_endpoints, fn.key)
            per_instance = spec.concurrency.per_instance
            if not self.registry.ready_endpoints(fn.key):
                warm = await self._warm(fn)
                if warm is None:
                    cold = True
                    await self._wait_cold(fn, until=give_up)
                else:
                    # Served by specialised pool pods (one worker each) until the function's own are ready.
                    cold = cold or warm
                    endpoints_of = partial(self._own_or_pool_endpoints, fn)
                    per_instance = 1
            wait = min(s.slot_wait_seconds, max(give_up - time.monotonic(), 0))
            endpoint = await self.balancer.acquire(
                endpoints_of,
                per_instance,
                timeout=wait,
                avoid=frozenset(tried),
            )
            if endpoint is None:
                if tried and not endpoints_of():
                    continue  # the instances we tried went away: back to the cold path
                raise Unavailable(
                    "TooManyRequestsException",
                    f"Rate Exceeded. Every instance of {fn.namespace}/{fn.name} was busy for {wait:.1f} s",
                    reason="ConcurrentInvocationLimitExceeded",
                )
            logger.debug("Forwarding %s to %s", invocation.request_id, endpoint)
            try:
                # The deadline starts when an instance takes the invocation, as Lambda's timeout does.
                deadline = time.time() + spec.timeout_seconds
                result = await forward(self.http(), endpoint, invocation, deadline=deadline)
                pod = self.warm_pool.pod_at(endpoint) if self.warm_pool is not None else None
                if pod is not None:
                    result.headers[WARM_POOL_HEADER] = pod
                return result, cold
            except TryElsewhere as e:
                logger.info("Retrying %s/%s elsewhere: %s", *labels, e)
                tried.add(endpoint)
                if self.warm_pool is not None:
                    self.warm_pool.discard(endpoint)
            except aiohttp.ClientError as e:
                raise Unavailable(
                    "ServiceException", f"Instance {endpoint} failed mid-invocation: {e}"
                ) from e
            finally:
                self.balancer.release(endpoint)
                if self.warm_pool is not None:
                    self.warm_pool.flush(endpoint)

    def _own_or_pool_endpoints(self, fn: FunctionEntry) -> list[str]:
        own = self.registry.ready_endpoints(fn.key)
        if own or self.warm_pool is None:
            return own
        return self.warm_pool.endpoints(fn)

    async def _warm(self, fn: FunctionEntry) -> bool | None:
        """The warm-pool path of a function without a ready instance of its own (docs/warm-pools.md):
        None = not served from the pool (the normal cold path follows); False = a pod specialised earlier
        has a free slot; True = this request specialised a pool pod (a cold start, without a new pod)."""
        pool = self.warm_pool
        if pool is None:
            return None
        existing = pool.endpoints(fn)
        if (existing or pool.eligible(fn)) and self.autoscaler is not None:
            self.autoscaler.note_active(fn.key, time.monotonic())
        if existing and any(self.balancer.load.get(e, 0) == 0 for e in existing):
            return False
        if not pool.eligible(fn):
            return None
        started = time.monotonic()
        endpoint = await pool.claim(fn, self.http())
        if endpoint is None:
            return False if existing else None
        metrics.GATEWAY_COLD_STARTS.labels(fn.namespace, fn.name).inc()
        metrics.GATEWAY_COLD_START_SECONDS.labels(fn.namespace, fn.name).observe(time.monotonic() - started)
        # The regular scale-up, off the request's path: the function's own instance takes over when ready.
        pool.defer(endpoint, lambda: self.activator.activate(fn))
        return True

    async def _wait_cold(self, fn: FunctionEntry, *, until: float) -> None:
        labels = (fn.namespace, fn.name)
        waiting = self._cold_waiting.get(fn.key, 0)
        if waiting >= self.settings.activator_queue:
            raise Unavailable(
                "TooManyRequestsException",
                f"Rate Exceeded. {waiting} requests already wait for a first instance of {fn.namespace}/{fn.name}",
                reason="ConcurrentInvocationLimitExceeded",
            )
        self._cold_waiting[fn.key] = waiting + 1
        metrics.GATEWAY_COLD_STARTS.labels(*labels).inc()
        gauge = metrics.GATEWAY_ACTIVATOR_WAITING.labels(*labels)
        gauge.inc()
        started = time.monotonic()
        try:
            try:
                await self.activator.activate(fn)
            except ApiError as e:
                raise Unavailable(
                    "ServiceException", f"Could not scale {fn.namespace}/{fn.name} up: {e}"
                ) from e
            endpoints = await self.registry.wait_for_endpoints(
                fn.key, timeout=max(until - time.monotonic(), 0)
            )
            if not endpoints:
                raise Unavailable(
                    "ServiceException",
                    f"No instance of {fn.namespace}/{fn.name} became ready within "
                    f"{fn.spec.timeout_seconds} s + {self.settings.cold_start_allowance_seconds:.0f} s",
                )
        finally:
            self._cold_waiting[fn.key] -= 1
            gauge.dec()
            metrics.GATEWAY_COLD_START_SECONDS.labels(*labels).observe(time.monotonic() - started)

    # ---- HTTP routes (API Gateway HTTP API, payload 2.0) ----------------------------------------------

    async def http_route(self, request: web.Request) -> web.StreamResponse:
        """``/http/<namespace>/<name>/<path>``: every Function, any method, routeKey ``$default``."""
        if not self.settings.http_routes:
            return _http(httpapi.message(404, "Not Found"))
        ref = FunctionRef(request.match_info["namespace"], request.match_info["name"])
        path = "/" + request.match_info.get("tail", "")
        return await self._serve_http(request, ref, path=path, route_key="$default", path_parameters=None)

    async def trigger_route(self, request: web.Request) -> web.StreamResponse:
        """``/api/<namespace>/<path>``: the namespace's HTTP Triggers, matched as API Gateway matches routes."""
        if not self.settings.http_routes:
            return _http(httpapi.message(404, "Not Found"))
        namespace = request.match_info["namespace"]
        path = "/" + request.match_info.get("tail", "")
        origin = request.headers.get("Origin")
        asked = request.headers.get("Access-Control-Request-Method")
        if request.method == "OPTIONS" and origin and asked:  # a CORS preflight: the gateway answers it
            route = self.routes.match(namespace, asked, path)
            if isinstance(route, Match) and route.route.cors is not None:
                return web.Response(
                    status=200, headers=CIMultiDict(route.route.cors.preflight(origin, asked))
                )
        found = self.routes.match(namespace, request.method, path)
        if not isinstance(found, Match):
            return _http(httpapi.message(found, "Not Found" if found == 404 else "Method Not Allowed"))
        ref = FunctionRef(namespace, found.route.function)
        answer = await self._serve_http(
            request,
            ref,
            path=path,
            route_key=found.route.route_key(request.method.upper()),
            path_parameters=found.path_parameters,
            public=found.route.auth_type == "NONE",
        )
        if found.route.cors is not None:
            for name, value in found.route.cors.response_headers(origin):
                answer.headers.add(name, value)
        return answer

    async def _serve_http(
        self,
        request: web.Request,
        ref: FunctionRef,
        *,
        path: str,
        route_key: str,
        path_parameters: dict[str, str] | None,
        public: bool = False,
    ) -> web.StreamResponse:
        """``public``: an HTTP Trigger with ``authType: NONE`` (anyone may call; never a platform identity)."""
        started = time.monotonic()
        s = self.settings
        body = await _read_body(request, s.max_request_bytes)
        if body is None:
            return _http(httpapi.message(413, "Request Entity Too Large"))
        try:
            caller = PUBLIC if public else await self.auth.authorise(request, INVOKE, ref, body=body)
        except AuthRefused as e:  # as a function URL with AWS_IAM answers: 403, the reason in the header
            return _http(httpapi.forbidden(e.code))
        fn = self.registry.function(ref)
        if fn is None:
            return _http(httpapi.message(404, "Not Found"))
        if not fn.ready:
            return _http(httpapi.message(503, "Service Unavailable"))
        version = request.version
        event = httpapi.build_event(
            httpapi.HttpRequest(
                method=request.method,
                path=path,
                query_string=request.query_string,
                query=request.query.items(),
                headers=request.headers.items(),
                body=body,
                source_ip=request.remote or "",
                protocol=f"HTTP/{version.major}.{version.minor}",
                host=request.host,
            ),
            route_key=route_key,
            account=fn.namespace,
            path_parameters=path_parameters,
        )
        payload = json.dumps(event).encode()
        if len(payload) > s.max_request_bytes:
            return _http(httpapi.message(413, "Request Entity Too Large"))
        answer = await self._run(request, caller, fn, ref, payload, started)
        assert isinstance(answer, web.Response)
        if answer.status == 200 and "X-Amz-Function-Error" not in answer.headers:
            return _http(httpapi.map_result(answer.body if isinstance(answer.body, bytes) else b""))
        return _http(httpapi.error_for(answer.status, answer.headers))

    # ---- the rest -------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.registry.synced.is_set():
            return web.Response(status=503, text="waiting for the first list of Functions and EndpointSlices")
        if self.auth.enabled and not self.auth.keys.synced.is_set():
            return web.Response(status=503, text="waiting for the first list of access keys")
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), content_type="text/plain")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes + 1024)
        app.router.add_post(INVOKE_PATH, self.invoke)
        app.router.add_route("*", "/http/{namespace}/{name}", self.http_route)
        app.router.add_route("*", "/http/{namespace}/{name}/{tail:.*}", self.http_route)
        app.router.add_route("*", "/api/{namespace}", self.trigger_route)
        app.router.add_route("*", "/api/{namespace}/{tail:.*}", self.trigger_route)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        """Listens, and starts the watches and the autoscaler; :meth:`stop` undoes it."""
        from kubelambda.gateway.scaler import Autoscaler

        s = self.settings
        self.auth.announce()
        self.autoscaler = Autoscaler(
            self, interval=s.autoscale_interval_seconds, sample=s.sample_interval_seconds
        )
        if s.nats_url is not None:
            # Before listening: an Event that arrived while the queue connects was answered 501 "this gateway has
            # no KUBELAMBDA_GATEWAY_NATS_URL" (seen right after a NATS restart), which SDKs do not retry.
            self.queue = await EventQueue.connect(s.nats_url, stream=s.async_stream)
            logger.info("Event invocations go to JetStream stream %s at %s", s.async_stream, s.nats_url)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port)
        await site.start()
        self._tasks = [
            asyncio.create_task(self.registry.run(self.kube), name="gateway watches"),
            asyncio.create_task(self.autoscaler.run(), name="autoscaler"),
        ]
        if self.auth.enabled:
            self._tasks.append(asyncio.create_task(self.auth.keys.run(self.kube), name="access keys"))
        if s.http_routes:
            self._tasks.append(asyncio.create_task(self.routes.run(self.kube), name="trigger routes"))
        if any(n > 0 for n in s.warm_pool_sizes.values()):
            from kubelambda.gateway.warmpool import WarmPool

            self.warm_pool = WarmPool(s, self.kube, self.registry, self.balancer)
            self._tasks.append(asyncio.create_task(self.warm_pool.run(), name="warm pools"))
        if self.queue is not None and s.async_worker:
            from kubelambda.asyncworker.worker import Worker, WorkerSettings

            worker = Worker(
                self.queue,
                self,
                self.http(),
                settings=WorkerSettings(
                    concurrency=s.async_worker_concurrency,
                    retry_delays=s.async_retry_delays_seconds,
                    backoff_min=s.async_backoff_min_seconds,
                    backoff_max=s.async_backoff_max_seconds,
                    ack_wait=s.async_ack_wait_seconds,
                ),
            )
            self._tasks.append(asyncio.create_task(worker.run(), name="async worker"))
        logger.info("The gateway listens on %s:%d", s.host, s.port)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.queue is not None:
            await self.queue.close()
            self.queue = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None


def _http(response: httpapi.HttpResponse) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(response.headers)
    return web.Response(status=response.status, body=response.body, headers=headers)


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit`` (never a truncated payload)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


class _FunctionMetrics:
    """One function's metric children, looked up once (``labels()`` costs a lock and a dict per call)."""

    def __init__(self, namespace: str, name: str) -> None:
        self.concurrent = metrics.GATEWAY_CONCURRENT.labels(namespace, name)
        self.duration = metrics.GATEWAY_INVOCATION_SECONDS.labels(namespace, name)
        self.outcomes = {
            o: metrics.GATEWAY_INVOCATIONS.labels(namespace, name, o)
            for o in ("success", "function_error", "timeout", "throttled", "error")
        }


class Unavailable(Exception):
    def __init__(self, code: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


async def serve(settings: GatewaySettings, kube: KubeClient) -> None:
    """Runs the gateway (watches, autoscaler, HTTP) until cancelled."""
    gateway = Gateway(settings, kube)
    await gateway.start()
    try:
        await gateway.wait()
    finally:
        await gateway.stop()
