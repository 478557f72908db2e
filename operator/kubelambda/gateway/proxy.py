"""Forwarding one invocation to an instance's agent (``POST http://<pod>:8080/invoke``).

The agent enforces the function timeout itself and answers with Lambda's timeout error. As in Lambda, a runtime's
init does not count toward it: the agent starts the timeout when a runtime takes the event, after waiting at most
``AGENT_INIT_WAIT_SECONDS`` for one still initialising (a worker replaced after a timeout, a cold start). So the
gateway sends the agent no ``Lambda-Runtime-Deadline-Ms`` (a caller's deadline holds from receipt, init included:
docs/runtimes.md), and its own wait is that init wait + the timeout + a margin; it only fires when an instance
stops answering altogether.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubelambda import tracing
from kubelambda.agentauth import bearer
from kubelambda.outcomes import OUTCOME_HEADER, outcome_of
from kubelambda.plainhttp import (
    ConnectFailed,
    Disconnected,
    Origins,
    ProtocolError,
    TooLarge,
    request_head,
)

# What the agent answers that a caller of the Invoke API sees.
PASSED_HEADERS = (
    "Content-Type",
    "X-Amz-Function-Error",
    "X-Amz-Executed-Version",
    "X-Amz-Log-Result",
    OUTCOME_HEADER,  # passed through to the async worker, which decides from it (kubelambda.outcomes)
)
TIMEOUT_MARGIN_SECONDS = 2.0
# The agent's longest wait for a runtime's init before an invocation's timeout starts (initWaitLimit in
# runtime-images/agent/workers.go: Lambda's 10 s limit on the Init phase).
AGENT_INIT_WAIT_SECONDS = 10.0


def longest_wait(timeout_seconds: float) -> float:
    """How long after it is sent an invocation may still be running at an agent: the agent's init wait, the
    function's timeout and the margin for the answer to arrive."""
    return AGENT_INIT_WAIT_SECONDS + timeout_seconds + TIMEOUT_MARGIN_SECONDS


CONNECT_SECONDS = (
    2.0  # one attempt to connect to an agent (the invoke path tries again, gateway/invoke_path.py)
)


class TryElsewhere(Exception):
    """This instance cannot take the invocation (busy, draining, gone); another may."""


class Unreachable(TryElsewhere):
    """No connection to this instance could be made (refused, or no answer to the connect within
    ``CONNECT_SECONDS``): nothing ran there. Not a sign that it is busy: under load an instance (or the
    machine) may be slow to accept, so the same instance may take the invocation a moment later."""


@dataclass(frozen=True)
class Invocation:
    request_id: str
    arn: str
    timeout_seconds: float
    body: bytes
    log_tail: bool
    client_context: str | None = None
    trace_id: str | None = None  # the caller's X-Amzn-Trace-Id
    traceparent: str | None = None  # the caller's W3C traceparent (kubelambda.tracing)
    invocation_type: str = "RequestResponse"  # or Event (the async worker's attempts)

    @classmethod
    def new(
        cls,
        *,
        arn: str,
        timeout_seconds: float,
        body: bytes,
        log_tail: bool,
        client_context: str | None = None,
        trace_id: str | None = None,
        traceparent: str | None = None,
    ) -> Invocation:
        return cls(request_id(), arn, timeout_seconds, body, log_tail, client_context, trace_id, traceparent)


_RANDOM_IDS = 256  # request ids per read of the OS's random source
_random = memoryview(b"")


