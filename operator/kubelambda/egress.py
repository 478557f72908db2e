"""Where the platform's own outbound requests made for a tenant may go (docs/security.md, "Outbound requests").

A tenant chooses some URLs the platform itself fetches or posts to: ``url`` destinations of Event invocations
(the async worker, in the gateway's process or its own) and ``code.archive.url`` / ``code.s3.endpoint`` (the
``fetch-code`` init container). Those must not reach what only the platform should: loopback, link-local (the
cloud metadata address ``169.254.169.254`` among them), the unspecified address, well-known metadata addresses
and the Kubernetes API server's addresses. A platform setting (``allow``: CIDRs) lets chosen ranges through, e.g.
loopback on a development machine.

Every address a host name resolves to is checked, and the connection is made to a checked address (a name that
resolves differently on the second lookup cannot slip through).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = tuple(
    ipaddress.ip_network(c)
    for c in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "fd00:ec2::254/128",  # AWS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
    )
)
"""Metadata addresses outside the link-local range are refused by name; the chart denies function pods egress
to these too (``networkPolicy.functionEgressDeny``)."""


class Refused(Exception):
    """The URL's host is (or resolves to) an address the platform does not send tenants' requests to."""


def parse_cidrs(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``values`` as networks; a ValueError names the bad one."""
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR (e.g. 127.0.0.0/8)") from None
    return tuple(out)


def api_server_addresses(server: str | None, env: Mapping[str, str] = os.environ) -> frozenset[IPAddress]:
    """The API server's addresses as this process knows them: ``KUBERNETES_SERVICE_HOST`` (in a pod) and the
    host of ``server`` (the kubeconfig's URL) when it is an address or resolves to one."""
    hosts = [env.get("KUBERNETES_SERVICE_HOST", "")]
    if server:
        hosts.append(urllib.parse.urlsplit(server).hostname or "")
    found: set[IPAddress] = set()
    for host in filter(None, hosts):
        try:
            found.add(ipaddress.ip_address(host))
        except ValueError:
            try:
                found.update(ipaddress.ip_address(str(a[4][0])) for a in socket.getaddrinfo(host, None))
            except OSError:
                continue
    return frozenset(found)


@dataclass(frozen=True)
class AddressPolicy:
    allow: tuple[IPNetwork, ...] = ()
    """Ranges let through although they fall in a refused class."""
    api_server: frozenset[IPAddress] = field(default_factory=frozenset)
    setting: str = "the platform's allowed CIDRs"
    """How refusals name the setting that would allow an address."""

    def refusal(self, address: str) -> str | None:
        """Why ``address`` is refused, or None when it may be reached."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow):
            return None
        if ip in self.api_server:
            kind = "the Kubernetes API server's address"
        elif any(ip in net for net in METADATA):
            kind = "a cloud metadata address"
        elif ip.is_loopback:
            kind = "a loopback address"
        elif ip.is_link_local:
            kind = "a link-local address"
        elif ip.is_unspecified:
            kind = "the unspecified address"
        elif ip.is_multicast:
            kind = "a multicast address"
        else:
            return None
        return f"{ip} is {kind} ({self.setting} can allow it)"

    def check(self, host: str, addresses: Iterable[str]) -> list[str]:
        """``addresses`` (what ``host`` resolved to), or :class:`Refused` when any of them is refused."""
        found = list(addresses)
        if not found:
            raise Refused(f"{host} resolves to no address")
        for address in found:
            why = self.refusal(address)
            if why is not None:
                shown = host if host == address else f"{host} ({address})"
                raise Refused(f"refused to connect to {shown}: {why}")
        return found

    def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """Blocking: the checked (family, address) pairs of ``host``; :class:`Refused` if any is refused."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise Refused(f"cannot resolve {host}: {e}") from None
        pairs = [(int(info[0]), str(info[4][0])) for info in infos]
        self.check(host, [a for _, a in pairs])
        return pairs
