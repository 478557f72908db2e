"""The gateway's right to scale one Function's Deployment: a Role pinned to it by ``resourceNames`` and its
RoleBinding to the gateway's ServiceAccount, both owned by the Function (docs/security.md, "RBAC, per component").

The gateway holds no cluster-wide ``deployments/scale``: it may scale exactly the Deployments of Functions, each
through the Role its Function carries, which the garbage collector removes with the Function.
"""

from __future__ import annotations

from kubelambda.jsonobj import JSON
from kubelambda.resources.labels import labels
from kubelambda.resources.names import FunctionObject, deployment_name, scale_role_name


def _meta(fn: FunctionObject) -> JSON:
    return {
        "name": scale_role_name(fn.name),
        "namespace": fn.namespace,
        "labels": labels(fn),
        "ownerReferences": [fn.owner_reference()],
    }


def make_scale_role(fn: FunctionObject) -> JSON:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(fn),
        "rules": [
            {
                "apiGroups": ["apps"],
                "resources": ["deployments/scale"],
                "resourceNames": [deployment_name(fn.name)],
                "verbs": ["get", "patch"],
            }
        ],
    }


def make_scale_role_binding(fn: FunctionObject, *, gateway_account: str, system_namespace: str) -> JSON:
    """Binds :func:`make_scale_role` to ServiceAccount ``<system_namespace>/<gateway_account>``."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(fn),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": scale_role_name(fn.name),
        },
        "subjects": [{"kind": "ServiceAccount", "name": gateway_account, "namespace": system_namespace}],
    }