def request_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` but in a third of its time
    (it is made for every invocation): the same OS randomness, read for 256 ids at a time (one system call,
    not one per invocation)."""
    global _random
    if not _random:
        _random = memoryview(os.urandom(16 * _RANDOM_IDS))
    raw, _random = bytearray(_random[:16]), _random[16:]
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@dataclass(frozen=True)
class Result:
    status: int
    headers: dict[str, str]  # what the caller sees (PASSED_HEADERS)
    body: bytes
    outcome: str  # success, function_error or timeout (GATEWAY_OUTCOMES)


def too_large_result(limit: int) -> Result:
    """Lambda's answer to a response over its limit (the agent's own words for it, docs/runtimes.md)."""
    body = {
        "errorMessage": f"Response payload size exceeded maximum allowed payload size ({limit} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
    return Result(
        200,
        {
            "Content-Type": "application/json",
            "X-Amz-Function-Error": "Unhandled",
            "X-Amz-Executed-Version": "$LATEST",
            OUTCOME_HEADER: "response_too_large",
        },
        json.dumps(body).encode(),
        "function_error",
    )


def timeout_result(invocation: Invocation) -> Result:
    body = {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {invocation.request_id} Error: Task timed out after {invocation.timeout_seconds:.2f} seconds",
    }
    return Result(
        200,
        {
            "Content-Type": "application/json",
            "X-Amz-Function-Error": "Unhandled",
            "X-Amz-Executed-Version": "$LATEST",
            OUTCOME_HEADER: "timeout",
        },
        json.dumps(body).encode(),
        "timeout",
    )


def agent_headers(token: str | None) -> dict[str, str]:
    """What every call to a function's agents carries: its ``token`` (see ``kubelambda.agentauth``)."""
    return {**bearer(token), "Content-Type": "application/json"}


PLAIN_HEADERS = agent_headers(None)


class FailedMidInvocation(Exception):
    """The instance took the invocation and its connection ended (or its answer was not HTTP) before the answer was
    complete: the function may have run, so the invocation is never sent elsewhere."""


AGENT_IDLE_SECONDS = 30.0
"""How long a connection to an agent is kept idle for the next call: well under the agent's own idle timeout (2
min, runtime-images/agent/main.go), so the agent never closes one just as a call is written on it."""


def agent_connections() -> Origins:
    """The gateway's kept-alive connections to agents (one pool per instance, released once idle)."""
    return Origins(connect_timeout=CONNECT_SECONDS, idle_seconds=AGENT_IDLE_SECONDS)


async def forward(
    agents: Origins,
    endpoint: str,
    invocation: Invocation,
    *,
    headers: Mapping[str, str] = PLAIN_HEADERS,
    max_response_bytes: int = 6 * 1024 * 1024,
    wait_seconds: float | None = None,
) -> Result:
    """Sends ``invocation`` to ``endpoint`` (``ip:port``) with ``headers`` (:func:`agent_headers`: the
    function's token), waiting for its answer ``wait_seconds`` (default: :func:`longest_wait` of its timeout), over ``agents``' connections (kubelambda.plainhttp: our own HTTP/1.1 client, a third of
    aiohttp's CPU per call). Raises :class:`TryElsewhere` if the instance refuses it or went away before
    answering (nothing ran there; :class:`Unreachable` when no connection could be made), and
    :class:`FailedMidInvocation` when it may have run. A response over ``max_response_bytes`` is Lambda's
    ``Function.ResponseSizeTooLarge`` error, however the pod sends it."""
    headers = {
        **headers,
        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
        "Lambda-Runtime-Invoked-Function-Arn": invocation.arn,
    }
    if invocation.log_tail:
        headers["X-Amz-Log-Type"] = "Tail"
    if invocation.client_context:
        headers["X-Amz-Client-Context"] = invocation.client_context
    # The trace as the function sees it (docs/tracing.md): the forward span's when tracing is on, else the
    # caller's; in both W3C and X-Ray form (the X-Ray one derived from the W3C one, as Lambda does).
    traceparent = tracing.current_traceparent() or invocation.traceparent
    xray = tracing.xray_header(traceparent) if traceparent else None
    if traceparent and xray:
        headers["traceparent"] = traceparent
        headers["X-Amzn-Trace-Id"] = xray
    elif invocation.trace_id:
        headers["X-Amzn-Trace-Id"] = invocation.trace_id
    origin = agents.get(endpoint)
    body = invocation.body
    try:
        answer = await origin.post(
            request_head("/invoke", origin.authority, headers, len(body)),
            body,
            timeout=longest_wait(invocation.timeout_seconds) if wait_seconds is None else wait_seconds,
            max_body=max_response_bytes,
        )
    except TooLarge:
        return too_large_result(max_response_bytes)
    except ConnectFailed as e:
        # No connection: refused (the instance is going away, or not listening yet) or not accepted in time.
        raise Unreachable(f"{endpoint}: {e}") from e
    except (Disconnected, ProtocolError) as e:
        # The request was written and the instance hung up (or answered nonsense) before the whole answer: it
        # may have run (a crash, an OOM kill), so it is not tried elsewhere.
        raise FailedMidInvocation(f"{endpoint}: {e}") from e
    except TimeoutError:
        return timeout_result(invocation)
    except OSError as e:
        # Reset before any of an answer: the instance is going away. Nothing ran there.
        raise TryElsewhere(f"{endpoint}: {e!r}") from e
    status = answer.status
    # 401: the pod at this address is not one of the function's (a stale address now another pod's).
    if status in (401, 429, 503):
        raise TryElsewhere(f"{endpoint} answered {status}: {answer.body[:200]!r}")
    got = answer.headers
    passed = {h: got[low] for h, low in _PASSED if low in got}
    return Result(status, passed, answer.body, outcome_of(passed))


_PASSED = tuple((h, h.lower()) for h in PASSED_HEADERS)  # as sent on, as the client names them
