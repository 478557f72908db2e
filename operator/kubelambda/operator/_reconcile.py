"""The Function reconcile: one idempotent path for create, update and resume.

Steps, in order: judge what only the operator can judge (runtime image, code size, execution role),
apply the owned objects with server-side apply, remove objects the spec no longer asks for, then compute
the status. Nothing is remembered between calls: the cluster is the memory.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubelambda import metrics
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources import (
    CodeTooLarge,
    FunctionObject,
    Problem,
    code_sha256,
    function_status,
    initial_scale,
    make_code_configmap,
    make_deployment,
    make_egress_policy,
    make_ingress_policy,
    make_service,
)
from kubelambda.resources import names as n
from kubelambda.settings import FIELD_MANAGER, SCALE_FIELD_MANAGER, OperatorSettings

JSON = dict[str, Any]
_PLURALS = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "Deployment": ("apps/v1", "deployments"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
}


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def invoke_url(settings: OperatorSettings, fn: FunctionObject) -> str:
    """The Invoke API URL; ``<namespace>/<name>`` is the gateway's FunctionName for a namespaced Function."""
    return f"{settings.gateway_url.rstrip('/')}/2015-03-31/functions/{fn.namespace}/{fn.name}/invocations"


def object_path(obj: JSON) -> str:
    api_version, plural = _PLURALS[obj["kind"]]
    meta = obj["metadata"]
    return resource_path(api_version, plural, namespace=meta["namespace"], name=meta["name"])


@dataclass
class Outcome:
    """What one reconcile decided: the new status, what changed (for Events) and what went wrong."""

    status: JSON
    created: list[str] = field(default_factory=list)  # "Deployment demo/hello"
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    problem: Problem | None = None
    retry_after: float | None = None  # a problem that may go away by itself (e.g. a missing ServiceAccount)


class FunctionReconciler:
    def __init__(
        self, kube: KubeClient, settings: OperatorSettings, *, clock: Callable[[], str] = utcnow
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock

    async def _apply(self, obj: JSON, outcome: Outcome, *, changed: bool) -> JSON:
        result, created = await self.kube.apply_reporting(object_path(obj), obj, field_manager=FIELD_MANAGER)
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if created:
            outcome.created.append(what)
        elif changed:
            outcome.updated.append(what)
        return result

    async def _delete(self, kind: str, namespace: str, name: str, outcome: Outcome) -> None:
        api_version, plural = _PLURALS[kind]
        gone = await self.kube.delete(resource_path(api_version, plural, namespace=namespace, name=name))
        if gone is not None:
            metrics.OPERATOR_API_WRITES.labels(kind).inc()
            outcome.deleted.append(f"{kind} {namespace}/{name}")

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
                ), 30.0
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
        if problem is None or problem.reason == "ServiceAccountMissing":
            configmap = make_code_configmap(fn)
            if configmap is not None:
                await self._apply(configmap, outcome, changed=spec_changed)
            elif spec_changed:
                await self._delete("ConfigMap", fn.namespace, n.code_configmap_name(fn), outcome)
            await self._apply(make_service(fn), outcome, changed=False)
            ingress = make_ingress_policy(fn, system_namespace=self.settings.system_namespace)
            await self._apply(ingress, outcome, changed=False)
            egress = make_egress_policy(fn)
            if egress is not None:
                await self._apply(egress, outcome, changed=spec_changed)
            elif spec_changed:
                await self._delete("NetworkPolicy", fn.namespace, n.egress_policy_name(fn), outcome)
        if problem is None:
            deployment = await self._apply_deployment(fn, outcome, changed=spec_changed)
        outcome.status = function_status(
            current,
            generation=fn.generation,
            problem=problem,
            deployment=deployment,
            code_sha256=code_sha256(fn) if problem is None else current.get("codeSha256"),
            invoke_url=invoke_url(self.settings, fn),
            now=self.clock(),
        )
        return outcome

    async def _apply_deployment(self, fn: FunctionObject, outcome: Outcome, *, changed: bool) -> JSON:
        image = self.settings.image_for(fn.spec.runtime) or ""
        path = resource_path("apps/v1", "deployments", namespace=fn.namespace, name=n.deployment_name(fn))
        if await self.kube.get_or_none(path) is not None:
            return await self._apply(
                make_deployment(fn, image=image, settings=self.settings), outcome, changed=changed
            )
        # A new Deployment starts at minInstances, but replicas must never be the operator's (the autoscaler
        # owns them). So: create with replicas, hand them to the autoscaler's field manager, and re-apply
        # without them, which drops the operator's claim now rather than on its next (restart) apply.
        body = make_deployment(
            fn, image=image, settings=self.settings, replicas=fn.spec.scaling.min_instances
        )
        await self._apply(body, outcome, changed=changed)
        await self.kube.apply(path, initial_scale(fn), field_manager=SCALE_FIELD_MANAGER)
        metrics.OPERATOR_API_WRITES.labels("Deployment").inc()
        final, _ = await self.kube.apply_reporting(
            path, make_deployment(fn, image=image, settings=self.settings), field_manager=FIELD_MANAGER
        )
        metrics.OPERATOR_API_WRITES.labels("Deployment").inc()
        return final
