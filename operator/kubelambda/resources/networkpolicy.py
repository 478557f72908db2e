"""NetworkPolicies: function pods admit only the gateway and the bridges; optional egress allow-list; no egress to
the platform's denied ranges (the chart: cloud metadata addresses)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

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


def make_ingress_policy(
    fn: FunctionObject, *, system_namespace: str, metrics_namespaces: Sequence[str] = ()
) -> JSON:
    """Only the gateway and the bridges (pods in the system namespace) may call the invoke port, and pods of
    ``metrics_namespaces`` (Prometheus's) may scrape it: ``/metrics`` is served there too, and the agent asks
    every caller of ``/invoke`` and ``/metrics`` for its token anyway (docs/security.md)."""
    system = {"matchLabels": {NAMESPACE_NAME_LABEL: system_namespace}}
    scrapers: list[JSON] = [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}} for ns in metrics_namespaces
    ]
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
                        *scrapers,
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


def _everywhere_but(deny: Sequence[str]) -> list[JSON]:
    """Peers for "any address but ``deny``": every pod, and each IP family's whole range minus its denied CIDRs."""
    peers: list[JSON] = [{"namespaceSelector": {}}]
    for everything in ("0.0.0.0/0", "::/0"):
        family = ipaddress.ip_network(everything).version
        block: JSON = {"cidr": everything}
        excepted = [c for c in deny if ipaddress.ip_network(c, strict=False).version == family]
        if excepted:
            block["except"] = excepted
        peers.append({"ipBlock": block})
    return peers


def _without(rules: list[JSON], deny: Sequence[str]) -> list[JSON]:
    """``rules`` that never allow ``deny``: an ipBlock containing a denied range gets it in ``except``; a rule to
    any destination (no ``to``) is narrowed to :func:`_everywhere_but`."""
    out: list[JSON] = []
    for rule in rules:
        rule = dict(rule)
        if "to" not in rule:
            is_dns = all(p.get("port") == 53 for p in rule.get("ports") or [{}])
            if not is_dns:
                rule["to"] = _everywhere_but(deny)
        else:
            peers = []
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block is not None:
                    net = ipaddress.ip_network(block["cidr"], strict=False)
                    inside = [
                        c
                        for c in deny
                        if (d := ipaddress.ip_network(c, strict=False)).version == net.version
                        and d.subnet_of(net)  # type: ignore[arg-type]
                        and c not in block.get("except", [])
                    ]
                    if inside:
                        peer = {**peer, "ipBlock": {**block, "except": [*block.get("except", []), *inside]}}
                peers.append(peer)
            rule["to"] = peers
        out.append(rule)
    return out


def make_egress_policy(fn: FunctionObject, *, deny: Sequence[str] = ()) -> JSON | None:
    """Lambda's VPC configuration as an egress allow-list, never reaching ``deny`` (the operator's
    ``KUBELAMBDA_FUNCTION_EGRESS_DENY_CIDRS``); without ``network``, everything but ``deny`` (no policy at all,
    unrestricted, when ``deny`` is empty)."""
    network = fn.spec.network
    if network is None:
        if not deny:
            return None
        rules: list[JSON] = [{"to": _everywhere_but(deny)}]
    else:
        rules = _without(_egress_rules(network), deny) if deny else _egress_rules(network)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(fn, egress_policy_name(fn.name)),
        "spec": {
            "podSelector": {"matchLabels": selector(fn)},
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    }
