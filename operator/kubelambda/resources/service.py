"""The function's Service: not for routing (the gateway routes to pod IPs) but for its EndpointSlices."""

from __future__ import annotations

from kubelambda.jsonobj import JSON
from kubelambda.resources.labels import labels, selector
from kubelambda.resources.names import INVOKE_PORT, INVOKE_PORT_NAME, FunctionObject, service_name


def make_service(fn: FunctionObject) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(fn.name),
            "namespace": fn.namespace,
            "labels": labels(fn),
            "ownerReferences": [fn.owner_reference()],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(fn),
            "ports": [
                {
                    "name": INVOKE_PORT_NAME,
                    "port": INVOKE_PORT,
                    "targetPort": INVOKE_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
            # The activator must see pods as soon as they are ready, and only then.
            "publishNotReadyAddresses": False,
        },
    }
