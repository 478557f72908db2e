"""The ValidatingAdmissionPolicy that keeps the operator's applies off objects of someone else's, and whether the
API server enforces it (docs/security.md, "Objects the operator owns").

``helm/kubelambda/files/owned-objects-policy.yaml`` refuses an apply by the operator's field manager that would
give an existing object an owner of kubelambda.io it did not already name. The operator applies without reading
first only while it is enforced (operator/_owned.py); ``kubelambda dev up`` and the tests install it and wait
for it here, without importing the operator.
"""

from __future__ import annotations

import asyncio

from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.settings import FIELD_MANAGER

# The ValidatingAdmissionPolicy (and its binding) that refuses the operator's apply onto an object of someone
# else's (above): ``helm/kubelambda/files/owned-objects-policy.yaml``.
OWNERSHIP_POLICY = "kubelambda-owned-objects"  # as dev up and the tests apply it
POLICY_FILE = ("helm", "kubelambda", "files", "owned-objects-policy.yaml")  # under kubelambda.bundle.root()


# How the policy's refusal begins (its messageExpression), whatever the policy is named (the chart names it
# <release>-owned-objects).
REFUSAL = "NameConflict (kubelambda.io): "


def refused_as_not_ours(error: ApiError) -> bool:
    """Whether ``error`` is :data:`OWNERSHIP_POLICY` refusing an apply onto an object of someone else's."""
    return error.status == 403 and "ValidatingAdmissionPolicy" in error.message and REFUSAL in error.message


# The object :func:`ownership_policy_enforced` asks about: one every namespace has, never owned by a Function.
PROBE_NAMESPACE = "default"
PROBE_CONFIGMAP = "kube-root-ca.crt"


async def ownership_policy_enforced(kube: KubeClient) -> bool:
    """Whether the API server refuses our applies onto objects of someone else's (:data:`OWNERSHIP_POLICY` is
    installed and in effect): a dry-run apply claiming ``default/kube-root-ca.crt`` for a Function, which the
    policy refuses and which changes nothing either way."""
    probe = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": PROBE_CONFIGMAP,
            "namespace": PROBE_NAMESPACE,
            "ownerReferences": [
                {
                    "apiVersion": "kubelambda.io/v1alpha1",
                    "kind": "Function",
                    "name": "ownership-probe",
                    "uid": "00000000-0000-0000-0000-000000000000",
                }
            ],
        },
    }
    try:
        await kube.request_with_status(
            "PATCH",
            resource_path("v1", "configmaps", namespace=PROBE_NAMESPACE, name=PROBE_CONFIGMAP),
            body=probe,
            params={"fieldManager": FIELD_MANAGER, "force": "true", "dryRun": "All"},
            content_type="application/apply-patch+yaml",
        )
    except ApiError as e:
        if refused_as_not_ours(e):
            return True
        raise
    return False


async def wait_ownership_policy(kube: KubeClient, *, timeout: float = 60.0) -> None:
    """Waits until the API server enforces :data:`OWNERSHIP_POLICY` just applied (it loads policies
    asynchronously); raises TimeoutError naming it after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await ownership_policy_enforced(kube):
        if loop.time() > deadline:
            raise TimeoutError(f"the API server did not enforce {OWNERSHIP_POLICY} within {timeout:.0f} s")
        await asyncio.sleep(0.2)
