"""kubelambda.egress: which addresses the platform's requests for tenants may reach, and the function egress
policy's denied ranges (resources/networkpolicy.py)."""

from __future__ import annotations

import pytest

from kubelambda.api.v1alpha1.function import FunctionSpec
from kubelambda.egress import AddressPolicy, Refused, api_server_addresses, parse_cidrs
from kubelambda.resources.names import FunctionObject
from kubelambda.resources.networkpolicy import make_egress_policy

POLICY = AddressPolicy(api_server=api_server_addresses("https://10.96.0.1:443", {}), setting="X")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.9.9.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("10.96.0.1", "the Kubernetes API server's address"),
    ],
)
def test_refused_classes(address: str, why: str) -> None:
    refusal = POLICY.refusal(address)
    assert refusal is not None
    assert why in refusal
    assert refusal.endswith("(X can allow it)")


@pytest.mark.parametrize("address", ["10.0.0.7", "192.168.1.1", "93.184.215.14", "2606:4700::1"])
def test_other_addresses_pass(address: str) -> None:
    assert POLICY.refusal(address) is None


def test_allowed_ranges_pass_and_one_refused_address_refuses_the_host() -> None:
    allowing = AddressPolicy(allow=parse_cidrs(["127.0.0.2/32"]))
    assert allowing.refusal("127.0.0.2") is None
    assert allowing.refusal("127.0.0.1") is not None
    with pytest.raises(Refused, match=r"refused to connect to name \(127.0.0.1\)"):
        allowing.check("name", ["127.0.0.2", "127.0.0.1"])
    with pytest.raises(ValueError, match="'nope' is not an IP address or CIDR"):
        parse_cidrs(["nope"])


def fn(**spec: object) -> FunctionObject:
    full = {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": ""}}, **spec}
    return FunctionObject(
        name="f", namespace="ns", uid="u", generation=1, spec=FunctionSpec.model_validate(full)
    )


DENY = ["169.254.169.254/32", "fd00:ec2::254/128"]


def test_without_network_a_deny_list_is_an_egress_policy_of_everything_else() -> None:
    assert make_egress_policy(fn()) is None
    policy = make_egress_policy(fn(), deny=DENY)
    assert policy is not None
    assert policy["spec"]["egress"] == [
        {
            "to": [
                {"namespaceSelector": {}},
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}},
                {"ipBlock": {"cidr": "::/0", "except": ["fd00:ec2::254/128"]}},
            ]
        }
    ]


def test_listed_blocks_lose_the_denied_ranges_and_any_destination_is_narrowed() -> None:
    network = {
        "egress": [
            {"to": [{"ipBlock": {"cidr": "169.254.0.0/16"}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]},
            {"ports": [{"port": 443}]},
        ]
    }
    policy = make_egress_policy(fn(network=network), deny=DENY)
    assert policy is not None
    first, anywhere, dns = policy["spec"]["egress"]
    assert first["to"] == [
        {"ipBlock": {"cidr": "169.254.0.0/16", "except": ["169.254.169.254/32"]}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
    ]
    assert anywhere["to"][1] == {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}
    assert "to" not in dns  # DNS stays "port 53 anywhere"
