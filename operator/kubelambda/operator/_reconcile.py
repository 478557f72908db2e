"""The Function reconcile: one idempotent path for create, update and resume.

Steps, in order: judge what only the operator can judge (runtime image, code size, execution role),
apply the owned objects with server-side apply, remove objects the spec no longer asks for, then compute
the status. Nothing is remembered between calls: the cluster is the memory.

A generation not reconciled yet (a new Function, a spec change) has its objects applied without reading them
first (``direct``, _owned.py: the API server's ownership policy refuses an object of someone else's); the
Deployment too when the Function is new. A resume of a reconciled generation reads each object and writes only
what differs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from typing import Any

import aiohttp

from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, resource_path
from kubelambda.logstore import LogStreams, Retention
from kubelambda.operator._owned import Outcome, OwnedWriter, conflict_problem, every_step
from kubelambda.operator._pace import ATTEMPTS, backoff_seconds, is_transient
from kubelambda.resources import (
    CodeTooLarge,
    FunctionObject,
    Problem,
    code_sha256,
    function_status,
    make_agent_secret,
    make_code_configmap,
    make_deployment,
    make_egress_policy,
    make_ingress_policy,
    make_scale_role,
    make_scale_role_binding,
    make_service,
)
from kubelambda.resources import names as n
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

# An object the API server refused is retried after APPLY_RETRY_MIN s, then after as long as the Function has
# been failing (so each wait about doubles), at most APPLY_RETRY_MAX s: stateless, from the Ready condition.
APPLY_RETRY_MIN = 5.0
APPLY_RETRY_MAX = 300.0
APPLY_FAILED = "ApplyFailed"


class ApplyRefused(Exception):
    """The API server refused to write one of the Function's objects."""

    def __init__(self, what: str, error: ApiError) -> None:
        message = " ".join(error.message.split())
        super().__init__(f"{what}: the API server answered {error.status} {error.reason}: {message}")
        self.error = error


