"""The Trigger reconcile: one idempotent path for create, update and resume.

A Trigger with a bucket, queue, stream or schedule source becomes a bridge: ServiceAccount, Role and
RoleBinding (least privilege, see ``resources/bridge.py``), an empty checkpoint ConfigMap, for bucket
notifications a token Secret and a webhook Service, and the bridge Deployment (0 replicas when disabled).
HTTP Triggers need nothing: the gateway watches them and serves the route.

Conditions the operator writes: ``Ready`` and ``FunctionMissing``. The bridge writes ``SourceReachable`` and the
delivery fields itself (server-side apply with its own field manager), so both keep their own. A running bridge
whose source does not answer (``SourceReachable=False``) is not Ready: ``Ready=False SourceUnreachable`` with the
bridge's message, so ``kubectl get trig`` never says READY True while nothing can be delivered.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Any

from kubelambda.api.v1alpha1 import API_VERSION
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.operator._owned import Outcome, OwnedWriter, conflict_problem, every_step
from kubelambda.resources import Problem
from kubelambda.resources import bridge as b
from kubelambda.resources import status as st

FUNCTION_MISSING = "FunctionMissing"
STATUS_FIELD_MANAGER = "kubelambda-operator-status"
"""The operator's field manager for its part of a Trigger's status (:func:`write_trigger_status`)."""
OPERATOR_CONDITIONS = (FUNCTION_MISSING, st.READY)
SOURCE_REACHABLE = "SourceReachable"  # written by the bridge (kubelambda.bridge._context)
SOURCE_UNREACHABLE = "SourceUnreachable"
BRIDGE_READY = ("True", "BridgeReady", "The bridge is running")


def with_source(ready: tuple[str, str, str], status: JSON) -> tuple[str, str, str]:
    """``ready`` as the bridge Deployment decides it, unless the bridge runs and says its source does not
    answer (``SourceReachable=False`` in ``status``): then ``Ready=False SourceUnreachable`` with its message."""
    reachable = st.find_condition(status, SOURCE_REACHABLE)
    if ready[1] != BRIDGE_READY[1] or reachable is None or reachable.get("status") != "False":
        return ready
    said = str(reachable.get("message") or "").strip()
    return (
        "False",
        SOURCE_UNREACHABLE,
        "The bridge runs but cannot reach its source" + (f": {said}" if said else ""),
    )


def source_changed(status: JSON) -> tuple[str, str, str] | None:
    """Ready after the bridge wrote ``SourceReachable``, when the bridge's state decides Ready (``BridgeReady``
    or ``SourceUnreachable``); None to leave it (starting, disabled, a missing Function, a conflict)."""
    ready = st.find_condition(status, st.READY)
    if ready is None or ready.get("reason") not in (BRIDGE_READY[1], SOURCE_UNREACHABLE):
        return None
    return with_source(BRIDGE_READY, status)


def bridge_ready(
    trigger: b.TriggerObject, deployment: JSON | None, status: JSON | None = None
) -> tuple[str, str, str]:
    """``(status, reason, message)`` of Ready from the bridge Deployment and (``status``: the Trigger's current
    status) the bridge's ``SourceReachable``."""
    if not trigger.spec.enabled:
        return "True", "Disabled", "The trigger is disabled (enabled: false); its bridge runs no pod"
    if deployment is None:
        return "False", "Reconciling", "The bridge Deployment does not exist yet"
    current = status
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return "False", "Reconciling", "The bridge Deployment has not seen its latest spec yet"
    if int(status.get("readyReplicas") or 0) >= 1 and int(status.get("updatedReplicas") or 0) >= 1:
        return with_source(BRIDGE_READY, current or {})
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "False", "ProgressDeadlineExceeded", cond.get("message", "")
    return "False", "BridgeStarting", "Waiting for the bridge pod to become ready"


def trigger_status(
    current: JSON,
    *,
    trigger: b.TriggerObject,
    function_exists: bool,
    deployment: JSON | None,
    now: str,
    conflict: Problem | None = None,
) -> JSON:
    """The operator's part of the status; the bridge's fields and conditions are carried over untouched.
    ``conflict``: an object with one of the bridge's names is not the Trigger's (Ready=False, NameConflict)."""
    conditions = list(current.get("conditions") or [])
    function_ref = f"{trigger.namespace}/{trigger.spec.function_name}"
    conditions = st.set_condition(
        conditions,
        type=FUNCTION_MISSING,
        status="False" if function_exists else "True",
        reason="FunctionFound" if function_exists else "FunctionNotFound",
        message=""
        if function_exists
        else f"Function {function_ref} does not exist; events are not delivered",
        generation=trigger.generation,
        now=now,
    )
    if conflict is not None:
        ready = ("False", conflict.reason, conflict.message)
    elif not function_exists:
        ready = ("False", "FunctionMissing", f"Function {function_ref} does not exist")
    elif trigger.needs_bridge:
        ready = bridge_ready(trigger, deployment, current)
    else:
        ready = ("True", "RouteConfigured", "The gateway serves this route")
    conditions = st.set_condition(
        conditions,
        type=st.READY,
        status=ready[0],
        reason=ready[1],
        message=ready[2],
        generation=trigger.generation,
        now=now,
    )
    return {
        **current,
        "observedGeneration": trigger.generation,
        "source": trigger.source,
        "conditions": sorted(conditions, key=lambda c: c["type"]),
    }


