"""The kopf side: handlers, settings, storages and the operator task.

Handlers are thin: they parse, call :class:`FunctionReconciler`, and hand the status to kopf's own patch
(one status write, merged with kopf's bookkeeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubelambda import metrics
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.jsonobj import JSON, utcnow
from kubelambda.kube import ApiError, KubeClient, Login, resource_path
from kubelambda.operator._cleanup import follow_held_trigger
from kubelambda.operator._owned import NAME_CONFLICT, Outcome
from kubelambda.operator._pace import AdaptiveLimit, backoff_seconds, is_transient
from kubelambda.operator._reconcile import FunctionReconciler
from kubelambda.operator._trigger import (
    TriggerReconciler,
    bridge_ready,
    source_changed,
    write_trigger_status,
)
from kubelambda.ownership import OWNERSHIP_POLICY, ownership_policy_enforced
from kubelambda.resources import FUNCTION_LABEL
from kubelambda.resources import status as st
from kubelambda.resources.bridge import TRIGGER_LABEL, TriggerObject, bridge_name, bridge_to_wake
from kubelambda.settings import OperatorSettings

log = logging.getLogger("kubelambda.operator")
FUNCTIONS = (GROUP, VERSION, "functions")
TRIGGERS = (GROUP, VERSION, "triggers")
# Ready reasons that come from the Deployment (and so may be refreshed when it changes), not from a Problem.
_DEPLOYMENT_REASONS = {
    "ScaledToZero",
    "InstancesReady",
    "InstancesStarting",
    "ProgressDeadlineExceeded",
    "Reconciling",
}


class CompactDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's last-handled spec, kept in ``status.kopf`` with inline code replaced by its checksum.

    Inline code may be up to 1 MiB: stored whole it would double the object (an annotation could not hold it
    at all). A checksum still tells kopf that the code changed. Keeping it in status, beside the Function's
    own status, makes the handler's bookkeeping and the status one write.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        # kopf deep-copies the whole body it is given and then drops the status and the metadata but labels and
        # annotations: give it only what it keeps (it builds this on every watch event of every Function, and
        # the status and managedFields are most of a Function). Extra fields may be anywhere: the whole body then.
        if not extra_fields:
            meta = body.get("metadata") or {}
            kept = {k: meta[k] for k in ("labels", "annotations") if k in meta}
            slim = {k: v for k, v in body.items() if k not in ("metadata", "status")}
            body = kopf.Body(cast(kopf.RawBody, {**slim, "metadata": kept}))
        essence = super().build(body=body, extra_fields=extra_fields)  # a deep copy of its own
        spec: Any = essence.get("spec") or {}
        code = spec.get("code") or {}
        if isinstance(code.get("inline"), dict):
            digest = hashlib.sha256(json.dumps(code["inline"], sort_keys=True).encode()).hexdigest()
            code["inline"] = {"sha256": digest}
        return essence


@dataclass
class Context:
    """What handlers share, passed as kopf's ``memo``."""

    settings: OperatorSettings
    login: Login
    kube: KubeClient
    reconciler: FunctionReconciler
    triggers: TriggerReconciler
    slots: AdaptiveLimit  # reconciles running at once (at most settings.reconcile_workers)


