"""An instance no connection could be made to is not a busy one (issue 18): the invoke path's decision when no
slot was found, and the proxy's word for a refused or unaccepted connection, on real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kubelambda.gateway.invoke_path import when_no_slot
from kubelambda.gateway.proxy import Invocation, Unreachable, agent_connections, forward
from kubelambda.plainhttp import Origins

A, B = "10.0.0.1:8080", "10.0.0.2:8080"


@pytest.mark.parametrize(
    ("ready", "tried", "unreachable", "growing", "time_left", "step"),
    [
        # The only instance did not accept the connection in time: connect again, never a 429.
        ([A], {A}, {A}, False, 30.0, "again"),
        # ... until the call's deadline: then a 5xx that says so.
        ([A], {A}, {A}, False, 0.0, "unreachable"),
        ([A], {A}, {A}, True, 0.0, "unreachable"),
        # One busy (it answered 429), the other unreachable: connect to that one again.
        ([A, B], {A, B}, {B}, False, 5.0, "again"),
        # The unreachable instance went away, the busy one stays: the usual 429 (or the wait for a new one).
        ([A], {A, B}, {B}, False, 5.0, "throttle"),
        ([A], {A, B}, {B}, True, 5.0, "grow"),
        # Every instance busy (none unreachable): 429 unless one is starting.
        ([A], set(), set(), False, 5.0, "throttle"),
        ([A], set(), set(), True, 5.0, "grow"),
        ([A], set(), set(), True, 0.0, "throttle"),
        # The instances tried went away: back to the cold path.
        ([], {A}, {A}, False, 5.0, "cold"),
        ([], {A}, set(), False, 5.0, "cold"),
    ],
)
def test_the_decision_when_no_instance_had_a_slot(
    ready: list[str], tried: set[str], unreachable: set[str], growing: bool, time_left: float, step: str
) -> None:
    got = when_no_slot(
        ready=ready, tried=tried, unreachable=unreachable, growing=growing, time_left=time_left
    )
    assert got == step


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listening socket that never accepts, its accept queue full: the kernel drops further SYNs, so a
    connect gets no answer (as from an agent, or a machine, too loaded to accept)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # the queue holds backlog + 1; a connect that times out shows it is full
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(address)
            except TimeoutError:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.fail("the accept queue never filled")
        yield f"{address[0]}:{address[1]}"
    finally:
        for s in fillers:
            s.close()
        server.close()


def invocation() -> Invocation:
    return Invocation.new(
        arn="arn:aws:lambda:us-east-1:demo:function:f", timeout_seconds=3, body=b"{}", log_tail=False
    )


async def test_a_connection_not_accepted_in_time_is_unreachable(full_backlog: str) -> None:
    agents = Origins(connect_timeout=0.3)
    with pytest.raises(Unreachable, match=r"did not accept a connection within 0\.3 s"):
        await forward(agents, full_backlog, invocation())
    agents.close()


async def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = agent_connections()
    with pytest.raises(Unreachable, match=r"Connect call failed|refused"):
        await forward(agents, f"127.0.0.1:{port}", invocation())
    agents.close()
