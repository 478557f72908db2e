"""What an invocation's answer was, as the agent, the gateway and the async worker agree on it.

A neutral module: the gateway (its invoke path) and the async worker (in the gateway's process or its own) both
read it, and neither imports the other for it (tests/unit/test_import_cycles.py).

The agent answers every invocation with ``X-Kubelambda-Outcome`` (docs/runtimes.md, "Invoke endpoint"); the
gateway passes it through on the Invoke API's answer (setting it itself when it made the answer: the instance
stopped answering, a response over the limit), and the async worker decides retries from it instead of from the
body or from ``X-Amz-Function-Error`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping

OUTCOME_HEADER = "X-Kubelambda-Outcome"
"""The agent's word on what an answered invocation was: one of :data:`GATEWAY_OUTCOMES`' keys."""
ASYNC_REQUEST_ID_HEADER = "X-Kubelambda-Async-Request-Id"
"""A standalone async worker's event request id, kept on every attempt (platform callers only)."""
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"

# The agent's outcomes → the gateway's (``kubelambda_invocations_total{outcome}``): a crash, an init error or
# an oversized response is an error of the function, as in Lambda.
GATEWAY_OUTCOMES = {
    "success": "success",
    "function_error": "function_error",
    "timeout": "timeout",
    "crash": "function_error",
    "init_error": "function_error",
    "response_too_large": "function_error",
}


def outcome_of(headers: Mapping[str, str]) -> str:
    """The gateway's outcome (success, function_error or timeout) from ``X-Kubelambda-Outcome``
    (case-insensitive ``headers``); without it (not an agent's answer), from ``X-Amz-Function-Error``."""
    agent = headers.get(OUTCOME_HEADER)
    if agent is not None:
        return GATEWAY_OUTCOMES.get(agent, "function_error")
    return "function_error" if FUNCTION_ERROR_HEADER in headers else "success"
