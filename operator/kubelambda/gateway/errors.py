"""Invoke API errors in Lambda's rest-json wire format, which boto3 and the AWS CLI parse.

The error code travels in the ``x-amzn-ErrorType`` header and the body is ``{"Type": ..., "message": ...}``.
"""

from __future__ import annotations

import json

from aiohttp import web

# (HTTP status, Type) per error code: "User" errors are the caller's, "Service" ones the platform's.
ERRORS: dict[str, tuple[int, str]] = {
    "InvalidRequestContentException": (400, "User"),
    "InvalidParameterValueException": (400, "User"),
    "ResourceNotFoundException": (404, "User"),
    "ResourceConflictException": (409, "User"),
    "ResourceInUseException": (400, "User"),
    "PreconditionFailedException": (412, "User"),
    "CodeStorageExceededException": (400, "User"),
    "RequestEntityTooLargeException": (413, "User"),
    "ResourceNotReadyException": (502, "Service"),
    "RequestTooLargeException": (413, "User"),
    "RequestTimeoutException": (408, "User"),  # not Lambda's: a body slower than body_timeout_seconds
    "UnsupportedMediaTypeException": (415, "User"),
    "TooManyRequestsException": (429, "User"),
    "ServiceException": (500, "Service"),
    # The event store cannot take an Event now (NATS down, or a JetStream stream without quorum): nothing was
    # accepted, the caller may retry.
    "ServiceUnavailableException": (503, "Service"),
    "EC2ThrottledException": (502, "Service"),
    "NotImplementedException": (501, "Service"),
    # Authentication and authorisation (gateway/auth): Lambda answers each with 403.
    "MissingAuthenticationTokenException": (403, "User"),
    "UnrecognizedClientException": (403, "User"),
    "InvalidSignatureException": (403, "User"),
    "AccessDeniedException": (403, "User"),
}


def error_response(
    code: str, message: str, *, reason: str | None = None, extra_headers: dict[str, str] | None = None
) -> web.Response:
    """``reason`` is the ``Reason`` field Lambda adds to TooManyRequestsException."""
    status, kind = ERRORS[code]
    body = {"Type": kind, "message": message}
    if reason is not None:
        body["Reason"] = reason
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": code, **(extra_headers or {})},
    )
