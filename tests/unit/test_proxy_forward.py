"""The gateway's forward of an invocation to an agent (gateway/proxy.forward over kubelambda.plainhttp), against a
real loopback server that answers, resets, hangs up or stalls as the test says: which failures send a call to
another instance (nothing ran), which fail it (it may have run), the response cap, timeouts, and kept-alive
connections the server closed. Each case runs on asyncio's loop and on uvloop's (the gateway's)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from kltest import wait_for
from kubelambda.gateway.proxy import (
    FailedMidInvocation,
    Invocation,
    TryElsewhere,
    Unreachable,
    agent_connections,
    agent_headers,
    forward,
)
from kubelambda.plainhttp import Origins, request_head

LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def run(new_loop: Callable[[], asyncio.AbstractEventLoop], case: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(case)


@dataclass
class Seen:
    head: bytes
    body: bytes
    connection: int  # which accepted connection (0, 1, ...) carried it


Act = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""What the agent does with a request: True to keep serving the connection."""


@dataclass
class Agent:
    """A loopback server reading requests (head, then a Content-Length body) and acting on each with ``act``."""

    act: Act
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed_by_client: list[int] = field(default_factory=list)  # connections whose client hung up
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_client.append(number)
                    return
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                seen = Seen(head, await reader.readexactly(length), number)
                self.seen.append(seen)
                if not await self.act(seen, reader, writer):
                    if reader.at_eof():  # it waited for the client to hang up
                        self.closed_by_client.append(number)
                    return
        except ConnectionError:
            self.closed_by_client.append(number)
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def running(act: Act, agents: Origins | None = None) -> AsyncIterator[tuple[Agent, str, Origins]]:
    """An agent acting with ``act``, its endpoint, and connections to agents (the gateway's by default)."""
    agent = Agent(act)
    endpoint = await agent.start()
    agents = agents or agent_connections()
    try:
        yield agent, endpoint, agents
    finally:
        agents.close()
        await agent.stop()


def answer(body: bytes, *, status: int = 200, headers: str = "") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        headers.encode(),
        body,
    )


async def echo(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(seen.body, headers="X-Kubelambda-Outcome: success\r\nX-Amz-Executed-Version: 3\r\n"))
    await writer.drain()
    return True


