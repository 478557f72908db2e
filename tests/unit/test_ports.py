"""Ports for test servers and the local cluster: never in the ephemeral range, and a start that finds its port
taken (between "found free" and "bound") starts again on new ports."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from kubelambda.devcluster import _ports, servers
from kubelambda.devcluster._ports import (
    LOWEST,
    PortTaken,
    address_in_use,
    candidates,
    ephemeral_range,
    free_port,
    free_ports,
    retry_taken_ports,
)
from kubelambda.devcluster.servers import HOST, LocalServer


def test_the_kernel_range_is_read_and_a_missing_file_means_linux_default(tmp_path: Path) -> None:
    tuned = tmp_path / "range"
    tuned.write_text("40000\t50000\n")
    assert ephemeral_range(tuned) == (40000, 50000)
    assert ephemeral_range(tmp_path / "absent") == (32768, 60999)


def test_free_ports_lie_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high
        assert port >= LOWEST
        paired = free_port(offset=10000)
        assert not low <= paired <= high
        assert not low <= paired + 10000 <= high


def test_ports_picked_together_are_all_different() -> None:
    # 300 picks from the ~22,000 candidates: independent free_port() calls repeat one most of the time (a 3-node
    # NATS once got another node's port as its monitor port).
    ports = free_ports(300)
    assert len(set(ports)) == 300


@pytest.mark.parametrize(
    ("ephemeral", "offset", "first", "last"),
    [
        ((32768, 60999), 0, LOWEST, 32767),
        ((32768, 60999), 10000, LOWEST, 22767),
        # A machine whose range starts low: the ports above it.
        ((15000, 40000), 0, 40001, 65535),
        ((15000, 40000), 10000, 40001, 55535),
    ],
)
def test_candidates(ephemeral: tuple[int, int], offset: int, first: int, last: int) -> None:
    pool = candidates(offset=offset, ephemeral=ephemeral)
    assert (pool.start, pool.stop - 1) == (first, last)


def test_no_room_outside_the_range_is_an_error_naming_it() -> None:
    with pytest.raises(RuntimeError, match="1024-65000"):
        candidates(offset=10000, ephemeral=(1024, 65000))


@pytest.mark.parametrize(
    ("said", "taken"),
    [
        ("S3 API Server listener on 127.0.0.1:32941 error: bind: address already in use", True),  # Go
        ("OSError: [Errno 98] Address already in use", True),  # Python
        ("java.net.BindException: Address already in use", True),  # Java (Kafka, ElasticMQ)
        ("Error: listen EADDRINUSE: address already in use 127.0.0.1:4567", True),  # Node.js
        ("{error,{listen_error,5672,eaddrinuse}}", True),  # Erlang (RabbitMQ)
        ("Could not create server TCP listening socket 127.0.0.1:6379: bind: Address in use", True),  # Redis
        ("connection refused", False),
        ("ServerMissing: weed not found", False),
    ],
)
def test_address_in_use_is_recognised_in_every_servers_words(said: str, taken: bool) -> None:
    assert address_in_use(said) is taken


@pytest.fixture
def squatter() -> Iterator[list[socket.socket]]:
    """Sockets that take ports away from the code under test; closed at the end."""
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def squat(held: list[socket.socket]) -> int:
    """A port taken away from the code under test: bound (not listening: a probe of it is refused at once rather
    than left unanswered) to a port the kernel picks, so that the bind cannot fail. Binding a port ``free_port``
    picked could: it counts a port whose old connections linger in TIME_WAIT as free (servers bind with
    SO_REUSEADDR), a plain bind does not — under parallel test workers, one such port failed a test here."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    held.append(sock)
    return int(sock.getsockname()[1])


# A minimal HTTP server; bind() of a taken port ends it with "OSError: [Errno 98] Address already in use". With
# SO_REUSEADDR, as the servers the tests start bind: a port in TIME_WAIT is free to it, as to free_port.
SERVE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
    c.close()
"""


class HttpServer(LocalServer):
    """A real child process that exits when its port is taken."""

    name = "http"

    async def _launch(self) -> None:
        self._spawn([sys.executable, "-S", "-c", SERVE, HOST, str(self.port)])
        await self._wait(lambda: servers._http_ok(f"http://{HOST}:{self.port}/"), timeout=30)


async def test_a_server_whose_port_is_taken_in_between_starts_again_on_a_new_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squatter: list[socket.socket]
) -> None:
    picked: list[int] = []

    def pick(host: str = HOST, *, offset: int = 0) -> int:
        # The first two picks are taken by someone else before the server binds them.
        port = squat(squatter) if len(picked) < 2 else free_port(host, offset=offset)
        picked.append(port)
        return port

    monkeypatch.setattr(servers, "free_port", pick)
    server = HttpServer(tmp_path)
    async with server:
        assert len(picked) == 3
        assert server.port == picked[2]
        assert await servers._http_ok(f"http://{HOST}:{server.port}/")
        assert server.log.read_text().count("Address already in use") == 2


async def test_a_port_taken_at_every_try_fails_after_the_attempts_with_the_servers_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squatter: list[socket.socket]
) -> None:
    tries: list[int] = []

    def pick(host: str = HOST, *, offset: int = 0) -> int:
        tries.append(squat(squatter))
        return tries[-1]

    monkeypatch.setattr(servers, "free_port", pick)
    with pytest.raises(PortTaken, match="Address already in use"):
        await HttpServer(tmp_path).start()
    assert len(tries) == _ports.ATTEMPTS


async def test_other_failures_are_not_tried_again(tmp_path: Path) -> None:
    class Broken(HttpServer):
        async def _launch(self) -> None:
            self._spawn([sys.executable, "-c", "raise SystemExit('no config')"])
            await self._wait(lambda: servers._http_ok(f"http://{HOST}:{self.port}/"), timeout=30)

    server = Broken(tmp_path)
    with pytest.raises(RuntimeError, match="no config"):
        await server.start()
    assert server.log.read_text().count("no config") == 1
    assert server.procs == []


async def test_an_in_process_listener_tries_a_new_port_on_eaddrinuse(squatter: list[socket.socket]) -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    ports: list[int] = []

    async def listen() -> int:
        port = free_port() if ports else squat(squatter)
        ports.append(port)
        site = web.TCPSite(runner, HOST, port)
        try:
            await site.start()
        except OSError:
            await site.stop()
            raise
        return port

    try:
        port = await retry_taken_ports(listen, what="a test listener")
        assert len(ports) == 2
        assert port == ports[1]
    finally:
        await runner.cleanup()


async def test_retry_passes_other_errors_through() -> None:
    calls = 0

    async def start() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("not a port problem")

    with pytest.raises(ConnectionRefusedError):
        await retry_taken_ports(start, what="x")
    assert calls == 1
