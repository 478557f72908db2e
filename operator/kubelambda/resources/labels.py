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


def owned_labels(*, app: str, component: str, owner_label: str, owner: str) -> dict[str, str]:
    """The labels of what a kubelambda object owns: the recommended ``app.kubernetes.io/*`` ones and
    ``owner_label: owner`` (sorted)."""
    return dict(
        sorted(
            {
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/instance": owner,
                COMPONENT_LABEL: component,
                "app.kubernetes.io/managed-by": MANAGED_BY,
                owner_label: owner,
            }.items()
        )
    )


def labels(fn: FunctionObject) -> dict[str, str]:
    return owned_labels(
        app="kubelambda-function", component="function", owner_label=FUNCTION_LABEL, owner=fn.name
    )
