"""What both reconcilers (Function, Trigger) do with the objects their owner owns: apply, create once, delete,
and remember what changed for the owner's Events.

Never an object of someone else's (docs/security.md): an existing object with the derived name that does not
name the owner in its ``ownerReferences`` is neither applied, nor deleted, nor used. The owner gets
``Ready=False`` with reason ``NameConflict`` naming it, and since it never became an owner of that object,
deleting it leaves the object alone.

Two ways to tell, chosen per apply. **Direct** (:meth:`OwnedWriter._apply` with ``direct``, for a generation not
reconciled yet, when the API server enforces the policy of :mod:`kubelambda.ownership`): the object is applied
without reading it first; the ValidatingAdmissionPolicy ``helm/kubelambda/files/owned-objects-policy.yaml``
refuses, in the API server and at the moment of the write, an apply of ours that would add an owner to an
existing object not already naming it, and that refusal is the conflict (race-free: admission runs on the object
the write replaces).
**Read first** (a resume of a reconciled generation, or no policy): the object is read, judged, and written only
when it differs, with its ``resourceVersion`` as a precondition, so one replaced between the read and the write
fails (409) instead of being taken over.

Only what differs is written: every applied object carries the digest of what was applied
(:data:`APPLIED_ANNOTATION`), and an object whose live state already holds everything the operator would apply,
digest included, is not written again (a resume, or a retry after a failure elsewhere, writes nothing for it).
The digest catches what a containment check cannot: a field the operator no longer sets. A read or a write the
API server is too busy for is retried on its own (:func:`kubelambda.operator._pace.retrying`), not the whole
reconcile.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubelambda import metrics
from kubelambda.jsonobj import JSON, utcnow
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.operator._pace import is_transient, retrying
from kubelambda.ownership import refused_as_not_ours
from kubelambda.resources import Problem
from kubelambda.settings import FIELD_MANAGER, OperatorSettings

T = TypeVar("T")

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


async def every_step(steps: list[Awaitable[Any]]) -> list[Any]:
    """The results of ``steps``, run together and each to its end; then the first failure is raised. Not
    ``asyncio.gather``'s way (the first failure raised while the others still run): a step left running behind a
    failed reconcile races its retry, and kopf raises such a stray task's error when it stops (a test's operator
    ended with a ServiceAccount's 403 from a namespace being deleted)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


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
    conflicts: list[str] = field(default_factory=list)  # objects with our names that are not ours


NAME_CONFLICT = "NameConflict"


def owner_uid(obj: JSON) -> str:
    """The uid of the owner ``obj`` was built for (every object we build names its owner as controller)."""
    refs = obj["metadata"].get("ownerReferences") or []
    return str(refs[0]["uid"]) if refs else ""


def is_ours(existing: JSON, uid: str) -> bool:
    """Whether ``existing`` names the owner ``uid`` in its ownerReferences (so it is that owner's)."""
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    return bool(uid) and any(ref.get("uid") == uid for ref in refs)


def conflict_problem(outcome: Outcome, owner_kind: str) -> Problem:
    """The ``NameConflict`` problem of ``outcome``'s conflicts."""
    objects = ", ".join(outcome.conflicts)
    return Problem(
        NAME_CONFLICT,
        f"{objects} already exists and is not this {owner_kind}'s: it is left unchanged; "
        f"rename the {owner_kind} or remove that object",
    )


APPLIED_ANNOTATION = "kubelambda.io/applied-sha256"


def with_digest(obj: JSON) -> JSON:
    """``obj`` annotated with the digest of itself (:data:`APPLIED_ANNOTATION`)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    meta = obj["metadata"]
    annotations = {**(meta.get("annotations") or {}), APPLIED_ANNOTATION: digest}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def contains(live: Any, want: Any) -> bool:
    """Whether ``live`` holds everything in ``want``: every key of a mapping (extra keys in ``live``, such as
    the API server's defaults, are fine), lists item by item with the same length, other values equal. A key
    missing in ``live`` whose wanted value is empty (false, 0, "", [], {}) counts as held: the API server leaves
    out such values of fields it does not keep explicitly (a Service's ``publishNotReadyAddresses: false``)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            contains(live[k], v) if k in live else _empty(v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(contains(a, b) for a, b in zip(live, want, strict=True))
        )
    return bool(live == want)


def stored_form(obj: JSON) -> JSON:
    """``obj`` as the API server keeps it, where that differs from how it is written: a Secret's ``stringData``
    is kept base64-encoded in ``data``."""
    if "stringData" not in obj:
        return obj
    encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in obj["stringData"].items()}
    rest = {k: v for k, v in obj.items() if k != "stringData"}
    return {**rest, "data": {**(obj.get("data") or {}), **encoded}}


