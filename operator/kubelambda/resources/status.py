"""A Function's status from what the reconcile found: pure, with the clock passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubelambda.jsonobj import JSON

READY = "Ready"


@dataclass(frozen=True)
class Problem:
    """Something only the operator can judge, shown as ``Ready=False`` with this reason (and an Event)."""

    reason: str  # CodeTooLarge, RuntimeUnknown, ServiceAccountMissing, ...
    message: str


def instances(deployment: JSON | None) -> JSON:
    """``{desired, ready}`` of a Deployment (zeros when there is none yet)."""
    if deployment is None:
        return {"desired": 0, "ready": 0}
    return {
        "desired": int(deployment.get("spec", {}).get("replicas") or 0),
        "ready": int((deployment.get("status") or {}).get("readyReplicas") or 0),
    }


def ready(*, problem: Problem | None, deployment: JSON | None) -> tuple[str, str, str]:
    """``(status, reason, message)`` of the Ready condition.

    A function scaled to zero is Ready (its first invocation starts an instance, as in Lambda); one that
    wants instances is Ready once one of them is.
    """
    if problem is not None:
        return "False", problem.reason, problem.message
    if deployment is None:
        return "Unknown", "Reconciling", "The Deployment does not exist yet"
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "False", "ProgressDeadlineExceeded", str(cond.get("message", ""))
    counts = instances(deployment)
    if counts["desired"] == 0:
        return "True", "ScaledToZero", "No instances are running; the first invocation starts one"
    if counts["ready"] > 0:
        return "True", "InstancesReady", f"{counts['ready']} of {counts['desired']} instances are ready"
    return "False", "InstancesStarting", f"0 of {counts['desired']} instances are ready"


def find_condition(status: JSON, type: str) -> JSON | None:
    """The condition ``type`` of ``status``, if any."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type), None)


# Waiting reasons of a function pod's container that do not clear by themselves, shown as the Function's Ready
# reason while it waits for instances: the local node's RuntimeUnavailable (no interpreter of the runtime's
# version, docs/local-cluster.md), ImageNotRunnableLocally and CommandNotFoundLocally; a kubelet's image and
# configuration errors.
POD_REASONS = frozenset(
    {
        "RuntimeUnavailable",
        "ImageNotRunnableLocally",
        "CommandNotFoundLocally",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def pod_problem(pod: JSON) -> tuple[str, str] | None:
    """``(reason, message)`` of the first container of ``pod`` stuck waiting for a reason in :data:`POD_REASONS`."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in POD_REASONS:
            return str(waiting["reason"]), f"pod {name}: {waiting.get('message') or waiting['reason']}"
    return None


def set_condition(
    conditions: list[JSON],
    *,
    type: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[JSON]:
    """``conditions`` with ``type`` set; ``lastTransitionTime`` moves only when ``status`` changes."""
    previous = find_condition({"conditions": conditions}, type)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    updated = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
    return [c for c in conditions if c.get("type") != type] + [updated]


def function_status(
    current: JSON,
    *,
    generation: int,
    problem: Problem | None,
    deployment: JSON | None,
    code_sha256: str | None,
    invoke_url: str,
    now: str,
) -> JSON:
    """The whole new status; equal to ``current`` when nothing changed (so no write is needed)."""
    status, reason, message = ready(problem=problem, deployment=deployment)
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": set_condition(
            list(current.get("conditions") or []),
            type=READY,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        ),
        "instances": instances(deployment),
        "invokeUrl": invoke_url,
    }
    if code_sha256 is not None:
        out["codeSha256"] = code_sha256
    return out


def status_changes(current: JSON, new: JSON) -> JSON:
    """The merge patch from ``current`` to ``new`` (top-level keys only; lists are replaced whole)."""
    patch: JSON = {k: v for k, v in new.items() if current.get(k) != v}
    for key in current:
        if key not in new and key in ("codeSha256",):
            patch[key] = None
    return patch
