"""Ports for servers on loopback that cannot be taken by someone else between "found free" and "bound".

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range every outgoing connection
on the machine takes its source port from: on a loaded machine one of them takes the port before the server
binds it (``bind: address already in use``). So :func:`free_port` picks at random *below* that range, where
only servers listen, and the server's start is tried again with new ports when its bind still fails
(another test run on the same machine picked the same port): :func:`retry_taken_ports`.

A server in this process should rather bind port 0 and read back the port it got
(``web.TCPSite(runner, host, 0)``, then ``runner.addresses``).

A *fixed* port (the local platform's gateway at 8090, NATS at 4222: stable URLs) is kept when it is free. Two
platforms starting at the same moment would both find it free, and the loser's readiness check would be answered
by the winner's server: :func:`fixed_ports_held` makes "is it free?" and "it listens" one step, machine-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Below 20000 live many well-known development servers (8080, 9090, 15672, ...); leave them alone.
LOWEST = 20000
DEFAULT_EPHEMERAL = (32768, 60999)
ATTEMPTS = 5

_IN_USE = re.compile(r"address already in use|address in use|eaddrinuse|errno 98\b", re.IGNORECASE)


# Machine-wide, not per state folder or user: the ports are the machine's.
FIXED_PORTS_LOCK = Path(tempfile.gettempdir()) / "kubelambda-fixed-ports.lock"


@contextlib.asynccontextmanager
async def fixed_ports_held(path: Path = FIXED_PORTS_LOCK) -> AsyncIterator[None]:
    """Held from "is the fixed port free?" until the server listens (there or elsewhere): another process
    starting a platform waits here instead of finding the same port free. Polled, so a cancelled start lets go."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    logger.info("Another local platform is choosing its ports; waiting for it (%s)", path)
                    waited = True
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # lets go of the lock


class PortTaken(RuntimeError):
    """A server could not bind a port it was given: someone took it after it was found free."""


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections and ``bind(..., 0)``."""
    try:
        low, high = (int(p) for p in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def candidates(*, offset: int = 0, ephemeral: tuple[int, int] | None = None) -> range:
    """Ports ``p`` such that ``p`` and ``p + offset`` are both outside the ephemeral range (the kernel's, unless
    given) and at or above LOWEST."""
    low, high = ephemeral or ephemeral_range()
    if low - offset > LOWEST:
        return range(LOWEST, low - offset)
    # The ephemeral range starts low (a tuned machine): use what lies above it instead.
    start = max(high + 1, LOWEST)
    if start + offset >= 65536:
        raise RuntimeError(f"no port range outside the ephemeral range {low}-{high} with room for +{offset}")
    return range(start, 65536 - offset)


def bindable(host: str, port: int) -> bool:
    """True when a server can bind ``host:port`` right now. With SO_REUSEADDR, as servers bind (aiohttp,
    nats-server, etcd): a port whose last connections linger in TIME_WAIT (for a minute after a server stopped)
    is free to them, and so it is here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, offset: int = 0) -> int:
    """A TCP port outside the ephemeral range that is free now on ``host`` (and ``port + offset`` too when
    ``offset`` is given: SeaweedFS listens for gRPC at port + 10000)."""
    pool = candidates(offset=offset)
    for _ in range(200):
        port = random.choice(pool)
        if bindable(host, port) and (offset == 0 or bindable(host, port + offset)):
            return port
    raise RuntimeError(f"no free port in {pool.start}-{pool.stop - 1} on {host} after 200 tries")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` different ports, each free now (:func:`free_port` called ``n`` times may give one port twice)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def address_in_use(text: str) -> bool:
    """True when a server's log or error says a port it wanted was taken."""
    return bool(_IN_USE.search(text))


def is_port_taken(error: BaseException) -> bool:
    return isinstance(error, PortTaken) or (isinstance(error, OSError) and error.errno == errno.EADDRINUSE)


async def retry_taken_ports(start: Callable[[], Awaitable[T]], *, what: str, attempts: int = ATTEMPTS) -> T:
    """``await start()``, again (up to ``attempts`` times in all) while it fails with :class:`PortTaken` or
    ``EADDRINUSE``; ``start`` picks new ports each time and cleans up after itself when it fails."""
    for attempt in range(1, attempts + 1):
        try:
            return await start()
        except (PortTaken, OSError) as e:
            if not is_port_taken(e) or attempt == attempts:
                raise
            logger.warning("%s: a port was taken before it was bound (%s); trying new ports", what, e)
    raise AssertionError("unreachable")
