"""NetworkPolicies: function pods admit only the gateway and the bridges; optional egress allow-list."""

from __future__ import annotations

from kubelambda.api.v1alpha1 import Network
from kubelambda.jsonobj import JSON
from kubelambda.resources.labels import BRIDGE_LABELS, GATEWAY_LABELS, labels, selector
from kubelambda.resources.names import (
    INVOKE_PORT,
    FunctionObject,
    egress_policy_name,
    ingress_policy_name,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server


def _metadata(fn: FunctionObject, name: str) -> JSON:
    return {
        "name": name,
        "namespace": fn.namespace,
        "labels": labels(fn),
        "ownerReferences": [fn.owner_reference()],
    }


def make_ingress_policy(fn: FunctionObject, *, system_namespace: str) -> JSON:
    """Only the gateway and the bridges (pods in the system namespace) may call the invoke port."""
    system = {"matchLabels": {NAMESPACE_NAME_LABEL: system_namespace}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(fn, ingress_policy_name(fn.name)),
        "spec": {
            "podSelector": {"matchLabels": selector(fn)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": system, "podSelector": {"matchLabels": dict(GATEWAY_LABELS)}},
                        {"namespaceSelector": system, "podSelector": {"matchLabels": dict(BRIDGE_LABELS)}},
                    ],
                    "ports": [{"port": INVOKE_PORT, "protocol": "TCP"}],
                }
            ],
        },
    }


def _egress_rules(network: Network) -> list[JSON]:
    rules: list[JSON] = []
    for rule in network.egress:
        out: JSON = {}
        peers = []
        for peer in rule.to:
            item: JSON = {}
            if peer.ip_block is not None:
                block: JSON = {"cidr": peer.ip_block.cidr}
                if peer.ip_block.except_:
                    block["except"] = list(peer.ip_block.except_)
                item["ipBlock"] = block
            if peer.namespace_selector is not None:
                item["namespaceSelector"] = {
                    "matchLabels": dict(sorted(peer.namespace_selector.match_labels.items()))
                }
            if peer.pod_selector is not None:
                item["podSelector"] = {"matchLabels": dict(sorted(peer.pod_selector.match_labels.items()))}
            peers.append(item)
        if peers:
            out["to"] = peers
        ports = []
        for port in rule.ports:
            entry: JSON = {"port": port.port, "protocol": port.protocol}
            if port.end_port is not None:
                entry["endPort"] = port.end_port
            ports.append(entry)
        if ports:
            out["ports"] = ports
        rules.append(out)
    if network.allow_dns:
        rules.append({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})
    return rules


def make_egress_policy(fn: FunctionObject) -> JSON | None:
    """Lambda's VPC configuration as an egress allow-list; None (no policy, unrestricted) without ``network``."""
    network = fn.spec.network
    if network is None:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(fn, egress_policy_name(fn.name)),
        "spec": {
            "podSelector": {"matchLabels": selector(fn)},
            "policyTypes": ["Egress"],
            "egress": _egress_rules(network),
        },
    }
