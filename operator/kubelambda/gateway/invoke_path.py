"""The gateway's invoke path, shared by every entry point (the Invoke API, HTTP routes, the async worker).

An entry point identifies the caller, decides, and resolves the Function (gateway/app.py); then this path runs the
invocation: throttler (exact in-flight per function and for the pool) → an instance with a free slot (the function's
own, a warm-pool pod, or the activator from zero) → the agent (gateway/proxy.py) → the result, unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import aiohttp

from kubelambda import metrics, tracing
from kubelambda.agentauth import function_token
from kubelambda.gateway.activator import Activator
from kubelambda.gateway.balancer import Balancer
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.limits import Admission, Choice, LocalLimits, SharedLimits, Ticket
from kubelambda.gateway.proxy import (
    FailedMidInvocation,
    Invocation,
    Result,
    TryElsewhere,
    Unreachable,
    agent_connections,
    agent_headers,
    forward,
)
from kubelambda.gateway.registry import FunctionEntry, Registry
from kubelambda.gateway.scaler import policy_of
from kubelambda.gateway.throttler import LimitsUnavailable, Throttled, Throttler
from kubelambda.kube import ApiError
from kubelambda.plainhttp import Origins

if TYPE_CHECKING:
    from kubelambda.gateway.scaler import Autoscaler
    from kubelambda.gateway.warmpool import WarmPool

logger = logging.getLogger(__name__)

WARM_POOL_HEADER = "X-Kubelambda-Warm-Pool"  # the pool pod that answered (docs/warm-pools.md)
INIT_DURATION = "kubelambda.init_duration_ms"
"""The invoke span's attribute for a cold start: how long it waited for an instance (the activator's scale-up
and the runtime's init, or a warm-pool pod's specialisation), in ms."""


class Unavailable(Exception):
    """No instance could take the invocation: Lambda's error ``code`` (and ``reason`` for a 429)."""

    def __init__(self, code: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


RETRY_CONNECT_SECONDS = (0.1, 1.0)  # the first and the longest pause before connecting to an instance again

Step = Literal["cold", "again", "grow", "throttle", "unreachable"]


def when_no_slot(
    *,
    ready: Collection[str],
    tried: Collection[str],
    unreachable: Collection[str],
    growing: bool,
    time_left: float,
) -> Step:
    """What a call does when no ready instance it has not tried had a free slot (``ready``: the instances
    ready now; ``tried``: those that refused it, of which ``unreachable`` could not even be connected to).

    ``cold``: the instances it tried went away, back to the cold path. ``again``: an instance still ready could
    not be connected to (refused, or slow to accept under load): that is no sign of throttling, so it connects
    again (after a pause) until the call's deadline, and then ``unreachable`` (a retryable 5xx saying so), never a
    429. ``grow``: an instance is starting for it (a Lambda request waits for a new environment). ``throttle``:
    every instance was busy, Lambda's 429."""
    if tried and not ready:
        return "cold"
    if any(e in ready for e in unreachable):
        return "again" if time_left > 0 else "unreachable"
    if growing and time_left > 0:
        return "grow"
    return "throttle"


class Prepared(NamedTuple):
    """The invoke path's working for one registry entry (:meth:`InvokePath._prepare`)."""

    base: FunctionEntry  # the entry whose reserved concurrency counts (the function's, for a version)
    admission: Admission
    counts: metrics.FunctionCounts
    headers: dict[str, str]  # what every call to the function's agents carries (proxy.agent_headers)


@dataclass
class InvokePath:
    settings: GatewaySettings
    registry: Registry
    activator: Activator
    # The gateway's aiohttp session: a warm-pool pod's specialisation (invocations go over ``agents``).
    http: Callable[[], aiohttp.ClientSession]
    throttler: Throttler = field(init=False)
    limits: LocalLimits | SharedLimits = field(
        init=False
    )  # SharedLimits with several replicas (the leader counts)
    balancer: Balancer = field(default_factory=Balancer)
    autoscaler: Autoscaler | None = None  # set by the gateway when it starts
    warm_pool: WarmPool | None = None  # when KUBELAMBDA_GATEWAY_WARM_POOL_SIZES names a pool
    _cold_waiting: dict[tuple[str, str], int] = field(default_factory=dict)  # per function, in the activator
    agents: Origins = field(default_factory=agent_connections)  # the invocations' connections to agents

    def __post_init__(self) -> None:
        self.throttler = Throttler(pool_limit=self.settings.pool_limit)
        self.limits = LocalLimits(self.throttler, self.balancer)

    def run(
        self, fn: FunctionEntry, invocation: Invocation, started: float
    ) -> Awaitable[tuple[Result, bool]]:
        """One invocation: throttler (exact in-flight), then :meth:`_route`. Raises :class:`Throttled` or
        :class:`Unavailable`; counts the outcome either way. ``started``: when the entry point took the call.

        With tracing on, it is one span (``invoke <namespace>/<name>``, a child of the caller's ``traceparent``
        or of the current span) whose children are the cold path's wait and the forward (docs/tracing.md)."""
        if not tracing.enabled():
            return self._run(fn, invocation, started)
        return self._traced(fn, invocation, started)

    async def _traced(self, fn: FunctionEntry, invocation: Invocation, started: float) -> tuple[Result, bool]:
        parent = tracing.parent(invocation.traceparent, invocation.trace_id)
        with tracing.span(
            f"invoke {fn.namespace}/{fn.name}", context=parent, kind=tracing.SpanKind.SERVER
        ) as span:
            outcome = "error"
            cold = False
            try:
                result, cold = await self._run(fn, invocation, started, traced=True)
                outcome = result.outcome
                return result, cold
            except Throttled:
                outcome = "throttled"
                raise
            finally:
                if span is not None and span.is_recording():
                    span.set_attributes(
                        {
                            "faas.name": fn.lambda_name,
                            "faas.version": fn.version,
                            "faas.invocation_id": invocation.request_id,
                            "faas.coldstart": cold,
                            "kubelambda.namespace": fn.namespace,
                            "kubelambda.function": fn.name,
                            "kubelambda.invocation_type": invocation.invocation_type,
                            "kubelambda.throttled": outcome == "throttled",
                            "kubelambda.outcome": outcome,
                        }
                    )
                    if outcome not in ("success", "function_error"):
                        span.set_status(tracing.StatusCode.ERROR, outcome)

    def _prepare(self, fn: FunctionEntry, base: FunctionEntry) -> Prepared:
        """What every invocation of ``fn`` needs that does not change between them, worked out once per entry
        (the registry replaces an entry when its Function changes): kept on the entry, so it goes with it.
        ``base``: the entry whose reserved concurrency counts."""
        key = self.settings.agent_key
        ready = fn.prepared = Prepared(
            base,
            Admission(
                f"{fn.namespace}/{fn.name}",
                reserved=base.spec.concurrency.reserved,
                function=f"{fn.namespace}/{fn.lambda_name}",
                per_instance=fn.spec.concurrency.per_instance,
                timeout=float(fn.spec.timeout_seconds),
            ),
            metrics.GATEWAY_INVOCATIONS.of(*fn.key),
            # The function's agent token is an HMAC: worked out once.
            agent_headers(function_token(key.get_secret_value(), *fn.key) if key else None),
        )
        return ready

    async def _run(
        self, fn: FunctionEntry, invocation: Invocation, started: float, *, traced: bool = False
    ) -> tuple[Result, bool]:
        # Reserved concurrency is the function's, shared by its published versions (docs/versions.md).
        base = self.registry.functions.get((fn.namespace, fn.lambda_name)) or fn
        ready: Prepared | None = fn.prepared
        if ready is None or ready.base is not base:
            ready = self._prepare(fn, base)
        m = ready.counts
        want = ready.admission
        limits = self.limits
        if isinstance(limits, SharedLimits):
            # With several replicas the leader also assigns one of the ready instances with the slot.
            want = dataclasses.replace(want, endpoints=self.registry.ready_endpoints(fn.key))
        try:
            ticket = await limits.enter(want)
            try:
                m.in_flight += 1
                result, cold = await self._route(fn, invocation, ticket, ready.headers, traced=traced)
            finally:
                m.in_flight -= 1
                limits.leave(want, ticket)
                done = time.monotonic()
                # An invocation shorter than the sampling interval is never seen in flight by the
                # sampler: without this a function whose requests are all short looked idle forever
                # ("idle for inf s") and was scaled to zero right under them.
                if self.autoscaler is not None:
                    self.autoscaler.note_active(fn.key, done)
        except LimitsUnavailable as e:
            m.outcomes["error"] += 1
            raise Unavailable("ServiceException", str(e)) from e
        except Throttled as e:
            metrics.GATEWAY_THROTTLES.labels(fn.namespace, fn.name, e.reason).inc()
            m.outcomes["throttled"] += 1
            raise
        except Unavailable:
            m.outcomes["error"] += 1
            raise
        m.outcomes[result.outcome] += 1
        m.observe(done - started)
        return result, cold

    async def _route(
        self,
        fn: FunctionEntry,
        invocation: Invocation,
        ticket: Ticket,
        headers: Mapping[str, str],
        *,
        traced: bool,
    ) -> tuple[Result, bool]:
        """An instance for the call, and the call forwarded to it (``headers``: the function's for its agents;
        ``traced``: the forward is a span of its own)."""
        s = self.settings
        spec = fn.spec
        labels = (fn.namespace, fn.name)
        cold = False
        tried: set[str] = set()
        unreachable: dict[str, str] = {}  # the instances no connection could be made to: why (the last error)
        pause = RETRY_CONNECT_SECONDS[0]
        give_up = time.monotonic() + spec.timeout_seconds + s.cold_start_allowance_seconds
        while True:
            # A warm call: a ready instance with a free slot now (the same pick as place's first look).
            ready = self.registry.endpoints.get(fn.key)
            endpoint = (
                self.limits.take(ticket, ready, spec.concurrency.per_instance)
                if ready and not tried
                else None
            )
            if endpoint is None:
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
                # An instance's worker slots are counted over every replica's calls (gateway/limits.py).
                endpoint = await self.limits.place(
                    ticket, Choice(endpoints_of, per_instance, wait, frozenset(tried))
                )
                if endpoint is None:
                    step = when_no_slot(
                        ready=endpoints_of(),
                        tried=tried,
                        unreachable=unreachable,
                        growing=self._growing(fn),
                        time_left=give_up - time.monotonic(),
                    )
                    if step == "again":
                        await asyncio.sleep(min(pause, max(give_up - time.monotonic(), 0)))
                        pause = min(pause * 2, RETRY_CONNECT_SECONDS[1])
                        tried.difference_update(unreachable)
                        unreachable.clear()
                        continue
                    if step == "unreachable":
                        logger.warning(
                            "No connection to %s (%s/%s) until the deadline of %s: %s",
                            ", ".join(unreachable),
                            *labels,
                            invocation.request_id,
                            "; ".join(unreachable.values()),
                        )
                        raise Unavailable(
                            "ServiceException",
                            f"No connection could be made to an instance of {fn.namespace}/{fn.name} within "
                            f"{spec.timeout_seconds} s + {s.cold_start_allowance_seconds:.0f} s "
                            f"(RequestId: {invocation.request_id}); the function did not run, try again",
                        )
                    if step in ("cold", "grow"):
                        continue  # back to the cold path; or an instance is starting for it
                    raise Unavailable(
                        "TooManyRequestsException",
                        f"Rate Exceeded. Every instance of {fn.namespace}/{fn.name} was busy for {wait:.1f} s",
                        reason="ConcurrentInvocationLimitExceeded",
                    )
            again = False
            try:
                call = forward(
                    self.agents,
                    endpoint,
                    invocation,
                    headers=headers,
                    max_response_bytes=s.max_response_bytes,
                )
                result = await (self._traced_forward(endpoint, call) if traced else call)
                pod = self.warm_pool.pod_at(endpoint) if self.warm_pool is not None else None
                if pod is not None:
                    result.headers[WARM_POOL_HEADER] = pod
                return result, cold
            except TryElsewhere as e:
                logger.info("Retrying %s/%s elsewhere: %s", *labels, e)
                again = True
                tried.add(endpoint)
                if isinstance(e, Unreachable):
                    unreachable[endpoint] = str(e)
                if self.warm_pool is not None:
                    self.warm_pool.discard(endpoint)
            except FailedMidInvocation as e:
                if self.warm_pool is not None:
                    self.warm_pool.discard(endpoint)  # a pool pod that failed is never specialised again
                # The caller learns no pod address nor the client's error (both logged).
                logger.warning(
                    "Instance %s of %s/%s failed mid-invocation %s: %s",
                    endpoint,
                    *labels,
                    invocation.request_id,
                    e,
                )
                raise Unavailable(
                    "ServiceException",
                    f"An instance of {fn.namespace}/{fn.name} failed mid-invocation "
                    f"(RequestId: {invocation.request_id})",
                ) from e
            finally:
                self.limits.unplace(ticket, endpoint, final=not again)
                if self.warm_pool is not None:
                    self.warm_pool.flush(endpoint)

    @staticmethod
    async def _traced_forward(endpoint: str, call: Coroutine[Any, Any, Result]) -> Result:
        # The function's trace parent (forward reads the current span when it runs, at the await): its own spans
        # are children of this one.
        with tracing.span("forward", kind=tracing.SpanKind.CLIENT) as span:
            tracing.set_attributes(span, {"server.address": endpoint})
            return await call

    def _growing(self, fn: FunctionEntry) -> bool:
        """``fn`` has fewer ready instances than it may have (maxInstances, and what reserved concurrency can
        fill): a request that found no free slot for ``slot_wait_seconds`` is demand the autoscaler scales up for,
        so it keeps waiting for a new instance (up to the function timeout plus the cold-start allowance) instead
        of a 429, as a Lambda request waits for a new execution environment (docs/gateway.md)."""
        return len(self.registry.ready_endpoints(fn.key)) < policy_of(fn).ceiling

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
        with tracing.span("warm-pool specialisation") as span:
            endpoint = await pool.claim(fn, self.http())
            tracing.set_attributes(span, {"kubelambda.specialised": endpoint is not None})
        if endpoint is None:
            return False if existing else None
        waited = time.monotonic() - started
        metrics.GATEWAY_COLD_STARTS.labels(fn.namespace, fn.name).inc()
        metrics.GATEWAY_COLD_START_SECONDS.labels(fn.namespace, fn.name).observe(waited)
        tracing.annotate({INIT_DURATION: waited * 1000})
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
            with tracing.span("activator wait"):
                try:
                    await self.activator.activate(fn)
                except ApiError as e:
                    logger.warning(
                        "Could not scale %s/%s up: %s", *labels, e
                    )  # the API's words stay in the log
                    raise Unavailable(
                        "ServiceException", f"Could not scale {fn.namespace}/{fn.name} up"
                    ) from e
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    # The API server too slow for a moment: the autoscaler asks for an instance for the waiting
                    # request too (docs/scaling.md); wait for it rather than answer a 500.
                    logger.warning("Could not reach the API server to scale %s/%s up: %r", *labels, e)
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
            waited = time.monotonic() - started
            metrics.GATEWAY_COLD_START_SECONDS.labels(*labels).observe(waited)
            tracing.annotate({INIT_DURATION: waited * 1000})
