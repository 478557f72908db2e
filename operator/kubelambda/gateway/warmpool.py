"""Warm pools, the gateway's side (docs/warm-pools.md): cold starts served by pre-started generic pods.

The gateway keeps one pool Deployment per runtime in the system namespace (``resources/warmpool.py``) and
watches its pods. On a cold invoke of a qualifying Function it takes a free pod from that watch, claims it through
the API server (an annotation patch whose precondition is the resourceVersion it watched: of two gateway replicas
claiming one pod, exactly one succeeds, the other gets 409 and takes another pod), ``POST``s ``/specialize`` to its
agent, and sends the invocation there. Afterwards, in the background: the pod is relabelled as the function's (it leaves the pool's
selector, so the ReplicaSet replaces it), the function's own Deployment scales up as usual, and once one of its
own instances is ready the specialised pod is deleted. A specialised pod is never given back to the pool nor to
another function (its agent refuses a second ``/specialize``; a pod whose container ever restarted is never
claimed and is deleted, since a restarted agent has forgotten; ``/specialize`` names the runtime and pod uid it
is meant for, so a pod now holding a stale address refuses it), and it serves only the code SHA-256 it was
given: after a code change it gets no new requests and is deleted.

Several gateways share the pools: the claim above decides which one gets a pod; the agent's own refusal of a
second ``/specialize`` (409) remains as a second line.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp

from kubelambda import metrics, natsauth
from kubelambda.agentauth import bearer, function_token, pool_token
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.gateway.registry import FunctionEntry, Key, Registry
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, list_and_watch, resource_path
from kubelambda.resources.configmap import code_sha256
from kubelambda.resources.labels import FUNCTION_LABEL
from kubelambda.resources.names import INVOKE_PORT
from kubelambda.resources.warmpool import (
    CLAIMED_AT_ANNOTATION,
    CLAIMED_BY_ANNOTATION,
    FIELD_MANAGER,
    FUNCTION_NAMESPACE_LABEL,
    POOL_LABEL,
    POOL_RUNTIME_LABEL,
    claim_patch,
    make_pool_deployment,
    make_pool_ingress_policy,
    pool_images,
    pool_name,
    pool_replicas,
)
from kubelambda.settings import default_runtime_images

if TYPE_CHECKING:
    from kubelambda.gateway.balancer import Balancer
    from kubelambda.gateway.config import GatewaySettings

logger = logging.getLogger(__name__)

SPECIALIZE_TIMEOUT_SECONDS = 90.0  # an archive download (60 s at most in the agent) plus the handler's init
CLAIM_WINDOW_SECONDS = 60.0  # claims this recent grow the pool (pool_replicas)
FLUSH_DELAY_SECONDS = 0.02  # deferred work starts this long after the first answer left
DEFER_LIMIT_SECONDS = 1.0  # work deferred after a claim starts by then, answered or not
REAPPLY_SECONDS = 60.0  # pool objects are re-applied this often even when nothing changed (heals deletions)
# A live gateway relabels a pod it claimed within this long (its /specialize times out, its deferred relabel starts
# a second after): a claimed pod still in its pool's selector after that was abandoned by a gateway that stopped.
ABANDONED_CLAIM_SECONDS = SPECIALIZE_TIMEOUT_SECONDS + 30.0


def ineligible(fn: FunctionEntry, *, settings: GatewaySettings) -> str | None:
    """Why ``fn`` cannot be served from a warm pool, or None when it can.

    A pool pod runs in the system namespace with no ServiceAccount token, no NetworkPolicy of the function's and
    nothing mounted but its code: functions that need more take the normal path.
    """
    spec = fn.spec
    if not spec.scaling.warm_pool:
        return "scaling.warmPool is false"
    if settings.warm_pool_sizes.get(spec.runtime, 0) <= 0:
        return f"no warm pool for {spec.runtime}"
    if spec.code.inline is None and spec.code.archive is None:
        return "only inline and archive code is delivered to pool pods"
    if spec.layers:
        return "layers (a pool pod has no /opt of the function's)"
    if spec.service_account_name is not None:
        return "a custom serviceAccountName (pool pods get no token)"
    if spec.env_from:
        return "envFrom (Secrets and ConfigMaps of its namespace cannot be mounted by a pool pod)"
    if spec.network is not None:
        return "network.egress (its egress NetworkPolicy selects only its own pods)"
    if spec.memory_mb > settings.warm_pool_memory_mb:
        return f"memoryMB {spec.memory_mb} is over the pool pods' {settings.warm_pool_memory_mb}"
    if spec.ephemeral_storage_mb > 512:
        return "ephemeralStorageMB over the pool pods' 512"
    if fn.namespace in (settings.warm_pool_namespace, settings.auth_namespace):
        return "functions in the pool or system namespace are never pooled"
    return None


def function_sha256(fn: FunctionEntry) -> str:
    return code_sha256(fn.spec.code)


def specialize_body(
    fn: FunctionEntry, *, sha256: str, region: str, runtime: str = "", pod_uid: str = ""
) -> JSON:
    """What ``POST /specialize`` tells the agent: the function, its limits, environment and code, and the
    runtime and pod it is meant for (the agent of any other pod refuses it)."""
    spec = fn.spec
    body: JSON = {
        "runtime": runtime or spec.runtime,
        "podUid": pod_uid,
        "functionName": fn.lambda_name,  # a published version runs as its Function, with its number
        "namespace": fn.namespace,  # for the log records the agent ships (docs/logs.md)
        "functionArn": FunctionRef(fn.namespace, fn.lambda_name).arn(region),
        "handler": spec.handler,
        "memoryMB": spec.memory_mb,
        "timeoutSeconds": spec.timeout_seconds,
        "environment": dict(sorted(spec.environment.items())),
        "codeSha256": sha256,
    }
    if fn.version != "$LATEST":
        body["functionVersion"] = fn.version
    if spec.logging is not None and spec.logging.log_format != "Text":  # LoggingConfig (docs/logs.md)
        body["logging"] = spec.logging.wire()
    if spec.code.inline is not None:
        body["inline"] = dict(spec.code.inline)
    elif spec.code.archive is not None:
        body["archive"] = {"url": spec.code.archive.url, "sha256": spec.code.archive.sha256}
    return body


def retire_reason(
    *,
    function_exists: bool,
    current_sha: str | None,
    pod_sha: str,
    own_ready: bool,
    age: float,
    lifetime: float,
    restarted: bool = False,
    failed: bool = False,
) -> str | None:
    """Why a specialised pod should go now (None: keep serving). Pure, for the table test."""
    if restarted:
        return "restarted"  # its agent has forgotten the function: it must not serve, nor be claimed again
    if failed:
        return "failed"  # it refused work or its agent failed mid-invocation: never trusted again
    if not function_exists:
        return "function_gone"
    if current_sha != pod_sha:
        return "code_changed"
    if own_ready:
        return "function_ready"
    if age > lifetime:
        return "lifetime"
    return None


def abandoned_claim(
    *,
    pooled: bool,
    claimed_by: str | None,
    claimed_at: float | None,
    identity: str,
    specialising: bool,
    now: float,
) -> bool:
    """Whether a claimed pod still in its pool's selector (``pooled``) was abandoned: no live gateway will relabel
    it, and until it goes the pool's ReplicaSet counts it as one of its pods and starts no replacement. Pure, for
    the table test.

    Ours (``identity``) but not being specialised here (the pods a gateway serves are never asked): a previous run of this gateway claimed it
    (a restart, an upgrade in place), or it refused the specialisation; another gateway's: once its claim is older
    than any live gateway takes to relabel a pod it claimed (:data:`ABANDONED_CLAIM_SECONDS`).
    """
    if not pooled or claimed_by is None or specialising:
        return False
    if claimed_by == identity:
        return True
    return claimed_at is None or now - claimed_at > ABANDONED_CLAIM_SECONDS


@dataclass
class PoolPod:
    """A pod of a pool Deployment, as the watch shows it."""

    name: str
    uid: str
    runtime: str
    ip: str
    ready: bool
    free: bool  # still carries the pool label, and nobody claimed it
    deleting: bool
    function: Key | None  # set once claimed (labels)
    claimed_at: float | None  # epoch seconds, from the annotation
    claimed_by: str | None = None  # the claiming gateway's identity, from the annotation
    pooled: bool = (
        False  # still carries the pool label: in its Deployment's selector, counted as one of its pods
    )
    restarts: int = 0  # container restarts the kubelet counted: a restarted agent has forgotten its function
    resource_version: str = ""  # the claim's precondition

    @classmethod
    def from_body(cls, body: JSON) -> PoolPod:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        status = body.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        function = None
        if FUNCTION_LABEL in labels and FUNCTION_NAMESPACE_LABEL in labels:
            function = (labels[FUNCTION_NAMESPACE_LABEL], labels[FUNCTION_LABEL])
        claimed_at = None
        if CLAIMED_AT_ANNOTATION in annotations:
            try:
                claimed_at = datetime.fromisoformat(annotations[CLAIMED_AT_ANNOTATION]).timestamp()
            except ValueError:
                claimed_at = 0.0
        restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
        return cls(
            restarts=restarts,
            name=meta["name"],
            uid=meta.get("uid", ""),
            runtime=labels.get(POOL_RUNTIME_LABEL, ""),
            ip=status.get("podIP") or "",
            ready=ready,
            free=POOL_LABEL in labels and CLAIMED_BY_ANNOTATION not in annotations,
            pooled=POOL_LABEL in labels,
            claimed_by=annotations.get(CLAIMED_BY_ANNOTATION),
            resource_version=meta.get("resourceVersion", ""),
            deleting=meta.get("deletionTimestamp") is not None,
            function=function,
            claimed_at=claimed_at,
        )


@dataclass
class Specialised:
    """A pool pod this gateway specialised: it serves ``key`` at ``sha256`` until retired."""

    pod: str
    uid: str
    runtime: str
    endpoint: str
    key: Key
    sha256: str
    since: float  # monotonic
    retiring: bool = False
    failed: bool = False  # refused work or failed mid-invocation (see WarmPool.discard)
    # Background work held until the pod's first answer is on its way (see WarmPool.defer).
    deferred: list[Callable[[], Coroutine[Any, Any, Any]]] = field(default_factory=list)
    flushed: bool = False


@dataclass
class WarmPool:
    settings: GatewaySettings
    kube: KubeClient
    registry: Registry
    balancer: Balancer
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    pods: dict[str, PoolPod] = field(default_factory=dict)
    serving: dict[Key, list[Specialised]] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)  # never handed out again (ours, or another gateway's)
    _pending: dict[tuple[Key, str], asyncio.Task[Specialised | None]] = field(default_factory=dict)
    _claims: dict[str, collections.deque[float]] = field(default_factory=dict)
    _applied: dict[str, tuple[int, float]] = field(default_factory=dict)  # runtime → (replicas, when)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _by_endpoint: dict[str, Specialised] = field(default_factory=dict)
    _sha: dict[Key, tuple[object, str]] = field(default_factory=dict)  # spec object → its code sha256
    _deleting: set[str] = field(default_factory=set)  # pods we asked to delete (until the watch says gone)
    _claiming: set[str] = field(default_factory=set)  # pods we claimed and are specialising right now

    # ---- the invoke path (no Kubernetes calls) -------------------------------------------------------------

    def code_sha(self, fn: FunctionEntry) -> str:
        cached = self._sha.get(fn.key)
        if cached is not None and cached[0] is fn.spec:
            return cached[1]
        sha = function_sha256(fn)
        self._sha[fn.key] = (fn.spec, sha)
        return sha

    def endpoints(self, fn: FunctionEntry) -> list[str]:
        """Specialised pods serving ``fn``'s current code (never a pod holding older code)."""
        serving = self.serving.get(fn.key)
        if not serving:
            return []
        sha = self.code_sha(fn)
        return [s.endpoint for s in serving if s.sha256 == sha and not s.retiring]

    def pod_at(self, endpoint: str) -> str | None:
        s = self._by_endpoint.get(endpoint)
        return s.pod if s is not None else None

    def discard(self, endpoint: str) -> None:
        """The pod at ``endpoint`` refused work or its agent failed mid-invocation: no new requests go there;
        the maintenance loop deletes it with reason ``failed`` as soon as it is idle, whatever else is true of
        its function (its own instance may be ready by then: the reason must still say the pod failed)."""
        s = self._by_endpoint.get(endpoint)
        if s is not None:
            s.retiring = True
            s.failed = True

    def eligible(self, fn: FunctionEntry) -> bool:
        return ineligible(fn, settings=self.settings) is None

    async def claim(self, fn: FunctionEntry, session: aiohttp.ClientSession) -> str | None:
        """Specialises a free pool pod for ``fn`` (one at a time per function and code) and returns its
        endpoint, or None when the pool cannot serve it (the caller takes the normal path)."""
        key = (fn.key, self.code_sha(fn))
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._specialise(fn, key[1], session))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        s = await asyncio.shield(task)
        return s.endpoint if s is not None else None

    def _take_free(self, runtime: str) -> PoolPod | None:
        for pod in self.pods.values():
            if (
                pod.runtime == runtime
                and pod.free
                and pod.ready
                and pod.ip
                and not pod.deleting
                and pod.restarts == 0
                and pod.name not in self._taken
            ):
                self._taken.add(pod.name)
                return pod
        return None

    async def _specialise(
        self, fn: FunctionEntry, sha: str, session: aiohttp.ClientSession
    ) -> Specialised | None:
        runtime = fn.spec.runtime
        while True:
            pod = self._take_free(runtime)
            if pod is None:
                metrics.WARM_POOL_MISSES.labels(runtime, "empty").inc()
                logger.info("No free %s pool pod for %s/%s: normal cold start", runtime, *fn.key)
                return None
            if not await self._claim(pod):
                continue
            self._claiming.add(pod.name)
            try:
                body = specialize_body(
                    fn, sha256=sha, region=self.settings.region, runtime=runtime, pod_uid=pod.uid
                )
                key = self.settings.agent_key
                headers: dict[str, str] = {}
                if key is not None:
                    ns = self.settings.warm_pool_namespace
                    headers = bearer(pool_token(key.get_secret_value(), ns, runtime))
                    body["agentToken"] = function_token(key.get_secret_value(), *fn.key)
                    log_url = self.settings.agent_nats_url or self.settings.nats_url
                    if self.settings.logs and log_url:  # its namespace's own log credentials (docs/logs.md)
                        body["logNatsUrl"] = natsauth.log_url(
                            log_url, key.get_secret_value(), fn.namespace, int(time.time())
                        )
                endpoint = f"{pod.ip}:{INVOKE_PORT}"
                started = time.monotonic()
                try:
                    async with session.post(
                        f"http://{endpoint}/specialize",
                        json=body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=SPECIALIZE_TIMEOUT_SECONDS, sock_connect=2),
                    ) as resp:
                        status = resp.status
                        answer = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    logger.warning("Could not specialise pool pod %s for %s/%s: %s", pod.name, *fn.key, e)
                    self._spawn(self._delete(pod.name, pod.uid, "failed"))
                    metrics.WARM_POOL_MISSES.labels(runtime, "failed").inc()
                    return None
                if status in (401, 421):
                    # The address is another pod's by now (ours was deleted, its address reused before our watch
                    # said so): that pod refused. Try the next one.
                    logger.warning(
                        "Pool pod %s's address %s is another pod's now: %s", pod.name, endpoint, answer
                    )
                    continue
                if status == 409:
                    # Another gateway got there first: it is that gateway's pod now. Try the next one.
                    logger.info("Pool pod %s was specialised by someone else: %s", pod.name, answer)
                    continue
                if status != 200:
                    logger.warning(
                        "Pool pod %s refused to specialise for %s/%s (%d): %s",
                        pod.name,
                        *fn.key,
                        status,
                        answer,
                    )
                    self._spawn(self._delete(pod.name, pod.uid, "failed"))
                    metrics.WARM_POOL_MISSES.labels(runtime, "failed").inc()
                    return None
                metrics.WARM_POOL_SPECIALIZE_SECONDS.labels(runtime).observe(time.monotonic() - started)
                metrics.WARM_POOL_CLAIMS.labels(runtime).inc()
                s = Specialised(pod.name, pod.uid, runtime, endpoint, fn.key, sha, time.monotonic())
                self.serving.setdefault(fn.key, []).append(s)
                self._by_endpoint[endpoint] = s
                self._claims.setdefault(runtime, collections.deque()).append(time.monotonic())
                logger.info(
                    "Specialised pool pod %s for %s/%s (code %s, %s) in %.1f ms",
                    pod.name,
                    *fn.key,
                    sha[:12],
                    answer.get("state"),
                    (time.monotonic() - started) * 1000,
                )
                s.deferred.append(partial(self._record_claim, s))
                return s
            finally:
                self._claiming.discard(pod.name)

    async def _claim(self, pod: PoolPod) -> bool:
        """Claims ``pod`` through the API server: an annotation patch with the watched resourceVersion as its
        precondition, so of several gateway replicas exactly one gets it (the others: 409, take another)."""
        patch = {
            "metadata": {
                "resourceVersion": pod.resource_version,
                "annotations": {
                    CLAIMED_BY_ANNOTATION: self.identity,
                    CLAIMED_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="seconds"),
                },
            }
        }
        try:
            await self.kube.patch(self._pod_path(pod.name), patch)
        except ApiError as e:
            if e.status in (404, 409):  # gone, or changed since we saw it (claimed by another replica)
                logger.info(
                    "Pool pod %s was claimed or changed meanwhile (%d): taking another", pod.name, e.status
                )
                return False
            raise
        return True

    # ---- background: records, retirement, pool sizes --------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` in the background (the regular scale-up after a claim), logging its failure."""

        async def logged() -> None:
            try:
                await coro
            except Exception as e:
                logger.warning("Background work after a warm-pool claim failed: %s", e)

        self._spawn(logged())

    def defer(self, endpoint: str, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Runs ``work`` once the specialised pod at ``endpoint`` has answered its first invocation (or a second
        later at most): the Kubernetes writes that follow a claim, and the pods they start (the pool's replacement,
        the function's own instance), then do not compete for the CPU with the cold request itself."""
        s = self._by_endpoint.get(endpoint)
        if s is None or s.flushed:
            self.spawn(work())
        else:
            s.deferred.append(work)

    def flush(self, endpoint: str) -> None:
        """The pod at ``endpoint`` answered: start the work deferred until then."""
        s = self._by_endpoint.get(endpoint)
        if s is not None and not s.flushed:
            # A moment later: the answer is still being written when the invoke path calls this.
            asyncio.get_running_loop().call_later(FLUSH_DELAY_SECONDS, self._flush_if_pending, s)

    def _flush_if_pending(self, s: Specialised) -> None:
        if not s.flushed:
            self._flush(s)

    def _flush(self, s: Specialised) -> None:
        s.flushed = True
        work, s.deferred = s.deferred, []
        for factory in work:
            self.spawn(factory())

    def _pod_path(self, name: str) -> str:
        return resource_path("v1", "pods", namespace=self.settings.warm_pool_namespace, name=name)

    async def _record_claim(self, s: Specialised) -> None:
        patch = claim_patch(
            runtime=s.runtime,
            namespace=s.key[0],
            function=s.key[1],
            code_sha256=s.sha256,
            claimed_by=self.identity,
            claimed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        try:
            await self.kube.patch(self._pod_path(s.pod), patch)
            logger.info("Labelled pool pod %s as %s/%s's; its pool replaces it", s.pod, *s.key)
        except ApiError as e:
            logger.warning("Could not label pool pod %s as %s/%s's: %s", s.pod, *s.key, e)
            if e.status == 404:
                self._forget(s)
            else:
                # Still in its pool's selector: no new requests; the maintenance loop deletes it when idle.
                s.retiring = True

    def _forget(self, s: Specialised) -> None:
        if not s.flushed:
            self._flush(s)
        serving = self.serving.get(s.key, [])
        if s in serving:
            serving.remove(s)
        if not serving:
            self.serving.pop(s.key, None)
        self._by_endpoint.pop(s.endpoint, None)

    async def _delete(self, name: str, uid: str, reason: str) -> None:
        if name in self._deleting:
            return
        self._deleting.add(name)
        try:
            await self.kube.delete(self._pod_path(name), uid=uid or None)
            metrics.WARM_POOL_RETIRED.labels(reason).inc()
            logger.info("Deleted pool pod %s (%s)", name, reason)
        except ApiError as e:
            if e.status != 409:  # 409: the uid precondition failed, the pod is another one by now
                logger.warning("Could not delete pool pod %s: %s", name, e)
                self._deleting.discard(name)  # try again on a later round

    def retire_once(self, now: float) -> None:
        """Retires the specialised pods that should go (see :func:`retire_reason`), once they are idle."""
        lifetime = self.settings.warm_pool_max_lifetime_seconds
        for key, serving in list(self.serving.items()):
            fn = self.registry.functions.get(key)
            current = self.code_sha(fn) if fn is not None else None
            own_ready = bool(self.registry.ready_endpoints(key))
            for s in list(serving):
                if not s.flushed and now - s.since > DEFER_LIMIT_SECONDS:
                    self._flush(s)
                reason = retire_reason(
                    function_exists=fn is not None,
                    current_sha=current,
                    pod_sha=s.sha256,
                    own_ready=own_ready,
                    age=now - s.since,
                    lifetime=lifetime,
                    restarted=self._restarted(s.pod),
                    failed=s.failed,
                )
                if reason is None and not s.retiring:
                    continue
                s.retiring = True
                if self.balancer.load.get(s.endpoint, 0) > 0:
                    continue  # let its invocations finish; next round
                self._forget(s)
                self._spawn(self._delete(s.pod, s.uid, reason or "failed"))
        # Claimed pods no gateway here knows of (another gateway's, or ours before a restart), and free pods
        # whose container restarted (never claimed: their agent may have forgotten a specialisation).
        wall = time.time()
        ours = {s.pod for serving in self.serving.values() for s in serving}
        for pod in list(self.pods.values()):
            if pod.restarts > 0 and pod.free and not pod.deleting and pod.name not in self._deleting:
                self._spawn(self._delete(pod.name, pod.uid, "restarted"))
                continue
            if (
                pod.free
                or pod.deleting
                or pod.name in ours
                or pod.name in self._deleting
                or (pod.function is None and pod.claimed_at is None)
            ):
                continue
            if pod.function is None and abandoned_claim(
                pooled=pod.pooled,
                claimed_by=pod.claimed_by,
                claimed_at=pod.claimed_at,
                identity=self.identity,
                specialising=pod.name in self._claiming,
                now=wall,
            ):
                # Claimed but never relabelled (its gateway stopped in between, or it refused us): it holds its
                # pool's place; deleted, the ReplicaSet replaces it at once.
                self._spawn(self._delete(pod.name, pod.uid, "abandoned"))
                continue
            gone = pod.function is not None and pod.function not in self.registry.functions
            ready = pod.function is not None and bool(self.registry.ready_endpoints(pod.function))
            old = pod.claimed_at is not None and wall - pod.claimed_at > lifetime
            restarted = pod.restarts > 0
            if gone or ready or old or restarted:
                reason = (
                    "restarted"
                    if restarted
                    else "function_gone"
                    if gone
                    else "function_ready"
                    if ready
                    else "lifetime"
                )
                self._spawn(self._delete(pod.name, pod.uid, reason))

    def _restarted(self, name: str) -> bool:
        pod = self.pods.get(name)
        return pod is not None and pod.restarts > 0

    def desired(self, runtime: str, now: float) -> int:
        size = self.settings.warm_pool_sizes.get(runtime, 0)
        claims = self._claims.get(runtime, collections.deque())
        while claims and claims[0] < now - CLAIM_WINDOW_SECONDS:
            claims.popleft()
        cap = self.settings.warm_pool_max_sizes.get(runtime, 4 * size)
        return pool_replicas(size, recent_claims=len(claims), max_size=cap)

    async def apply_pools(self, now: float) -> None:
        """Applies each pool Deployment whose size changed (or every minute), and the pools' NetworkPolicy."""
        s = self.settings
        images = pool_images(
            s.warm_pool_images or default_runtime_images(s.warm_pool_registry), s.warm_pool_sizes
        )
        ns = s.warm_pool_namespace
        if not self._applied:
            policy = make_pool_ingress_policy(ns, gateway_namespace=s.auth_namespace)
            await self.kube.apply(
                resource_path("networking.k8s.io/v1", "networkpolicies", namespace=ns, name="warm-pool"),
                policy,
                field_manager=FIELD_MANAGER,
            )
        for runtime, image in images.items():
            replicas = self.desired(runtime, now)
            metrics.WARM_POOL_DESIRED.labels(runtime).set(replicas)
            last = self._applied.get(runtime)
            if last is not None and last[0] == replicas and now - last[1] < REAPPLY_SECONDS:
                continue
            body = make_pool_deployment(
                runtime,
                image=image,
                namespace=ns,
                replicas=replicas,
                memory_mb=s.warm_pool_memory_mb,
                region=s.region,
                agent_token=pool_token(s.agent_key.get_secret_value(), ns, runtime) if s.agent_key else None,
                # No credentials: a pool pod gets its function namespace's own with /specialize.
                log_nats_url=natsauth.without_credentials(s.agent_nats_url or s.nats_url or "") or None
                if s.logs
                else None,
            )
            await self.kube.apply(
                resource_path("apps/v1", "deployments", namespace=ns, name=pool_name(runtime)),
                body,
                field_manager=FIELD_MANAGER,
            )
            if last is None or last[0] != replicas:
                logger.info("Applied warm pool %s/%s with %d pods", ns, pool_name(runtime), replicas)
            self._applied[runtime] = (replicas, now)

    def _gauges(self) -> None:
        for runtime in self.settings.warm_pool_sizes:
            free = sum(
                1
                for p in self.pods.values()
                if p.runtime == runtime
                and p.free
                and p.ready
                and not p.deleting
                and p.name not in self._taken
            )
            specialised = sum(1 for v in self.serving.values() for s in v if s.runtime == runtime)
            metrics.WARM_POOL_SIZE.labels(runtime, "free").set(free)
            metrics.WARM_POOL_SIZE.labels(runtime, "specialised").set(specialised)

    async def _maintain(self, interval: float) -> None:
        while True:
            now = time.monotonic()
            try:
                await self.apply_pools(now)
            except (ApiError, ValueError, aiohttp.ClientError, TimeoutError) as e:
                logger.warning("Could not apply the warm pools: %s", e)
            self.retire_once(now)
            self._gauges()
            await asyncio.sleep(interval)

    # ---- the pod watch ----------------------------------------------------------------------------------------

    async def _on_list(self, items: list[JSON]) -> None:
        self.pods = {p.name: p for p in map(PoolPod.from_body, items)}
        self._taken &= set(self.pods)
        self._deleting &= set(self.pods)

    async def _on_event(self, kind: str, body: JSON) -> None:
        pod = PoolPod.from_body(body)
        if kind == "DELETED":
            self.pods.pop(pod.name, None)
            self._taken.discard(pod.name)
            self._deleting.discard(pod.name)
            for serving in list(self.serving.values()):
                for s in list(serving):
                    if s.pod == pod.name:
                        self._forget(s)
        else:
            self.pods[pod.name] = pod

    async def run(self, *, interval: float = 1.0) -> None:
        """Watches the pool pods and keeps the pools applied and the specialised pods retired, until cancelled."""
        try:
            await asyncio.gather(
                list_and_watch(
                    self.kube,
                    resource_path("v1", "pods", namespace=self.settings.warm_pool_namespace),
                    params={"labelSelector": POOL_RUNTIME_LABEL},
                    on_list=self._on_list,
                    on_event=self._on_event,
                ),
                self._maintain(interval),
            )
        finally:
            for task in list(self._background):
                task.cancel()
