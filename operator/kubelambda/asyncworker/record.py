"""Lambda's invocation record, as destinations receive it: pure, the clock is a parameter.

``{"version": "1.0", "timestamp", "requestContext": {"requestId", "functionArn", "condition",
"approximateInvokeCount"}, "requestPayload", "responseContext": {"statusCode", "executedVersion",
"functionError"}, "responsePayload"}``; ``responseContext`` and ``responsePayload`` only when the function ran
in the delivery that ended the event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubelambda.asyncworker.decide import Condition


@dataclass(frozen=True)
class Response:
    status: int
    function_error: str | None
    body: bytes


def _payload(body: bytes) -> Any:
    """JSON as JSON; anything else (a runtime's non-JSON answer) as a string, as Lambda does."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return body.decode("utf-8", "replace")


def invocation_record(
    *,
    request_id: str,
    function_arn: str,
    condition: Condition,
    invoke_count: int,
    request_payload: bytes,
    response: Response | None,
    now: float,
) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": stamp,
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{function_arn}:$LATEST",
            "condition": condition.value,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": _payload(request_payload),
    }
    if response is not None:
        context: dict[str, Any] = {"statusCode": response.status, "executedVersion": "$LATEST"}
        if response.function_error:
            context["functionError"] = response.function_error
        record["responseContext"] = context
        record["responsePayload"] = _payload(response.body)
    return record