def _empty(value: Any) -> bool:
    return value is not None and not value


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
        self.overloaded: Callable[[], None] = lambda: None  # told of each transient answer (_pace)
        # Whether the API server refuses our applies onto objects of someone else's (kubelambda.ownership): only
        # then may an apply skip the read (``direct``). Set once the operator has looked (_kopf.run).
        self.policy_enforced = False
        # Requests of the reconcilers in flight to the API server at once (settings.api_requests_in_flight).
        self._in_flight = asyncio.Semaphore(settings.api_requests_in_flight)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        async def limited() -> T:
            async with self._in_flight:
                return await call()

        return await retrying(limited, overloaded=self.overloaded)

    def _conflict(self, obj: JSON, outcome: Outcome) -> None:
        what = _what(obj)
        if what not in outcome.conflicts:
            outcome.conflicts.append(what)

    async def _ours_or_none(self, obj: JSON, outcome: Outcome) -> tuple[bool, JSON | None]:
        """``(usable, existing)``: the object now at ``obj``'s path, and False (noted in ``outcome.conflicts``)
        when it exists and is not of ``obj``'s owner."""
        path = object_path(obj)
        existing: JSON | None = await self._retrying(lambda: self.kube.get_or_none(path))
        if existing is not None and not is_ours(existing, owner_uid(obj)):
            self._conflict(obj, outcome)
            return False, existing
        return True, existing

    async def _apply(
        self, obj: JSON, outcome: Outcome, *, changed: bool = False, direct: bool = False
    ) -> JSON | None:
        """Server-side apply; ``changed`` (the spec changed) reports an existing object as updated. None, and
        nothing written, when an object that is not ours has that name. ``direct`` (honoured only while
        :attr:`policy_enforced`): without reading it first (module docstring). Otherwise a write the API server
        was too busy for is read and judged again before it is retried (it may have been applied after all)."""
        if direct and self.policy_enforced:
            try:
                return await self._retrying(lambda: self._apply_direct(obj, outcome, changed=changed))
            except ApiError as e:
                if is_transient(e):
                    raise
                # Refused otherwise (say 422: an object of someone else's merged with ours is invalid, and the
                # API server validates before admission runs the policy): read and judge it, as without the policy.

        async def attempt() -> JSON | None:
            usable, existing = await self._ours_or_none(obj, outcome)
            if not usable:
                return None
            return await self._apply_checked(obj, existing, outcome, changed=changed)

        # Not self._retrying: the read and the write each take a slot of their own.
        return await retrying(attempt, overloaded=self.overloaded)

    async def _apply_direct(
        self, obj: JSON, outcome: Outcome, *, changed: bool = False, force: bool = True
    ) -> JSON | None:
        """One server-side apply of ``obj`` without a read; None when the ownership policy refused it (an object of
        someone else's has that name: noted in ``outcome.conflicts``)."""
        try:
            result, created = await self.kube.apply_reporting(
                object_path(obj), with_digest(obj), field_manager=FIELD_MANAGER, force=force
            )
        except ApiError as e:
            if not refused_as_not_ours(e):
                raise
            metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
            self._conflict(obj, outcome)
            return None
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        self._note(obj, outcome, created=created, changed=changed)
        return result

    def _note(self, obj: JSON, outcome: Outcome, *, created: bool, changed: bool) -> None:
        if created:
            outcome.created.append(_what(obj))
        elif changed:
            outcome.updated.append(_what(obj))

    async def _apply_in_order(self, *objs: JSON, outcome: Outcome, direct: bool = False) -> None:
        """Applies ``objs`` one after the other, stopping at one that is not ours (what follows depends on it)."""
        for obj in objs:
            if await self._apply(obj, outcome, direct=direct) is None:
                return

    async def _apply_checked(
        self, obj: JSON, existing: JSON | None, outcome: Outcome, *, changed: bool = False
    ) -> JSON:
        """:meth:`_apply` of an object already read as ours (``existing``) or missing (None); nothing is written
        when ``existing`` already holds all of ``obj`` (``existing`` is returned)."""
        body = with_digest(obj)
        if existing is not None and contains(existing, stored_form(body)):
            return existing
        if existing is not None:
            # Precondition: the object we read as ours is the one we write (409 if it was replaced meanwhile).
            version = existing["metadata"].get("resourceVersion")
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        async with self._in_flight:
            result, created = await self.kube.apply_reporting(
                object_path(obj), body, field_manager=FIELD_MANAGER
            )
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        self._note(obj, outcome, created=created, changed=changed)
        return result

    async def _create_once(self, obj: JSON, outcome: Outcome) -> None:
        """Creates ``obj`` unless it exists (a generated token must never change under the store using it); an
        existing one that is not ours is a conflict."""
        try:
            async with self._in_flight:
                await self.kube.create(owned_path(obj["kind"], obj["metadata"]["namespace"]), obj)
        except ApiError as e:
            if e.status != 409:
                raise
            await self._ours_or_none(obj, outcome)
            return
        metrics.OPERATOR_API_WRITES.labels(obj["kind"]).inc()
        outcome.created.append(_what(obj))

    async def _delete(self, kind: str, namespace: str, name: str, uid: str, outcome: Outcome) -> None:
        """Deletes the object if it is of the owner ``uid``; another's is left alone (and not a conflict: the
        spec does not ask for it)."""
        path = owned_path(kind, namespace, name)
        existing = await self._retrying(lambda: self.kube.get_or_none(path))
        if existing is None or not is_ours(existing, uid):
            return
        try:
            async with self._in_flight:
                deleted = await self.kube.delete(path, uid=existing["metadata"]["uid"])
        except ApiError as e:
            if e.status == 409:  # replaced since the read: not the object we read as ours
                return
            raise
        if deleted is not None:
            metrics.OPERATOR_API_WRITES.labels(kind).inc()
            outcome.deleted.append(f"{kind} {namespace}/{name}")
