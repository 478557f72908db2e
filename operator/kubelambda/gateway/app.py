"""The gateway's HTTP surface: the Lambda Invoke API, /healthz, /readyz and /metrics.

One invocation at an entry point (the Invoke API, an HTTP route): identity → decision (gateway/auth: who calls,
and may they invoke this Function) → name → Function (cache) → checks (type, size, JSON, Ready); then the invoke
path every entry point shares (gateway/invoke_path.py): throttler (exact in-flight) → an instance with a free slot
(or the activator, from zero) → the agent → the response, unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import nats.errors
import simdjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import generate_latest

from kubelambda import metrics, natsauth, tracing
from kubelambda.asyncworker.decide import Outcome, outcome_of_answer
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
)
from kubelambda.gateway.auth.reviews import AccessReviewer
from kubelambda.gateway.codestore import CodeCollector, CodeStore
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.errors import error_response
from kubelambda.gateway.functionname import (
    BadFunctionName,
    FunctionRef,
    parse_function_name,
    qualified,
    qualified_arn,
)
from kubelambda.gateway.guarded import GuardedRoutes, Handler
from kubelambda.gateway.invoke_path import InvokePath, Unavailable
from kubelambda.gateway.lambdaapi import LambdaApi
from kubelambda.gateway.limits import SharedLimits, peer_token
from kubelambda.gateway.logsapi import LogsApi
from kubelambda.gateway.peers import Peers
from kubelambda.gateway.proxy import Invocation, request_id
from kubelambda.gateway.registry import FunctionEntry, NotFound, Registry, RegistryLookups, Resolved
from kubelambda.gateway.routes import Match, RouteTable
from kubelambda.gateway.throttler import Throttled
from kubelambda.kube import KubeClient
from kubelambda.natscallout import Issuer, LogAuthService, kube_namespaces
from kubelambda.outcomes import ASYNC_REQUEST_ID_HEADER, FUNCTION_ERROR_HEADER, OUTCOME_HEADER

logger = logging.getLogger(__name__)

INVOKE_PATH = "/2015-03-31/functions/{name:.+}/invocations"
COLD_START_HEADER = "X-Kubelambda-Cold-Start"
IDEMPOTENCY_KEY_HEADER = "X-Kubelambda-Idempotency-Key"
"""An Event invocation's caller-chosen key (a bridge's tick or object version): the request id is derived from
it, so a caller that re-sends after a crash gets the same request id, and JetStream's duplicate window
(``Nats-Msg-Id``) stores the event once."""


# Request targets of the Invoke API kept parsed (Gateway._target); all forgotten when full.
TARGETS_KEPT = 4096


class Target:
    """An Invoke API request target, parsed: the name with its qualifier, the ARN as invoked, and what ``$LATEST``
    resolved to (used while the registry still holds that entry for the name)."""

    __slots__ = ("arn", "key", "ref", "resolved")

    def __init__(self, ref: FunctionRef, arn: str) -> None:
        self.ref = ref
        self.arn = arn
        self.key = (ref.namespace, ref.name)
        self.resolved: Resolved | None = None


_JSON_CHECK = simdjson.Parser()  # reused: it keeps its buffer between bodies (the gateway's one thread)


def json_problem(body: bytes) -> str | None:
    """None when ``body`` is JSON (RFC 8259, UTF-8), else what is wrong with it (the Invoke API refuses it).

    simdjson validates a body without building Python objects: a 565 KB event of 1,000 stream records in about
    0.7 ms, where pydantic-core's parser took 8.7 ms and ``json.loads`` 15 ms (bench-postgres found the check the
    largest piece of the gateway's CPU for such batches). A body it refuses is judged again by ``json.loads`` on
    the body decoded as strict UTF-8, with ``NaN``/``Infinity`` refused: integers beyond 64 bits and escaped lone
    surrogates are JSON (simdjson refuses them), UTF-16 and the non-standard constants are not; nor is a byte order
    mark (simdjson skips one).
    The agent takes the gateway's calls without checking them again (runtime-images/agent), so this is the one
    check a body meets. Nesting between ~1,000 levels (Python's recursion limit) and simdjson's 1,024 is
    taken, as Lambda takes it."""
    if body[:3] == b"\xef\xbb\xbf":  # a slice, not a method call: every invocation checks it
        return "not valid JSON (a byte order mark before it)"
    try:
        _JSON_CHECK.parse(body)  # the document it returns is dropped at once (the parser is free again)
        return None
    except (ValueError, RuntimeError):
        pass
    try:
        json.loads(body.decode("utf-8"), parse_constant=_not_json_constant)
    except UnicodeDecodeError:
        return "not valid JSON (not UTF-8)"
    except ValueError:
        return "not valid JSON"
    except RecursionError:  # deeper than the parser goes: the caller's error, not a 500
        return "arrays and objects are nested too deeply"
    return None


def _not_json_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@dataclass
class Gateway(RegistryLookups):
    settings: GatewaySettings
    kube: KubeClient
    registry: Registry = field(default_factory=Registry)
    routes: RouteTable = field(default_factory=RouteTable)  # HTTP Triggers (``/api/<namespace>/<path>``)
    path: InvokePath = field(init=False)  # throttler → instance → agent, for every entry point
    auth: Authoriser = field(init=False)
    logs_api: LogsApi = field(init=False)  # GET /kubelambda/logs/... (gateway/logsapi.py)
    session: aiohttp.ClientSession | None = None
    queue: EventQueue | None = None  # Event invocations, when NATS is configured
    log_auth: LogAuthService | None = None  # NATS auth callout for log shippers (natscallout)
    _runner: web.AppRunner | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    buffered: int = 0  # request body bytes all requests hold now (max_buffered_request_bytes)
    _held: dict[int, int] = field(default_factory=dict)  # of those, by request id() while answered
    peers: Peers | None = None  # several replicas (settings.peer_url): membership and the leader's Lease
    draining: bool = False  # SIGTERM: /readyz answers 503, then in-flight requests finish (drain)
    code_collector: CodeCollector | None = (
        None  # deletes unreferenced zips of the code store (the leader's acts)
    )
    code_store: CodeStore | None = None  # the code store, when configured: one S3 client, closed by stop()
    _targets: dict[str, Target] = field(default_factory=dict)  # Invoke API request target → its parse

    def __post_init__(self) -> None:
        self.path = InvokePath(self.settings, self.registry, Activator(self.kube), self.http)
        self.auth = Authoriser(self.settings, self.kube)
        self.logs_api = LogsApi(self.settings, self.auth)
        if self.settings.code_store_endpoint is not None:
            self.code_store = CodeStore(self.settings)

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False,
                # A proxy to many functions keeps no cookies: none an agent sets reaches another (nor is looked
                # for on every call).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.session

    # ---- the Invoke API -------------------------------------------------------------------------------

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        s = self.settings
        target = self._targets.get(request.raw_path)
        if target is None:
            try:
                ref = parse_function_name(request.match_info["name"], default_namespace=s.default_namespace)
                ref = qualified(ref, request.query.get("Qualifier"))
            except BadFunctionName as e:
                return error_response("InvalidParameterValueException", str(e))
            target = self._target(request.raw_path, ref)
        ref = target.ref
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in ("RequestResponse", "Event", "DryRun"):
            return error_response(
                "InvalidParameterValueException",
                f"X-Amz-Invocation-Type {kind!r} must be RequestResponse, Event or DryRun",
            )
        try:
            body = await self._read_body(request)
        except BodyRefused as e:
            if e.kind == "busy":
                return error_response(
                    "TooManyRequestsException", "Rate Exceeded.", reason="ConcurrentInvocationLimitExceeded"
                )
            if e.kind == "timeout":
                return error_response(
                    "RequestTimeoutException",
                    f"The request body did not arrive within {s.body_timeout_seconds:g} s",
                )
            return error_response(
                "RequestTooLargeException",
                f"Request must be smaller than {s.max_request_bytes} bytes for the InvokeFunction operation",
            )
        # Identity and decision before anything else is looked at: a refused caller learns nothing more.
        try:
            caller = await self.auth.authorise(request, INVOKE, ref, body=body)
        except AuthRefused as e:
            return error_response(e.code, e.message)
        if body and (problem := json_problem(body)) is not None:
            return error_response(
                "InvalidRequestContentException", f"Could not parse request body into json: {problem}"
            )
        resolved = target.resolved
        if resolved is None or self.registry.functions.get(target.key) is not resolved.entry:
            resolved = self.resolve(ref)
            if resolved is None:
                return error_response("ResourceNotFoundException", f"Function not found: {target.arn}")
            if ref.qualifier == "$LATEST":  # the same entry until the registry replaces it (checked above)
                target.resolved = resolved
        fn = resolved.entry
        if not fn.ready:
            return error_response(
                "ResourceNotReadyException",
                f"Function {fn.namespace}/{fn.name} is not Ready ({fn.not_ready}); see kubectl describe fn {fn.name}",
            )
        if kind == "DryRun":
            return web.Response(status=204, headers={"X-Amz-Executed-Version": resolved.version})
        if kind == "Event":
            return await self._enqueue(
                fn,
                body or b"{}",
                key=self._idempotency_key(request, caller),
                traceparent=request.headers.get(tracing.TRACEPARENT),
                xray=request.headers.get("X-Amzn-Trace-Id"),
            )
        return await self._run(request, caller, resolved, target.arn, body or b"{}", started)

    def _target(self, raw_path: str, ref: FunctionRef) -> Target:
        """The Invoke API's parse of ``raw_path`` (the request target: name and Qualifier), kept by it: each
        invocation of a name parses it, and works out its ARN, once (:data:`TARGETS_KEPT` paths at most)."""
        if len(self._targets) >= TARGETS_KEPT:
            self._targets.clear()
        target = self._targets[raw_path] = Target(ref, qualified_arn(ref, self.settings.region))
        return target

    def resolve(self, ref: FunctionRef) -> Resolved | None:
        """The resolve step of every entry point: a name with its qualifier (``$LATEST``, a version number, an
        alias, whose weighted routing picks a version here, once per invocation) → the Function object that
        runs it and the version reported as ``X-Amz-Executed-Version``; None when nothing matches."""
        try:
            return self.registry.resolve(ref)
        except NotFound:
            return None

    def _idempotency_key(self, request: web.Request, caller: Identity) -> str | None:
        """The platform's key as sent; anyone else's scoped to the caller, so it never collides with a bridge's
        or another tenant's (the request id, and JetStream's duplicate window, derive from it)."""
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if not key or self.auth.is_platform(caller):
            return key
        return f"caller:{caller.username}/{key}"

    async def _enqueue(
        self,
        fn: FunctionEntry,
        body: bytes,
        *,
        key: str | None = None,
        traceparent: str | None = None,
        xray: str | None = None,
    ) -> web.Response:
        """Stores an Event invocation in JetStream and answers 202 once the store is acknowledged. The event
        carries the trace (its ``enqueue`` span's, else the caller's ``traceparent``) to every attempt, retry
        and destination (docs/tracing.md)."""
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
        with tracing.span(
            f"enqueue {fn.namespace}/{fn.name}",
            context=tracing.parent(traceparent, xray),
            kind=tracing.SpanKind.PRODUCER,
        ) as span:
            tracing.set_attributes(
                span,
                {
                    "faas.invocation_id": request_id,
                    "kubelambda.namespace": fn.namespace,
                    "kubelambda.function": fn.name,
                    "kubelambda.invocation_type": "Event",
                },
            )
            event = QueuedEvent(
                namespace=fn.namespace,
                function=fn.name,
                request_id=request_id,
                payload=body,
                enqueued_at=time.time(),
                traceparent=tracing.current_traceparent() or traceparent,
            )
            refused = await self._publish(fn, event)
        if refused is not None:
            return refused
        metrics.ASYNC_ACCEPTED.labels(fn.namespace, fn.name).inc()
        return web.Response(status=202, headers={"X-Amzn-RequestId": request_id})

    async def _publish(self, fn: FunctionEntry, event: QueuedEvent) -> web.Response | None:
        """None once JetStream stored the event; else a 503 that says whether it may still have been stored."""
        assert self.queue is not None
        try:
            await self.queue.publish(event)
        except Exception as e:  # NATS down or JetStream refusing: nothing was promised yet
            logger.warning(
                "Could not queue event %s for %s/%s: %s", event.request_id, fn.namespace, fn.name, e
            )
            if isinstance(e, nats.errors.TimeoutError):
                # Sent, and no answer: a stream without quorum may still store it when quorum returns (and then
                # run it). Only a refusal or no stream at all means nothing was accepted.
                message = (
                    "Could not confirm the event was queued (JetStream did not answer in time): it may still "
                    "be queued and run; try again"
                )
            else:
                message = "Could not queue the event, nothing was accepted; try again"
            # The broker's address and words stay in the log.
            return error_response(
                "ServiceUnavailableException",
                message,
                extra_headers={"Retry-After": "1", "X-Amzn-RequestId": event.request_id},
            )
        return None

    # ---- the async worker's way in (kubelambda.asyncworker.Invoker) ----------------------------------

    def arn_region(self) -> str:
        return self.settings.region

    def destination_access(self) -> AccessReviewer | None:
        return self.auth.access if self.auth.enabled else None

    async def invoke_for_worker(
        self, namespace: str, name: str, payload: bytes, *, request_id: str, traceparent: str | None = None
    ) -> tuple[Outcome, Response | None]:
        """One attempt of a queued event through the sync path (throttler, activator, balancer); its span is a
        child of ``traceparent`` (the worker's span for the attempt)."""
        fn = self.registry.functions.get((namespace, name))
        if fn is None or not fn.ready:
            return Outcome.SYSTEM_ERROR, None
        invocation = Invocation(
            request_id=request_id,
            arn=self.function_arn(namespace, name),
            timeout_seconds=float(fn.spec.timeout_seconds),
            body=payload,
            log_tail=False,
            traceparent=traceparent,
            invocation_type="Event",
        )
        try:
            result, _ = await self.path.run(fn, invocation, time.monotonic())
        except Throttled:
            return Outcome.THROTTLED, None
        except Unavailable as e:
            throttled = e.code == "TooManyRequestsException"
            return (Outcome.THROTTLED if throttled else Outcome.SYSTEM_ERROR), None
        outcome = outcome_of_answer(result.status, result.headers)
        if outcome in (Outcome.SUCCESS, Outcome.FUNCTION_ERROR):
            return outcome, Response(result.status, result.headers.get(FUNCTION_ERROR_HEADER), result.body)
        return outcome, None

    async def _run(
        self,
        request: web.Request,
        caller: Identity,
        resolved: Resolved,
        arn: str,
        body: bytes,
        started: float,
    ) -> web.StreamResponse:
        """``arn``: as invoked (:func:`qualified_arn`)."""
        fn = resolved.entry
        headers = request.headers
        invocation = Invocation(
            request_id(),
            arn,
            float(fn.spec.timeout_seconds),
            body,
            headers.get("X-Amz-Log-Type") == "Tail",
            client_context=headers.get("X-Amz-Client-Context"),
            trace_id=headers.get("X-Amzn-Trace-Id"),
            traceparent=headers.get(tracing.TRACEPARENT),
        )
        # A standalone async worker (kubelambda.gateway.remoteworker) keeps an event's request id on every attempt.
        async_request_id = headers.get(ASYNC_REQUEST_ID_HEADER)
        if async_request_id and self.auth.is_platform(caller):
            invocation = dataclasses.replace(invocation, request_id=async_request_id[:64])
        try:
            result, cold = await self.path.run(fn, invocation, started)
        except Throttled as e:
            return error_response("TooManyRequestsException", e.message, reason=e.reason)
        except Unavailable as e:
            return error_response(e.code, e.message, reason=e.reason)
        answer = {**result.headers, COLD_START_HEADER: "true" if cold else "false"}
        # The agent's outcome, passed through (the async worker decides from it); the gateway's own when it made
        # the answer without the agent's.
        if OUTCOME_HEADER not in answer:
            answer[OUTCOME_HEADER] = result.outcome
        # The gateway resolved the version: a warm-pool pod specialised for a version says $LATEST itself.
        answer["X-Amz-Executed-Version"] = resolved.version
        # As Lambda: SDKs read it as ResponseMetadata.RequestId, the id of the call's log records (docs/logs.md).
        answer["X-Amzn-RequestId"] = invocation.request_id
        return web.Response(status=result.status, body=result.body, headers=answer)

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
        function, _, qualifier = found.route.function.partition(":")  # a Trigger may name hello:live
        ref = FunctionRef(namespace, function, qualifier or "$LATEST")
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
        try:
            body = await self._read_body(request)
        except BodyRefused as e:
            return _http(httpapi.message(*BODY_REFUSALS[e.kind]))
        try:
            caller = PUBLIC if public else await self.auth.authorise(request, INVOKE, ref, body=body)
        except AuthRefused as e:  # as a function URL with AWS_IAM answers: 403, the reason in the header
            return _http(httpapi.forbidden(e.code))
        resolved = self.resolve(ref)
        if resolved is None:
            return _http(httpapi.message(404, "Not Found"))
        fn = resolved.entry
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
        answer = await self._run(request, caller, resolved, qualified_arn(ref, s.region), payload, started)
        assert isinstance(answer, web.Response)
        if answer.status == 200 and "X-Amz-Function-Error" not in answer.headers:
            mapped = httpapi.map_result(answer.body if isinstance(answer.body, bytes) else b"")
            if mapped.malformed is not None:
                logger.warning(
                    "%s/%s answered an HTTP route with a malformed response: %s",
                    fn.namespace,
                    fn.name,
                    mapped.malformed,
                )
            return _http(mapped)
        return _http(httpapi.error_for(answer.status, answer.headers))

    # ---- the rest -------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(
                status=503, text="draining: stopping once the requests in flight are answered"
            )
        if not self.registry.synced.is_set():
            return web.Response(status=503, text="waiting for the first list of Functions and EndpointSlices")
        if self.peers is not None and not self.peers.joined.is_set():
            return web.Response(status=503, text="joining the other replicas (member Lease, leader)")
        if self.auth.enabled and not self.auth.keys.synced.is_set():
            return web.Response(status=503, text="waiting for the first list of access keys")
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.GATEWAY_VIEW), content_type="text/plain")

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body (never a truncated payload), or :class:`BodyRefused`: over ``max_request_bytes``, not
        arrived within ``body_timeout_seconds``, or over what all requests together may hold. Bytes are counted
        as they arrive (a declared ``Content-Length`` holds nothing until sent, so idle connections cannot
        reserve the cap), and given back when the request is answered (:meth:`_guarded`)."""
        s = self.settings
        limit = s.max_request_bytes
        content = request.content
        if content.is_eof():  # all of it arrived with the headers (a small body): no wait, no timer
            body = content.read_nowait()
            if len(body) > limit:
                raise BodyRefused("too_large")
            self._hold(request, len(body))
            return body
        length = request.content_length
        if length is not None and length > limit:  # refused before any of it is read
            raise BodyRefused("too_large")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(s.body_timeout_seconds):
                while True:
                    chunk = await content.read(65536)
                    if not chunk:
                        return b"".join(chunks)
                    size += len(chunk)
                    if size > limit:
                        raise BodyRefused("too_large")
                    self._hold(request, len(chunk))
                    chunks.append(chunk)
        except TimeoutError:
            raise BodyRefused("timeout") from None

    def _hold(self, request: web.Request, more: int) -> None:
        if more <= 0:
            return
        if self.buffered + more > self.settings.max_buffered_request_bytes:
            raise BodyRefused("busy")
        self.buffered += more
        key = id(
            request
        )  # the request lives until _guarded gives its bytes back: no other request has its id
        self._held[key] = self._held.get(key, 0) + more

    def _guarded(self, handler: Handler) -> Handler:
        """``handler``, giving back the request's held body bytes once answered; an unexpected error is logged and
        answered without a traceback or internal detail (Lambda's ServiceException; API Gateway's 500 on HTTP
        routes). Every route's handler is wrapped so (:class:`GuardedRoutes`), rather than by an aiohttp
        middleware: with any middleware at all, aiohttp runs every request through two more coroutines."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception:
                logger.exception("Unexpected error answering %s %s", request.method, request.path)
                if request.path.startswith(("/http/", "/api/")):
                    return _http(httpapi.bad_gateway())
                return error_response("ServiceException", "An internal error occurred; try again")
            finally:
                self.buffered -= self._held.pop(id(request), 0)

        return guarded

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes + 1024)
        router = GuardedRoutes(app.router, self._guarded)
        router.add_post(INVOKE_PATH, self.invoke)
        LambdaApi(self.settings, self.kube, self.auth, self.registry, self.code_store).register(
            router
        )  # control plane
        self.logs_api.register(router)  # function logs from the log store (docs/logs.md)
        router.add_route("*", "/http/{namespace}/{name}", self.http_route)
        router.add_route("*", "/http/{namespace}/{name}/{tail:.*}", self.http_route)
        router.add_route("*", "/api/{namespace}", self.trigger_route)
        router.add_route("*", "/api/{namespace}/{tail:.*}", self.trigger_route)
        router.add_get("/healthz", self.healthz)
        router.add_get("/readyz", self.readyz)
        router.add_get("/metrics", self.metrics)
        if isinstance(self.path.limits, SharedLimits):
            self.path.limits.register(router)
        return app

    async def start(self) -> None:
        """Listens, and starts the watches and the autoscaler; :meth:`stop` undoes it."""
        from kubelambda.gateway.scaler import Autoscaler

        s = self.settings
        self.auth.announce()
        limits: SharedLimits | None = None
        if s.peer_url is not None and s.agent_key is not None:
            self.peers = Peers(
                self.kube,
                s.lease_namespace,
                s.peer_url,
                lease_seconds=s.lease_seconds,
                renew_seconds=s.lease_renew_seconds,
            )
            limits = self.path.limits = SharedLimits(
                self.path.throttler,
                self.peers,
                self.http,
                peer_token(s.agent_key.get_secret_value()),
                balancer=self.path.balancer,
                agent_key=s.agent_key.get_secret_value(),
                instances_known=self.registry.instances,
            )

        def decider() -> bool:
            return limits is None or (limits.peers.is_leader and limits.synced.is_set())

        autoscaler = self.path.autoscaler = Autoscaler(
            self.path.throttler,
            self.registry,
            self.kube,
            pool_serving=self._pool_serving,
            is_decider=decider,
            hand_over=limits is not None,
            interval=s.autoscale_interval_seconds,
            sample=s.sample_interval_seconds,
        )
        if s.nats_url is not None:
            # Before listening: an Event that arrived while the queue connects was answered 501 "this gateway has
            # no KUBELAMBDA_GATEWAY_NATS_URL" (seen right after a NATS restart), which SDKs do not retry.
            self.queue = await EventQueue.connect(
                s.nats_url, stream=s.async_stream, replicas=s.async_replicas
            )
            logger.info(
                "Event invocations go to JetStream stream %s at %s",
                s.async_stream,
                natsauth.redacted(s.nats_url),
            )
        if s.logauth_nats_url and s.nats_callout_seed is not None and s.agent_key is not None:
            # Before listening: agents connect as their namespace's log user as soon as they start.
            self.log_auth = LogAuthService(
                s.logauth_nats_url,
                issuer=Issuer(s.nats_callout_seed.get_secret_value()),
                agent_key=s.agent_key.get_secret_value(),
                namespaces=kube_namespaces(self.kube),
            )
            await self.log_auth.start()
            logger.info("Log shippers' NATS logins are decided here (auth callout)")
        # keepalive_timeout also closes a connection whose first request's headers are not complete by then.
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=s.idle_timeout_seconds,
            shutdown_timeout=s.drain_timeout_seconds,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port)
        await site.start()
        self._tasks = [
            asyncio.create_task(self.registry.run(self.kube), name="gateway watches"),
            asyncio.create_task(autoscaler.run(), name="autoscaler"),
        ]
        if self.peers is not None and limits is not None:
            self._tasks.append(asyncio.create_task(self.peers.run(), name="gateway leases"))
            self._tasks.append(asyncio.create_task(limits.run(), name="shared limits"))
        if self.auth.enabled:
            self._tasks.append(asyncio.create_task(self.auth.keys.run(self.kube), name="access keys"))
        if s.http_routes:
            self._tasks.append(asyncio.create_task(self.routes.run(self.kube), name="trigger routes"))
        if self.code_store is not None:
            peers = self.peers
            self.code_collector = CodeCollector(
                self.code_store, self.kube, is_collector=lambda: peers is None or peers.is_leader
            )
            self._tasks.append(asyncio.create_task(self.code_collector.run(), name="code store collector"))
        if any(n > 0 for n in s.warm_pool_sizes.values()):
            from kubelambda.gateway.warmpool import WarmPool

            pool = self.path.warm_pool = WarmPool(s, self.kube, self.registry, self.path.balancer)
            self._tasks.append(asyncio.create_task(pool.run(), name="warm pools"))
        if self.queue is not None and s.async_worker:
            from kubelambda.asyncworker.worker import Worker, WorkerSettings

            worker = Worker(
                self.queue,
                self,
                self.http(),
                settings=WorkerSettings.of(s, api_server=self.kube.server),
            )
            self._tasks.append(asyncio.create_task(worker.run(), name="async worker"))
        logger.info("The gateway listens on %s:%d", s.host, s.port)

    def _pool_serving(self, fn: FunctionEntry) -> int:
        pool = self.path.warm_pool
        return len(pool.endpoints(fn)) if pool is not None else 0

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)

    async def drain(self) -> None:
        """SIGTERM: /readyz answers 503; after ``drain_delay_seconds`` (Services stop sending here) the replica
        hands the leader's Lease on (keeping its member Lease, so the new leader counts its slots), stops
        listening and waits for the requests in flight (up to ``drain_timeout_seconds``); :meth:`stop` follows.
        Accepted Event invocations are in JetStream already; the worker's unacknowledged ones are redelivered."""
        s = self.settings
        self.draining = True
        logger.info(
            "Draining: not ready; stopping in %g s, once the requests in flight are answered",
            s.drain_delay_seconds,
        )
        await asyncio.sleep(s.drain_delay_seconds)
        if self.peers is not None:
            await self.peers.resign()
        if self._runner is not None:
            await self._runner.cleanup()  # stops listening, then waits for the handlers still running
            self._runner = None
        logger.info("Drained: every request in flight was answered")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.peers is not None:
            await self.peers.resign()
            await self.peers.leave()
        if self.queue is not None:
            await self.queue.close()
            self.queue = None
        await self.logs_api.close()
        if self.log_auth is not None:
            await self.log_auth.stop()
            self.log_auth = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.path.agents.close()
        if self.code_store is not None:
            await self.code_store.close()


def _http(response: httpapi.HttpResponse) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(response.headers)
    return web.Response(status=response.status, body=response.body, headers=headers)


class BodyRefused(Exception):
    """A request body not read: ``kind`` is ``too_large``, ``timeout`` or ``busy`` (the global cap)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


BODY_REFUSALS = {
    "too_large": (413, "Request Entity Too Large"),
    "timeout": (408, "Request Timeout"),
    "busy": (429, "Too Many Requests"),
}


async def serve(settings: GatewaySettings, kube: KubeClient) -> None:
    """Runs the gateway (watches, autoscaler, HTTP) until cancelled, or until SIGTERM and a drain."""
    gateway = Gateway(settings, kube)
    await gateway.start()
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    running = asyncio.ensure_future(gateway.wait())
    stopping = asyncio.ensure_future(terminated.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if terminated.is_set():
            await gateway.drain()  # SIGTERM: the watches, Leases and worker keep running meanwhile
        else:
            running.result()  # a task failed: raise its error

    finally:
        stopping.cancel()
        running.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        await gateway.stop()
