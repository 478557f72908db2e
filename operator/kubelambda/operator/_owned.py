"""What both reconcilers (Function, Trigger) do with the objects their owner owns: apply, create once, delete,
and remember what changed for the owner's Events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kubelambda import metrics
from kubelambda.jsonobj import JSON, utcnow
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.resources import Problem
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

# Kind → (apiVersion, plural) of every kind a Function or a Trigger owns.
PLURALS = {
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Deployment": ("apps/v1", "deployments"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
}


def owned_path(kind: str, namespace: str, name: str | None = None) -> str:
    """The API path of an owned object (of its collection without ``name``)."""
    api_version, plural = PLURALS[kind]
    return resource_path(api_version, plural, namespace=namespace, name=name)


def object_path(obj: JSON) -> str:
    meta = obj["metadata"]
    return owned_path(obj["kind"], meta["namespace"], meta["name"])


@dataclass
class Outcome:
    """What one reconcile decided: the new status, what changed (for Events) and what went wrong."""

    status: JSON
    created: list[str] = field(default_factory=list)  # "Deployment demo/hello"
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    problem: Problem | None = None
    retry_after: float | None = None  # a problem that may go away by itself (e.g. a missing ServiceAccount)


def _what(obj: JSON) -> str:
    return f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"


class OwnedWriter:
    """The writes of a reconciler, each counted in ``kubelambda_operator_api_writes_total`` and noted in the
    :class:`Outcome` when it changed something."""

    def __init__(
        self, kube: KubeClient, settings: OperatorSettings, *, clock: Callable[[], str] = utcnow
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock

    async def _apply(self, obj: JSON, outcome: Outcome, *, changed: bool = False) -> JSON:
        """Server-side apply; ``changed`` (the spec changed) reports an existing object as updated."""
        result, created = await self.kube.apply_reporting(object_path(obj), obj, field_manager=FIELD_MANAGER)
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        if created:
            outcome.created.append(_what(obj))
        elif changed:
            outcome.updated.append(_what(obj))
        return result

    async def _create_once(self, obj: JSON, outcome: Outcome) -> None:
        """Creates ``obj`` unless it exists (a generated token must never change under the store using it)."""
        try:
            await self.kube.create(owned_path(obj["kind"], obj["metadata"]["namespace"]), obj)
        except ApiError as e:
            if e.status != 409:
                raise
            return
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        outcome.created.append(_what(obj))

    async def _delete(self, kind: str, namespace: str, name: str, outcome: Outcome) -> None:
        if await self.kube.delete(owned_path(kind, namespace, name)) is not None:
            metrics.OPERATOR_API_WRITES.labels(kind).inc()
            outcome.deleted.append(f"{kind} {namespace}/{name}")