def configure(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"  # unused: no handler needs a finalizer
    settings.persistence.diffbase_storage = CompactDiffBase(name="kopf", field="status.kopf.lastHandledSpec")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    # kopf would post an Event per handler run; the reconcile posts its own, naming what changed.
    settings.posting.level = logging.WARNING
    # No kopf worker limit: kopf holds every object's worker until all objects listed at start are indexed,
    # and a worker over the limit never starts, so more objects than the limit at start (a restart, a burst
    # while the first lists run) deadlocked the operator. The reconciles are bounded by Context.slots instead.
    settings.queueing.worker_limit = None
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    if ours.peering:
        settings.peering.name = ours.peering
        settings.peering.mandatory = True
        settings.peering.clusterwide = not ours.namespaces
        # kopf pauses a peer for a higher priority, and pauses *every* peer while two have the same one: the
        # oldest replica wins, so a rolling update keeps the active operator until it stops. Microseconds, not
        # milliseconds: a Deployment's two replicas started at once on an idle node run the same start-up in
        # step and may read the same millisecond, and then neither ever resumes (the likely cause of a CI failure:
        # test_helm's two replicas, neither reconciling for 60 s).
        settings.peering.priority = -time.time_ns() // 1_000
    else:
        settings.peering.standalone = True


def _post_events(body: kopf.Body, outcome: Outcome) -> None:
    for verb, items in (
        ("Created", outcome.created),
        ("Updated", outcome.updated),
        ("Deleted", outcome.deleted),
    ):
        if items:
            kopf.event(body, type="Normal", reason=verb, message=f"{verb} {', '.join(items)}")
    if outcome.problem is not None:
        kopf.event(body, type="Warning", reason=outcome.problem.reason, message=outcome.problem.message)


# A reconcile whose object's reads and writes were each retried (_pace.ATTEMPTS) and still met an API server too
# busy for them is retried whole after a random wait of this order (its 2nd back-off step and more).
RECONCILE_RETRY_STEP = 3


async def _reconcile(
    kind: str,
    reconcile: Callable[[JSON], Awaitable[Outcome]],
    body: kopf.Body,
    patch: kopf.Patch,
    slots: AdaptiveLimit,
    write_status: Callable[[JSON], Awaitable[None]] | None = None,
) -> None:
    """One reconcile through kopf: metrics, Events, the status as kopf's own patch (or, given ``write_status``,
    its changes written by it), retries as kopf errors."""
    started = time.perf_counter()
    current = dict(body.get("status") or {})
    try:
        outcome = await reconcile(dict(body))
        changes = st.status_changes(current, outcome.status)
        if write_status is not None and changes:
            await write_status(outcome.status)
            changes = {}
    except ApiError as e:
        metrics.OPERATOR_RECONCILES.labels(kind, "error").inc()
        if e.status in (400, 403, 422):
            # Retrying will not help; say so on the object instead of looping.
            kopf.event(body, type="Warning", reason="ApplyFailed", message=str(e))
            raise kopf.PermanentError(str(e)) from e
        if e.status == 409:  # a write that raced ours: read and apply again at once
            raise kopf.TemporaryError(str(e), delay=1) from e
        if is_transient(e):
            slots.overloaded()
        raise kopf.TemporaryError(str(e), delay=backoff_seconds(RECONCILE_RETRY_STEP)) from e
    except (TimeoutError, aiohttp.ClientError) as e:
        # An API server too busy to answer in time: again soon, like a 5xx (kopf's default would be 60 s).
        metrics.OPERATOR_RECONCILES.labels(kind, "error").inc()
        slots.overloaded()
        raise kopf.TemporaryError(
            f"the API server did not answer: {e!r}", delay=backoff_seconds(RECONCILE_RETRY_STEP)
        ) from e
    finally:
        metrics.OPERATOR_RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
    slots.succeeded()
    metrics.OPERATOR_RECONCILES.labels(kind, "problem" if outcome.problem else "ok").inc()
    _post_events(body, outcome)
    for key, value in changes.items():
        patch.status[key] = value
    if outcome.retry_after is not None:
        # A problem that may go away by itself (a missing ServiceAccount or Function): look again later.
        raise kopf.TemporaryError(
            outcome.problem.message if outcome.problem else "retry", delay=outcome.retry_after
        )


async def _patch_status_changes(
    ctx: Context, *, kind: str, plural: str, namespace: str, name: str, current: JSON, new: JSON
) -> None:
    """Writes what changed between ``current`` and ``new`` status; a deleted object has nothing to update."""
    changes = st.status_changes(current, new)
    if not changes:
        return
    if plural == "triggers":  # its conditions are shared with the bridge: the operator applies its own
        await write_trigger_status(ctx.kube, namespace, name, new)
        metrics.OPERATOR_API_WRITES.labels(kind).inc()
        return
    path = resource_path(f"{GROUP}/{VERSION}", plural, namespace=namespace, name=name, subresource="status")
    try:
        await ctx.kube.patch(path, {"status": changes})
    except ApiError as e:
        if e.status != 404:
            raise
    metrics.OPERATOR_API_WRITES.labels(kind).inc()


def connection_info(login: Login) -> kopf.ConnectionInfo:
    """kopf's view of ``login`` (the token re-read each time kopf asks, as the kubelet rotates it)."""
    return kopf.ConnectionInfo(
        server=login.server,
        ca_data=login.ca_pem,
        token=login.current_token(),
        certificate_data=login.cert_pem,
        private_key_data=login.key_pem,
    )


def _status_of(body: JSON) -> JSON:
    return dict(body.get("status") or {})


# What the Function index keeps of a Function's status: what its refreshes read and write (_function_refresh,
# _function_pod_problem). Not the rest (codeSha256, invokeUrl, kopf's lastHandledSpec: the spec again), held for
# every Function for the operator's life.
_INDEXED_STATUS = ("observedGeneration", "conditions", "instances")


def _indexed_status(body: JSON) -> JSON:
    status = body.get("status") or {}
    return {k: status[k] for k in _INDEXED_STATUS if k in status}


def _ready_status(current: JSON, ready: tuple[str, str, str], **changes: Any) -> JSON:
    """``current`` with ``changes`` and the Ready condition set to ``(status, reason, message)``."""
    status, reason, message = ready
    conditions = st.set_condition(
        list(current.get("conditions") or []),
        type=st.READY,
        status=status,
        reason=reason,
        message=message,
        generation=int(current["observedGeneration"]),
        now=utcnow(),
    )
    return {**current, **changes, "conditions": sorted(conditions, key=lambda c: c["type"])}


def _function_refresh(owner: JSON, deployment: JSON) -> JSON | None:
    """A Function's status after its Deployment changed: ``instances`` and Ready, unless a Problem decides Ready."""
    ready = st.find_condition(owner, st.READY)
    if ready is not None and ready.get("reason") not in _DEPLOYMENT_REASONS | st.POD_REASONS:
        return None  # a Problem decides Ready until the next reconcile
    decided = st.ready(problem=None, deployment=deployment)
    if decided[1] == "InstancesStarting" and ready is not None and ready.get("reason") in st.POD_REASONS:
        return None  # still starting: the stuck pod's reason says more (_function_pod_changed)
    return _ready_status(owner, decided, instances=st.instances(deployment))


def _function_pod_problem(owner: JSON, pod: JSON) -> JSON | None:
    """A Function's status when one of its pods is stuck waiting (st.POD_REASONS, e.g. RuntimeUnavailable) while
    the Function waits for instances: Ready=False with the pod's reason and message; None to leave it."""
    problem = st.pod_problem(pod)
    ready = st.find_condition(owner, st.READY)
    if problem is None or ready is None or ready.get("reason") not in {"InstancesStarting"} | st.POD_REASONS:
        return None  # no stuck pod; or ready, scaled to zero, or a Problem of the operator's own
    return _ready_status(owner, ("False", *problem))


def _trigger_refresh(owner: JSON, deployment: JSON) -> JSON | None:
    """A Trigger's status after its bridge Deployment changed: Ready, unless the Function is missing."""
    current = _status_of(owner)
    ready = st.find_condition(current, st.READY)
    if ready is None or ready.get("reason") in ("FunctionMissing", NAME_CONFLICT):
        return (
            None  # the reconcile decides until the Function exists and no object of another's is in the way
        )
    return _ready_status(current, bridge_ready(TriggerObject.from_body(owner), deployment, current))


def _trigger_source_refresh(body: JSON) -> JSON | None:
    """A Trigger's status after its bridge wrote ``SourceReachable``: Ready follows it (``SourceUnreachable``
    and back) while the bridge runs; None to leave it."""
    current = _status_of(body)
    if current.get("observedGeneration") is None:
        return None
    ready = source_changed(current)
    return None if ready is None else _ready_status(current, ready)


@dataclass(frozen=True)
class _Owner:
    """A kind whose objects own Deployments, and how its status follows theirs."""

    resource: tuple[str, str, str]  # group, version, plural
    kind: str
    label: str  # on the Deployments, naming the owner
    keep: Callable[[JSON], JSON]  # what the index keeps of an owner
    status: Callable[[JSON], JSON]  # the owner's status, from what the index keeps
    refresh: Callable[[JSON, JSON], JSON | None]  # (kept, Deployment) → new status, or None to leave it
    reconciler: Callable[[Context], Callable[[JSON], Awaitable[Outcome]]]
    # Writes the reconcile's status (kube, namespace, name, status) instead of kopf's merge patch: a Trigger's
    # conditions are shared with its bridge (server-side apply, each its own field manager).
    write_status: Callable[[KubeClient, str, str, JSON], Awaitable[None]] | None = None


_OWNERS = (
    _Owner(
        FUNCTIONS,
        kind="Function",
        label=FUNCTION_LABEL,
        keep=_indexed_status,  # not the spec (inline code may be 1 MiB), and only the status the refreshes use
        status=dict,
        refresh=_function_refresh,
        reconciler=lambda ctx: ctx.reconciler.reconcile,
    ),
    _Owner(
        TRIGGERS,
        kind="Trigger",
        label=TRIGGER_LABEL,
        keep=dict,  # the whole Trigger: its Ready needs the spec
        status=_status_of,
        refresh=_trigger_refresh,
        reconciler=lambda ctx: ctx.triggers.reconcile,
        write_status=write_trigger_status,
    ),
)


def _register_owner(registry: kopf.OperatorRegistry, owner: _Owner) -> None:
    """The reconcile of ``owner``'s objects, an index of them, and the refresh of their status when a
    Deployment they own changes."""
    kind = owner.kind.lower()
    index_id = f"{kind}_index"

    async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        ctx: Context = memo["ctx"]
        writer = owner.write_status
        write = None
        if writer is not None:
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]

            async def write(status: JSON) -> None:
                await writer(ctx.kube, namespace, name, status)

        async with ctx.slots:
            await _reconcile(owner.kind, owner.reconciler(ctx), body, patch, ctx.slots, write)

    # The id kopf persists in status.kopf.progress: the one it derived when this was a nested function of
    # build_registry, so objects with a retry in progress keep it across an upgrade.
    handler_id = f"build_registry.<locals>.reconcile_{kind}"
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(*owner.resource, id=handler_id, registry=registry)(reconcile)

    def index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], JSON]:
        return {(namespace or "", name): owner.keep(dict(body))}

    kopf.index(*owner.resource, id=index_id, registry=registry)(index)

    async def deployment_changed(
        event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        if event.get("type") == "DELETED":
            return
        namespace, name = body["metadata"]["namespace"], body["metadata"]["labels"][owner.label]
        found = kwargs[index_id].get((namespace, name))
        if not found:
            return
        kept = next(iter(found))
        current = owner.status(kept)
        if current.get("observedGeneration") is None:
            return  # the reconcile has not written a status yet; it will, from this Deployment
        new = owner.refresh(kept, dict(body))
        if new is not None:
            await _patch_status_changes(
                memo["ctx"],
                kind=owner.kind,
                plural=owner.resource[2],
                namespace=namespace,
                name=name,
                current=current,
                new=new,
            )

    kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={owner.label: kopf.PRESENT},
        id=f"{kind}_deployment_changed",
        registry=registry,
    )(deployment_changed)


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        ctx: Context = memo["ctx"]
        return connection_info(ctx.login)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ctx: Context = memo["ctx"]
        configure(settings, ctx.settings)

    for owner in _OWNERS:
        _register_owner(registry, owner)

    @kopf.on.event(*TRIGGERS, id="trigger_source_changed", registry=registry)
    async def trigger_source_changed(
        event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        """The bridge wrote SourceReachable (its own field manager): Ready follows it (_trigger_source_refresh)."""
        if event.get("type") == "DELETED":
            return
        if bridge_to_wake(
            dict(body)
        ):  # a deleted, disabled PostgreSQL stream: its bridge drops its slot first
            with contextlib.suppress(ApiError):
                await memo["ctx"].kube.patch(
                    resource_path(
                        "apps/v1",
                        "deployments",
                        namespace=body["metadata"]["namespace"],
                        name=bridge_name(body["metadata"]["name"]),
                    ),
                    {"spec": {"replicas": 1}},
                )
        # A Trigger held by its bridge's cleanup finalizer in a namespace being deleted (operator/_cleanup.py).
        await follow_held_trigger(memo["ctx"].kube, dict(body))
        new = _trigger_source_refresh(dict(body))
        if new is not None:
            await _patch_status_changes(
                memo["ctx"],
                kind="Trigger",
                plural="triggers",
                namespace=body["metadata"]["namespace"],
                name=body["metadata"]["name"],
                current=_status_of(dict(body)),
                new=new,
            )

    @kopf.on.event("", "v1", "pods", labels={FUNCTION_LABEL: kopf.PRESENT}, registry=registry)
    async def function_pod_changed(
        event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        """A function pod stuck waiting gives its reason to the Function's Ready (_function_pod_problem)."""
        if event.get("type") == "DELETED":
            return
        namespace, name = body["metadata"]["namespace"], body["metadata"]["labels"][FUNCTION_LABEL]
        found = kwargs["function_index"].get((namespace, name))
        if not found:
            return
        current = next(iter(found))
        if current.get("observedGeneration") is None:
            return
        new = _function_pod_problem(current, dict(body))
        if new is not None:
            await _patch_status_changes(
                memo["ctx"],
                kind="Function",
                plural="functions",
                namespace=namespace,
                name=name,
                current=current,
                new=new,
            )

    return registry


async def run(
    settings: OperatorSettings,
    *,
    login: Login,
    ready_flag: asyncio.Event | threading.Event | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Runs the operator until ``stop_flag`` is set (or forever).

    kopf treats every task started after it as its own and cancels them when it stops, so a program that runs
    it beside other work (a test) runs it in a thread of its own with ``threading.Event`` flags, as kopf's
    ``KopfRunner`` does.
    """
    # Started before kopf, which cancels every task started after it when it stops.
    served = await _serve_metrics(settings.metrics_address) if settings.metrics_address else None
    kube = login.client()
    slots = AdaptiveLimit(settings.reconcile_workers)
    reconciler, triggers = FunctionReconciler(kube, settings), TriggerReconciler(kube, settings)
    reconciler.overloaded = triggers.overloaded = slots.overloaded
    # Until the API server enforces the ownership policy (a fresh install may start the operator before the API
    # server has loaded it), every object is read before it is applied; looked at again every POLICY_RECHECK s.
    watcher = asyncio.create_task(_follow_ownership_policy(kube, (reconciler, triggers)))
    ctx = Context(
        settings=settings, login=login, kube=kube, reconciler=reconciler, triggers=triggers, slots=slots
    )
    try:
        await kopf.operator(
            registry=build_registry(),
            memo=kopf.Memo(ctx=ctx),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=settings.peering is None,
            peering_name=settings.peering,
            liveness_endpoint=settings.liveness_endpoint,
            ready_flag=ready_flag,
            stop_flag=stop_flag,
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if ctx.reconciler.log_streams is not None:
            await ctx.reconciler.log_streams.close()
        await kube.close()
        if served is not None:
            await served.cleanup()


POLICY_RECHECK = 30.0  # seconds between looks at the ownership policy while it is not in effect


async def _follow_ownership_policy(
    kube: KubeClient, writers: tuple[FunctionReconciler, TriggerReconciler]
) -> None:
    """Sets the writers' ``policy_enforced`` once the API server enforces :data:`OWNERSHIP_POLICY` (at once if it
    already does), warning while it does not."""
    warned = False
    while True:
        try:
            enforced = await ownership_policy_enforced(kube)
        except (ApiError, TimeoutError, aiohttp.ClientError) as e:
            log.warning("could not tell whether %s is in effect: %s", OWNERSHIP_POLICY, e)
            enforced = False
        if enforced:
            for writer in writers:
                writer.policy_enforced = True
            if warned:
                log.info(
                    "%s is in effect: owned objects are applied without reading them first", OWNERSHIP_POLICY
                )
            return
        if not warned:
            log.warning(
                "the API server does not enforce the ValidatingAdmissionPolicy %s (helm/kubelambda/files/"
                "owned-objects-policy.yaml): every owned object is read before it is applied",
                OWNERSHIP_POLICY,
            )
            warned = True
        await asyncio.sleep(POLICY_RECHECK)


async def _serve_metrics(address: str) -> web.AppRunner:
    """``GET /metrics`` on ``address`` (host:port): the operator's own metrics (:data:`metrics.OPERATOR_VIEW`)."""

    async def view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.OPERATOR_VIEW), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = address.rsplit(":", 1)
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