def reset(writer: asyncio.StreamWriter) -> None:
    """Closes with a reset (RST), as a process that dies with unread bytes does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def invocation(body: bytes = b'{"n": 1}', timeout: float = 3) -> Invocation:
    return Invocation.new(
        arn="arn:aws:lambda:us-east-1:demo:function:f", timeout_seconds=timeout, body=body, log_tail=True
    )


@LOOPS
def test_an_answer_its_headers_and_a_kept_alive_connection(new_loop: Any) -> None:
    async def case() -> None:
        async with running(echo) as (agent, endpoint, agents):
            for n in range(3):
                body = b'{"n": %d, "text": "caf\xc3\xa9"}' % n
                result = await forward(agents, endpoint, invocation(body), headers=agent_headers("tok"))
                assert (result.status, result.body, result.outcome) == (200, body, "success")
                assert result.headers == {
                    "Content-Type": "application/json",
                    "X-Amz-Executed-Version": "3",
                    "X-Kubelambda-Outcome": "success",
                }
            assert [s.connection for s in agent.seen] == [0, 0, 0]  # one connection, kept alive
            head = agent.seen[0].head.decode()
            assert head.startswith("POST /invoke HTTP/1.1\r\nHost: 127.0.0.1:")
            for line in (
                "Authorization: Bearer tok",
                "X-Amz-Log-Type: Tail",
                "Lambda-Runtime-Aws-Request-Id: ",
            ):
                assert line in head

    run(new_loop, case())


@LOOPS
@pytest.mark.parametrize("status", [401, 429, 503])
def test_a_refusal_is_tried_elsewhere(new_loop: Any, status: int) -> None:
    async def case() -> None:
        async def refuse(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(answer(b"busy", status=status))
            return True

        async with running(refuse) as (_, endpoint, agents):
            with pytest.raises(TryElsewhere, match=f"answered {status}") as e:
                await forward(agents, endpoint, invocation())
            assert not isinstance(e.value, Unreachable)

    run(new_loop, case())


@LOOPS
def test_a_reset_before_any_answer_is_tried_elsewhere_and_one_within_it_is_not(new_loop: Any) -> None:
    async def case() -> None:
        async def reset_at_once(
            seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            reset(writer)
            return False

        async def reset_within(
            seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            await writer.drain()
            reset(writer)
            return False

        for act, error in ((reset_at_once, TryElsewhere), (reset_within, FailedMidInvocation)):
            async with running(act) as (agent, endpoint, agents):
                with pytest.raises(error) as e:
                    await forward(agents, endpoint, invocation())
                assert not isinstance(e.value, Unreachable)
                assert len(agent.seen) == 1  # never sent again

    run(new_loop, case())


@LOOPS
def test_a_server_that_hangs_up_after_taking_the_request_failed_it_and_it_is_not_sent_again(
    new_loop: Any,
) -> None:
    """A clean close (FIN) after the request was read, before an answer: the agent may have run it (it died
    mid-invocation), so the call fails rather than running again anywhere."""

    async def case() -> None:
        async def hang_up(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            return False

        async with running(hang_up) as (agent, endpoint, agents):
            with pytest.raises(FailedMidInvocation, match="without answering"):
                await forward(agents, endpoint, invocation())
            assert (len(agent.seen), agent.connections) == (1, 1)

    run(new_loop, case())


@LOOPS
def test_an_idle_connection_the_server_closed_is_not_used_and_the_next_call_runs_once(new_loop: Any) -> None:
    async def case() -> None:
        async def answer_then_close(
            seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            await echo(seen, reader, writer)
            return False  # then closes the kept-alive connection (its idle timeout, or shutting down)

        async with running(answer_then_close) as (agent, endpoint, agents):
            assert (await forward(agents, endpoint, invocation(b"1"))).body == b"1"
            origin = agents.get(endpoint)
            assert origin.idle == 1  # the answer said nothing of closing: kept

            async def idle_open() -> list[bool]:
                return [c.open for c in origin._idle]

            await wait_for(
                idle_open, lambda opened: opened == [False], what="the server's close seen by the client"
            )
            assert (await forward(agents, endpoint, invocation(b"2"))).body == b"2"
            assert [(s.body, s.connection) for s in agent.seen] == [(b"1", 0), (b"2", 1)]  # each ran once

    run(new_loop, case())


@LOOPS
def test_connection_close_and_http_1_0_answers_are_not_reused(new_loop: Any) -> None:
    async def case() -> None:
        async def closing(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            if seen.body == b"1.0":
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n1.0")
            else:
                writer.write(answer(seen.body, headers="Connection: close\r\n"))
            await writer.drain()
            return True  # the server would go on: the client must not

        async with running(closing) as (agent, endpoint, agents):
            for body in (b"close", b"1.0", b"next"):
                assert (await forward(agents, endpoint, invocation(body))).body == body
            assert [s.connection for s in agent.seen] == [0, 1, 2]
            await wait_for(
                lambda: asyncio.sleep(0, sorted(agent.closed_by_client)),
                lambda closed: closed[:2] == [0, 1],
                what="the client closing both connections",
            )

    run(new_loop, case())


@LOOPS
@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
def test_an_answer_over_the_cap_is_lambdas_error_without_reading_the_rest(
    new_loop: Any, framing: str
) -> None:
    """The agent announces or streams more than the cap and then stalls: the answer comes at once (not at the
    timeout), the connection is dropped, and an answer at the cap passes whole."""

    async def case() -> None:
        async def big(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            size = int(seen.body)
            if framing == "content-length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                writer.write(b"x" * min(size, 100))
            elif framing == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(size // 10):
                    writer.write(b"a\r\n0123456789\r\n")
                if size <= 100:
                    writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * min(size, 200))
                if size <= 100:
                    await writer.drain()
                    return False  # the close ends the body
            await writer.drain()
            if size <= 100:
                return True
            await reader.read()  # stalls, sending nothing more, until the client hangs up
            return False

        async with running(big) as (agent, endpoint, agents):
            started = asyncio.get_running_loop().time()
            result = await forward(
                agents, endpoint, invocation(b"10000"), max_response_bytes=100, wait_seconds=10
            )
            assert asyncio.get_running_loop().time() - started < 5
            assert result.outcome == "function_error"
            assert result.headers["X-Kubelambda-Outcome"] == "response_too_large"
            assert b"Function.ResponseSizeTooLarge" in result.body
            await wait_for(
                lambda: asyncio.sleep(0, agent.closed_by_client),
                lambda closed: 0 in closed,
                what="the client dropping the connection",
            )
            assert (await forward(agents, endpoint, invocation(b"100"), max_response_bytes=100)).status == 200

    run(new_loop, case())


@LOOPS
def test_a_chunked_answer(new_loop: Any) -> None:
    async def case() -> None:
        async def chunked(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Amz-Function-Error: Unhandled\r\n\r\n"
            )
            for part in (b'{"a":', b" 1", b"}"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True

        async with running(chunked) as (agent, endpoint, agents):
            for _ in range(2):
                result = await forward(agents, endpoint, invocation())
                assert (result.body, result.outcome) == (b'{"a": 1}', "function_error")
            assert [s.connection for s in agent.seen] == [0, 0]

    run(new_loop, case())


@LOOPS
def test_no_answer_in_time_is_the_timeout_error_and_the_connection_is_dropped(new_loop: Any) -> None:
    async def case() -> None:
        async def stall(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            if seen.body != b"slow":
                return await echo(seen, reader, writer)
            await reader.read()  # never answers; returns when the client hangs up
            return False

        async with running(stall) as (agent, endpoint, agents):
            call = invocation(b"slow")
            result = await forward(agents, endpoint, call, wait_seconds=0.3)
            assert (result.outcome, result.headers["X-Amz-Function-Error"]) == ("timeout", "Unhandled")
            assert b"Sandbox.Timedout" in result.body
            assert call.request_id.encode() in result.body
            assert agents.get(endpoint).idle == 0
            await wait_for(
                lambda: asyncio.sleep(0, agent.closed_by_client),
                lambda closed: closed == [0],
                what="the client dropping the connection",
            )
            assert (await forward(agents, endpoint, invocation(b"ok"))).body == b"ok"

    run(new_loop, case())


@LOOPS
def test_an_answer_that_is_not_http_failed_the_call(new_loop: Any) -> None:
    async def case() -> None:
        async def garbage(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            return True

        async with running(garbage) as (_, endpoint, agents):
            with pytest.raises(FailedMidInvocation, match=r"not an HTTP/1\.x response"):
                await forward(agents, endpoint, invocation())

    run(new_loop, case())


@LOOPS
def test_pools_of_endpoints_that_went_away_are_released(new_loop: Any) -> None:
    """Idle connections are closed after the idle time and their endpoints forgotten (10,000 Functions' instances
    come and go); one in use keeps its pool."""

    async def case() -> None:
        async with running(echo, Origins(idle_seconds=0.2)) as (agent, endpoint, agents):
            head = request_head("/invoke", endpoint, {}, 1)
            await agents.get(endpoint).post(head, b"1", timeout=5)
            assert agents.get(endpoint).idle == 1
            await wait_for(
                lambda: asyncio.sleep(0, dict(agents.origins)), lambda o: o == {}, what="the pool released"
            )
            await wait_for(
                lambda: asyncio.sleep(0, agent.closed_by_client),
                lambda c: c == [0],
                what="the connection closed",
            )
            assert agents._sweeper is None  # nothing known: no timer either

    run(new_loop, case())


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break: 'X-Amzn-Trace-Id: a\\\\r\\\\nX-Evil: 1'"):
        request_head("/invoke", "h:1", {"X-Amzn-Trace-Id": "a\r\nX-Evil: 1"}, 0)
    with pytest.raises(ValueError, match="line break"):
        request_head("/invoke", "h:1", {"A": "b\nc"}, 0)
    assert (
        request_head("/x", "h:1", {"A": "b"}, 2)
        == b"POST /x HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\n"
    )


@LOOPS
def test_a_second_answer_to_one_request_is_ignored_and_its_connection_dropped(new_loop: Any) -> None:
    async def case() -> None:
        async def twice(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(
                answer(seen.body, headers="X-Amz-Executed-Version: 1\r\n") + answer(b"stale", status=503)
            )
            return True

        async with running(twice) as (agent, endpoint, agents):
            for body in (b"1", b"2"):
                result = await forward(agents, endpoint, invocation(body))
                assert (result.status, result.body, result.headers["X-Amz-Executed-Version"]) == (
                    200,
                    body,
                    "1",
                )
            assert [s.connection for s in agent.seen] == [0, 1]

    run(new_loop, case())


@LOOPS
def test_an_answer_over_the_cap_that_arrives_whole_is_still_over_it(new_loop: Any) -> None:
    async def case() -> None:
        async def whole(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(answer(b"z" * 150))
            return True

        async with running(whole) as (_, endpoint, agents):
            result = await forward(agents, endpoint, invocation(), max_response_bytes=100)
            assert result.headers["X-Kubelambda-Outcome"] == "response_too_large"
            assert (await forward(agents, endpoint, invocation(), max_response_bytes=150)).body == b"z" * 150

    run(new_loop, case())