def apply_retry_seconds(current: JSON, now: str) -> float:
    """How long to wait before applying again, from how long the Function has been ``ApplyFailed``."""
    ready = next((c for c in current.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("reason") != APPLY_FAILED or not ready.get("lastTransitionTime"):
        return APPLY_RETRY_MIN
    try:
        since = dt.datetime.fromisoformat(str(ready["lastTransitionTime"]).replace("Z", "+00:00"))
        failing = (dt.datetime.fromisoformat(now.replace("Z", "+00:00")) - since).total_seconds()
    except ValueError:
        return APPLY_RETRY_MIN
    return min(APPLY_RETRY_MAX, max(APPLY_RETRY_MIN, failing))


def invoke_url(settings: OperatorSettings, fn: FunctionObject) -> str:
    """The Invoke API URL; ``<namespace>/<name>`` is the gateway's FunctionName for a namespaced Function."""
    return f"{settings.gateway_url.rstrip('/')}/2015-03-31/functions/{fn.namespace}/{fn.name}/invocations"


class FunctionReconciler(OwnedWriter):
    log_streams: LogStreams | None = None  # made on first use (settings.log_nats_url)

    async def _judge(self, fn: FunctionObject) -> tuple[Problem | None, float | None]:
        """Problems the API server cannot see: ``(problem, retry after seconds)``."""
        if fn.spec.code.image is None and self.settings.image_for(fn.spec.runtime) is None:
            return Problem("RuntimeUnknown", f"No runtime image is configured for {fn.spec.runtime}"), None
        try:
            make_code_configmap(fn)
        except CodeTooLarge as e:
            return Problem("CodeTooLarge", str(e)), None
        sa = fn.spec.service_account_name
        if sa is not None:
            path = resource_path("v1", "serviceaccounts", namespace=fn.namespace, name=sa)
            if await self.kube.get_or_none(path) is None:
                return Problem(
                    "ServiceAccountMissing", f"ServiceAccount {fn.namespace}/{sa} does not exist"
                ), self.settings.problem_retry_seconds
        return None, None

    async def reconcile(self, body: JSON) -> Outcome:
        fn = FunctionObject.from_body(body)
        current = dict(body.get("status") or {})
        # A spec change (not a resume of the same generation) may leave objects the spec no longer asks for.
        spec_changed = current.get("observedGeneration") not in (None, fn.generation)
        outcome = Outcome(status={})
        problem, retry = await self._judge(fn)
        outcome.problem, outcome.retry_after = problem, retry

        deployment: JSON | None = None
        try:
            deployment = await self._apply_all(
                fn,
                outcome,
                spec_changed=spec_changed,
                direct=current.get("observedGeneration") != fn.generation,
                new=current.get("observedGeneration") is None,
            )
        except ApplyRefused as e:
            if e.error.status == 409:
                # A write raced ours (the applies carry the read's resourceVersion): nothing is wrong with the
                # Function, so its Ready stays as it is and the reconcile runs again at once (_kopf._reconcile).
                # As ApplyFailed it read as not Ready and the gateway refused invocations (seen in CI).
                raise e.error from e
            # Whatever else the API server said (a 422 on an object in the way, a 403, a 500), the Function says
            # it as Ready=False, and the operator tries again with a growing back-off: the cause may go away.
            outcome.problem = problem = Problem(APPLY_FAILED, str(e))
            outcome.retry_after = apply_retry_seconds(current, self.clock())
        problem = outcome.problem  # a NameConflict found while applying
        outcome.status = function_status(
            current,
            generation=fn.generation,
            problem=problem,
            deployment=deployment,
            code_sha256=code_sha256(fn.spec.code) if problem is None else current.get("codeSha256"),
            invoke_url=invoke_url(self.settings, fn),
            now=self.clock(),
        )
        return outcome

    async def _apply(
        self, obj: JSON, outcome: Outcome, *, changed: bool = False, direct: bool = False
    ) -> JSON | None:
        try:
            return await super()._apply(obj, outcome, changed=changed, direct=direct)
        except ApiError as e:
            meta = obj["metadata"]
            raise ApplyRefused(f"{obj['kind']} {meta['namespace']}/{meta['name']}", e) from e

    async def _apply_all(
        self, fn: FunctionObject, outcome: Outcome, *, spec_changed: bool, direct: bool, new: bool
    ) -> JSON | None:
        """Applies the owned objects (unless a problem forbids); the Deployment as applied, if it was. ``direct``:
        without reading them first (module docstring); ``new``: the Function was never reconciled."""
        problem = outcome.problem
        # The Deployment's replicas depend on whether it exists (_apply_deployment): read it unless it is new.
        new_deployment = new and direct and self.policy_enforced
        deployment: JSON | None = None
        if problem is None or problem.reason == "ServiceAccountMissing":
            # The other objects do not depend on each other: apply them at once. The Deployment comes after
            # them, so its pods never start before their code, nor before the policy that admits traffic.
            steps: list[Awaitable[Any]] = []
            configmap = make_code_configmap(fn)
            if configmap is not None:
                steps.append(self._apply(configmap, outcome, changed=spec_changed, direct=direct))
            elif spec_changed:
                steps.append(
                    self._delete("ConfigMap", fn.namespace, n.code_configmap_name(fn.name), fn.uid, outcome)
                )
            agent_secret = make_agent_secret(fn, settings=self.settings)
            if agent_secret is not None:
                steps.append(self._apply(agent_secret, outcome, changed=False, direct=direct))
            steps.append(self._apply(make_service(fn), outcome, changed=False, direct=direct))
            # The gateway's right to scale this Deployment only (it holds no cluster-wide scale): the Role first,
            # since the API server checks that the operator holds what a Role it binds grants.
            binding = make_scale_role_binding(
                fn,
                gateway_account=self.settings.gateway_service_account,
                system_namespace=self.settings.system_namespace,
            )
            steps.append(self._apply_in_order(make_scale_role(fn), binding, outcome=outcome, direct=direct))
            ingress = make_ingress_policy(
                fn,
                system_namespace=self.settings.system_namespace,
                metrics_namespaces=self.settings.metrics_namespaces,
            )
            steps.append(self._apply(ingress, outcome, changed=False, direct=direct))
            egress = make_egress_policy(fn, deny=self.settings.function_egress_deny_cidrs)
            if egress is not None:
                steps.append(self._apply(egress, outcome, changed=spec_changed, direct=direct))
            elif spec_changed:
                steps.append(
                    self._delete(
                        "NetworkPolicy", fn.namespace, n.egress_policy_name(fn.name), fn.uid, outcome
                    )
                )
            if problem is None and not new_deployment:
                image = self.settings.image_for(fn.spec.runtime) or ""
                steps.append(
                    self._ours_or_none(make_deployment(fn, image=image, settings=self.settings), outcome)
                )
            results = await every_step(steps)
            if problem is None and not outcome.conflicts:
                await self._ensure_log_stream(fn.namespace)
                try:
                    deployment = await self._apply_deployment(
                        fn,
                        outcome,
                        changed=spec_changed,
                        existing=None if new_deployment else results[-1][1],
                        unread=new_deployment,
                    )
                except ApiError as e:  # the Deployment's apply (the other applies raise ApplyRefused)
                    raise ApplyRefused(f"Deployment {fn.namespace}/{n.deployment_name(fn.name)}", e) from e
            if outcome.conflicts:
                # Nothing of someone else's is changed, and no pod starts half-configured.
                outcome.problem = conflict_problem(outcome, "Function")
                outcome.retry_after = self.settings.problem_retry_seconds
        return deployment

    async def _ensure_log_stream(self, namespace: str) -> None:
        """The namespace's log stream, before the first pod ships to it (docs/logs.md); never fails the
        reconcile (a log store that is down costs log records, counted by the agents, not the Function)."""
        url = self.settings.log_store_url
        if url is None:
            return
        if self.log_streams is None:
            self.log_streams = LogStreams(
                url,
                Retention(
                    max_age_seconds=self.settings.log_retention_seconds,
                    max_bytes=self.settings.log_max_bytes,
                    by_namespace=dict(self.settings.log_retention_by_namespace),
                ),
            )
        await self.log_streams.ensure(namespace)

    async def _apply_deployment(
        self, fn: FunctionObject, outcome: Outcome, *, changed: bool, existing: JSON | None, unread: bool
    ) -> JSON | None:
        """The Deployment, ``existing`` (already read as ours) or new; None when an object of someone else's has
        its name (``outcome.conflicts``). ``unread``: not read, taken for new and applied directly, without
        force, so that an existing one whose replicas the autoscaler took answers 409 (and is then read).
        A write that raced another (409) or that the API server was too busy for (_pace) is read and judged
        again before it is retried."""
        image = self.settings.image_for(fn.spec.runtime) or ""
        body = make_deployment(fn, image=image, settings=self.settings)
        for attempt in range(ATTEMPTS):
            if unread:
                unread = False
                held = make_deployment(
                    fn, image=image, settings=self.settings, replicas=fn.spec.scaling.min_instances
                )
                try:
                    async with self._in_flight:
                        return await self._apply_direct(held, outcome, changed=changed, force=False)
                except (ApiError, TimeoutError, aiohttp.ClientError) as e:
                    # 409: it exists and the autoscaler owns its replicas; another refusal (a 422 of an object of
                    # someone else's merged with ours): read and judge it, then apply as to an existing one.
                    if not isinstance(e, ApiError) or is_transient(e):
                        if not is_transient(e):
                            raise
                        self.overloaded()
                        await asyncio.sleep(backoff_seconds(attempt))
                usable, existing = await self._ours_or_none(body, outcome)
                if not usable:
                    return None
                continue
            if existing is None:
                # A new Deployment starts at minInstances, in one write: the creator owns every field it sets,
                # so the operator owns replicas until the autoscaler's first scale write takes them (an update
                # operation takes the fields it changes).
                held = make_deployment(
                    fn, image=image, settings=self.settings, replicas=fn.spec.scaling.min_instances
                )
            elif operator_owns_replicas(existing):
                # The operator still owns replicas (the autoscaler has not scaled since the create): apply them
                # as they are, under the read's resourceVersion (_apply_checked), so that the apply neither
                # drops them (the Deployment would go to 1) nor undoes a scale written after the read (409:
                # read again). An update or a restart writes nothing more than without them.
                replicas = int(existing["spec"].get("replicas", 0))
                held = {**body, "spec": {**body["spec"], "replicas": replicas}}
            else:
                held = body
            try:
                return await self._apply_checked(held, existing, outcome, changed=changed)
            except (ApiError, TimeoutError, aiohttp.ClientError) as e:
                raced = isinstance(e, ApiError) and e.status == 409
                if not (raced or is_transient(e)) or attempt == ATTEMPTS - 1:
                    raise
                if not raced:
                    self.overloaded()
                    await asyncio.sleep(backoff_seconds(attempt))
                usable, existing = await self._ours_or_none(body, outcome)
                if not usable:  # replaced meanwhile by an object of someone else's (outcome.conflicts)
                    if isinstance(e, ApiError):
                        raise ApplyRefused(
                            f"Deployment {fn.namespace}/{n.deployment_name(fn.name)}", e
                        ) from e
                    raise
        raise AssertionError("unreachable")


def operator_owns_replicas(live: JSON) -> bool:
    """Whether the operator's applied fields of a live Deployment include ``spec.replicas``."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            fields = entry.get("fieldsV1") or {}
            if "f:replicas" in (fields.get("f:spec") or {}):
                return True
    return False
