"""Labels on everything a Function owns; the gateway selects function pods and EndpointSlices by them."""

from __future__ import annotations

from kubelambda.resources.names import FunctionObject

FUNCTION_LABEL = "kubelambda.io/function"
"""Name of the Function; on Deployments, pods, Services (and so EndpointSlices), ConfigMaps, NetworkPolicies."""
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "kubelambda-operator"
GATEWAY_LABELS = {"app.kubernetes.io/name": "kubelambda", COMPONENT_LABEL: "gateway"}
"""Labels of the gateway's pods (in the system namespace): admitted to function pods."""
BRIDGE_LABELS = {"app.kubernetes.io/name": "kubelambda", COMPONENT_LABEL: "bridge"}
"""Labels of the trigger bridges' pods: admitted to function pods."""


def selector(fn: FunctionObject) -> dict[str, str]:
    """The Deployment's (immutable) selector and the Service's selector."""
    return {FUNCTION_LABEL: fn.name}


def labels(fn: FunctionObject) -> dict[str, str]:
    return dict(
        sorted(
            {
                "app.kubernetes.io/name": "kubelambda-function",
                "app.kubernetes.io/instance": fn.name,
                COMPONENT_LABEL: "function",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                FUNCTION_LABEL: fn.name,
            }.items()
        )
    )
