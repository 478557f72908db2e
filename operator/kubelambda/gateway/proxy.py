"""Forwarding one invocation to an instance's agent (``POST http://<pod>:8080/invoke``).

The agent enforces the function timeout itself and answers with Lambda's timeout error. As in Lambda, a runtime's
init does not count toward it: the agent starts the timeout when a runtime takes the event, after waiting at most
``AGENT_INIT_WAIT_SECONDS`` for one still initialising (a worker replaced after a timeout, a cold start). So the
gateway sends the agent no ``Lambda-Runtime-Deadline-Ms`` (a caller's deadline holds from receipt, init included:
docs/runtimes.md), and its own wait is that init wait + the timeout + a margin; it only fires when an instance
stops answering altogether.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from kubelambda import tracing
from kubelambda.agentauth import bearer
from kubelambda.outcomes import OUTCOME_HEADER, outcome_of

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


async def _read_capped(resp: aiohttp.ClientResponse, length: int | None, limit: int) -> bytes | None:
    """The body of a response of ``length`` (its Content-Length, None without one), or None as soon as it is
    known to exceed ``limit`` (the connection is then dropped, so the rest is never read nor buffered)."""
    if length is not None:
        if length > limit:
            resp.close()
            return None
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            resp.close()
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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


@functools.lru_cache(
    maxsize=256
)  # one per function timeout (at most 900 whole seconds): made once, not per call
def _client_timeout(timeout_seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=longest_wait(timeout_seconds), sock_connect=CONNECT_SECONDS)


async def forward(
    session: aiohttp.ClientSession,
    endpoint: str,
    invocation: Invocation,
    *,
    headers: Mapping[str, str] = PLAIN_HEADERS,
    max_response_bytes: int = 6 * 1024 * 1024,
) -> Result:
    """Sends ``invocation`` to ``endpoint`` (``ip:port``) with ``headers`` (:func:`agent_headers`: the
    function's token); raises :class:`TryElsewhere` if it refuses. A response over ``max_response_bytes`` is
    Lambda's ``Function.ResponseSizeTooLarge`` error, however the pod sends it."""
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
    try:
        async with session.post(
            f"http://{endpoint}/invoke",
            data=invocation.body,
            headers=headers,
            timeout=_client_timeout(invocation.timeout_seconds),
        ) as resp:
            length = resp.content_length
            if length is not None and length <= max_response_bytes:
                body: bytes | None = await resp.read()  # the agent's answers have a length: read at once
            else:
                body = await _read_capped(resp, length, max_response_bytes)
            if body is None:
                return too_large_result(max_response_bytes)
            # 401: the pod at this address is not one of the function's (a stale address now another pod's).
            if resp.status in (401, 429, 503):
                raise TryElsewhere(f"{endpoint} answered {resp.status}: {body[:200]!r}")
            passed = {h: resp.headers[h] for h in PASSED_HEADERS if h in resp.headers}
            return Result(resp.status, passed, body, outcome_of(resp.headers))
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
        # No connection: refused (the instance is going away, or not listening yet) or not accepted in time.
        raise Unreachable(f"{endpoint}: {e!r}") from e
    except aiohttp.ClientConnectionError as e:
        # Reset before an answer: the instance is going away. Nothing ran there.
        if isinstance(e, aiohttp.ServerDisconnectedError):
            raise
        raise TryElsewhere(f"{endpoint}: {e}") from e
    except TimeoutError:
        return timeout_result(invocation)