class TriggerReconciler(OwnedWriter):
    async def reconcile(self, body: JSON) -> Outcome:
        trigger = b.TriggerObject.from_body(body)
        current = dict(body.get("status") or {})
        outcome = Outcome(status={})
        function_path = resource_path(
            API_VERSION, "functions", namespace=trigger.namespace, name=trigger.spec.function_name
        )
        function_exists = await self.kube.get_or_none(function_path) is not None
        deployment: JSON | None = None
        # A generation not reconciled yet has its objects applied without reading them first (_owned.py), the
        # bridge Deployment too (its apply answers with its status, which Ready is decided from).
        direct = current.get("observedGeneration") != trigger.generation
        if trigger.needs_bridge:
            # RBAC and the checkpoint first, so the bridge's first requests are allowed and find their ConfigMap.
            # The Role must exist before its RoleBinding: the API server checks that the operator holds every
            # permission of a Role it binds, and a Role it cannot find fails that check (404).
            steps: list[Awaitable[Any]] = [
                # The ServiceAccount before them: a RoleBinding must never grant an account that is not ours.
                self._apply_in_order(
                    b.make_service_account(trigger),
                    b.make_role(trigger),
                    b.make_role_binding(trigger),
                    outcome=outcome,
                    direct=direct,
                ),
                self._apply(b.make_checkpoint(trigger), outcome, direct=direct),
            ]
            name = b.bridge_name(trigger.name)
            if trigger.notification_webhook:
                steps.append(self._apply(b.make_webhook_service(trigger), outcome, direct=direct))
                bucket = trigger.spec.bucket
                if bucket is not None and bucket.token_secret is None:
                    token = secrets.token_urlsafe(32)
                    steps.append(self._create_once(b.make_token_secret(trigger, token=token), outcome))
            else:
                steps.append(self._delete("Service", trigger.namespace, name, trigger.uid, outcome))
            bridge = b.make_bridge_deployment(trigger, settings=self.settings)
            unread = direct and self.policy_enforced
            if not unread:  # read first (a resume): the read goes with the other steps, the write after them
                steps.append(self._ours_or_none(bridge, outcome))
            results = await every_step(steps)
            if not outcome.conflicts:  # nothing runs under an account or a Role that is not ours
                if unread:
                    deployment = await self._apply(bridge, outcome, direct=True)
                else:
                    deployment = await self._apply_checked(bridge, results[-1][1], outcome)
        outcome.status = trigger_status(
            current,
            trigger=trigger,
            function_exists=function_exists,
            deployment=deployment,
            now=self.clock(),
            conflict=conflict_problem(outcome, "Trigger") if outcome.conflicts else None,
        )
        if outcome.conflicts:
            outcome.problem = conflict_problem(outcome, "Trigger")
            outcome.retry_after = self.settings.problem_retry_seconds
        elif not function_exists:
            ref = f"{trigger.namespace}/{trigger.spec.function_name}"
            outcome.problem = Problem(
                FUNCTION_MISSING, f"Function {ref} does not exist; events are not delivered"
            )
            outcome.retry_after = self.settings.problem_retry_seconds
        return outcome


def operator_part(status: JSON) -> JSON:
    """The fields of a Trigger's status the operator owns: ``observedGeneration``, ``source`` and its conditions
    (``FunctionMissing``, ``Ready``); the bridge owns the rest (``SourceReachable``, ``eventsDelivered``, ...)."""
    part: JSON = {k: status[k] for k in ("observedGeneration", "source") if k in status}
    part["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") in OPERATOR_CONDITIONS]
    return part


async def write_trigger_status(kube: KubeClient, namespace: str, name: str, status: JSON) -> None:
    """Writes the operator's part of ``status`` by server-side apply with its own field manager. The CRD keys
    the conditions list by ``type`` (``x-kubernetes-list-type: map``), so the bridge's conditions, applied by
    the bridge's manager, stay whatever the operator read: a merge patch replaced the whole list with the
    operator's copy, dropping a condition the bridge had written since that read. A deleted Trigger has
    nothing to update."""
    path = resource_path(API_VERSION, "triggers", namespace=namespace, name=name, subresource="status")
    body = {
        "apiVersion": API_VERSION,
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": namespace},
        "status": operator_part(status),
    }
    try:
        await kube.apply(path, body, field_manager=STATUS_FIELD_MANAGER)
    except ApiError as e:
        if e.status != 404:
            raise
