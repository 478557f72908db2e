"""Pod addresses on the local node: every pod gets an address of its own on this machine's loopback device.

Why not 127.0.x.y: the API server refuses loopback addresses in Endpoints and EndpointSlices
(``may not be in the loopback range (127.0.0.0/8, ::1/128)``), so Services would have no endpoints.
When it may (root, or CAP_NET_ADMIN, and ``ip`` from iproute2), the node therefore adds a /32 from the pod
CIDR (default 10.244.0.0/16, kind's pod subnet) to ``lo`` per pod: reachable only from this machine, like
127/8, but a valid endpoint. Without that privilege it falls back to 127.0.x.y and warns that Services will
have no endpoints; pods still run and answer on their addresses.

Addresses it added are recorded in ``<state-dir>/pod-addresses.json`` and removed on stop, and on the next
start after a crash.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_POD_CIDR = "10.244.0.0/16"


def can_alias() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class PodAddresses:
    """Hands out pod addresses; ``mode`` is ``alias`` (addresses added to lo) or ``loopback`` (127.0.x.y)."""

    def __init__(self, state_dir: Path, *, mode: str = "auto", cidr: str = DEFAULT_POD_CIDR) -> None:
        if mode == "auto":
            mode = "alias" if can_alias() else "loopback"
        if mode not in ("alias", "loopback"):
            raise ValueError(f"pod network mode must be auto, alias or loopback, not {mode!r}")
        if mode == "alias" and not can_alias():
            raise ValueError("pod network mode 'alias' needs root (CAP_NET_ADMIN) and the `ip` command")
        self.mode = mode
        self.network = ipaddress.ip_network(cidr if mode == "alias" else "127.0.0.0/8")
        self._record = state_dir / "pod-addresses.json"
        self._candidates: Iterator[str] = self._iterate()
        self._released: list[str] = []
        self._used: set[str] = set()
        self._node_addresses: set[str] = set()
        self._lock = asyncio.Lock()
        if mode == "loopback":
            logger.warning(
                "Pods get 127.0.x.y addresses: without root the node cannot add pod addresses to lo, and the "
                "API server refuses loopback addresses in EndpointSlices, so Services will have no endpoints"
            )

    def _iterate(self) -> Iterator[str]:
        # Pods count up from the bottom of the range, node addresses down from the top.
        for host in self.network.hosts():
            text = str(host)
            if text in self._node_addresses:
                continue
            if self.mode == "loopback" and text.startswith("127.0.0."):
                continue  # the host's own 127.0.0.x
            if text.endswith((".0", ".255")):
                continue
            yield text

    def _save(self) -> None:
        if self.mode == "alias":
            self._record.write_text(json.dumps(sorted(self._used)))

    async def _ip(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode(errors="replace").strip()

    async def cleanup_previous(self) -> None:
        """Removes addresses a crashed earlier run of this node left on lo."""
        if self.mode != "alias" or not self._record.exists():
            return
        try:
            stale = json.loads(self._record.read_text())
        except ValueError:
            stale = []
        for address in stale:
            await self._ip("addr", "del", f"{address}/32", "dev", "lo")
        self._record.unlink(missing_ok=True)

    async def take_node_address(self) -> str:
        """The node's own InternalIP: in alias mode the highest address of the CIDR that no other local cluster
        on this machine holds (the API server proxies to it for ``/api/v1/nodes/<node>/proxy/...``, which it
        refuses for loopback addresses); else 127.0.0.1."""
        if self.mode != "alias":
            return "127.0.0.1"
        async with self._lock:
            for candidate in range(
                int(self.network.broadcast_address) - 1, int(self.network.network_address), -1
            ):
                address = str(ipaddress.ip_address(candidate))
                if address.endswith((".0", ".255")):
                    continue
                code, _ = await self._ip("addr", "add", f"{address}/32", "dev", "lo")
                if code == 0:
                    self._used.add(address)
                    self._node_addresses.add(address)
                    self._save()
                    return address
        raise RuntimeError(f"no free node address in {self.network}")

    async def take(self) -> str:
        async with self._lock:
            while True:
                address = self._released.pop(0) if self._released else next(self._candidates)
                if self.mode == "alias":
                    code, err = await self._ip("addr", "add", f"{address}/32", "dev", "lo")
                    if code != 0:
                        # Another local cluster on this machine holds it: try the next one.
                        logger.debug("Skipped pod address %s: %s", address, err)
                        continue
                self._used.add(address)
                self._save()
                return address

    async def release(self, address: str) -> None:
        async with self._lock:
            if address not in self._used:
                return
            self._used.discard(address)
            if self.mode == "alias":
                await self._ip("addr", "del", f"{address}/32", "dev", "lo")
            self._released.append(address)
            self._save()

    async def release_all(self) -> None:
        for address in sorted(self._used):
            await self.release(address)
        self._record.unlink(missing_ok=True)
