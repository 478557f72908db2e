"""HTTP routes in API Gateway's HTTP API format (payload 2.0): the event in, the response out. Pure.

A function behind a route receives exactly what an HTTP API sends a Lambda integration, so handlers written for
API Gateway run unchanged; what they return becomes the HTTP response by the same rules.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubelambda.jsonobj import JSON

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # the path the function sees (rawPath)
    query_string: str
    query: Iterable[tuple[str, str]]
    headers: Iterable[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"
    host: str = "localhost"


def _joined(pairs: Iterable[tuple[str, str]], *, lower: bool) -> dict[str, str]:
    """Repeated names are comma-joined, as API Gateway does (header names lower-cased)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower() if lower else name
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _is_text(content_type: str, body: bytes) -> bool:
    if not body:
        return True
    if content_type and not content_type.startswith(_TEXT_TYPES):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_event(
    request: HttpRequest,
    *,
    route_key: str,
    account: str,
    path_parameters: dict[str, str] | None = None,
    now: datetime.datetime | None = None,
) -> JSON:
    now = now or datetime.datetime.now(datetime.UTC)
    headers = _joined(request.headers, lower=True)
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    text = _is_text(headers.get("content-type", ""), request.body)
    event: JSON = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "accountId": account,
            "apiId": "kubelambda",
            "domainName": request.host,
            "domainPrefix": request.host.split(".")[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": request.protocol,
                "sourceIp": request.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": not text,
    }
    if cookies:
        event["cookies"] = cookies
    query = _joined(request.query, lower=False)
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if request.body:
        event["body"] = request.body.decode("utf-8") if text else base64.b64encode(request.body).decode()
    return event


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    malformed: str | None = None
    """Why a function's result could not be the response (it is then API Gateway's 500), for the log."""


# The gateway frames the response itself: a function never sets these (response splitting, smuggling behind a
# keep-alive ingress); API Gateway drops or rewrites them too.
DROPPED_HEADERS = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer")
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: CR and LF above all


class _Malformed(Exception):
    pass


def _text(value: object, what: str) -> str:
    """A header value as API Gateway takes it: a string, number or boolean."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise _Malformed(f"{what} is a {type(value).__name__}, not a string")


def _headers(result: dict[str, object]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    headers = result.get("headers") or {}
    if not isinstance(headers, dict):
        raise _Malformed(f"headers is a {type(headers).__name__}, not an object")
    for name, value in headers.items():
        pairs.append((name, _text(value, f"header {name!r}")))
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(multi, dict):
        raise _Malformed(f"multiValueHeaders is a {type(multi).__name__}, not an object")
    for name, values in multi.items():
        if not isinstance(values, list):
            raise _Malformed(f"multiValueHeaders {name!r} is not a list")
        pairs += [(name, _text(v, f"header {name!r}")) for v in values]
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        raise _Malformed(f"cookies is a {type(cookies).__name__}, not a list")
    # Payload 2.0: each cookie is its own Set-Cookie header (never comma-joined).
    pairs += [("Set-Cookie", _text(c, "a cookie")) for c in cookies]
    kept: list[tuple[str, str]] = []
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            raise _Malformed(f"header name {name!r} is not a token")
        if _BAD_VALUE.search(value):
            raise _Malformed(f"header {name!r} has a control character (CR, LF, NUL, ...) in its value")
        lowered = name.lower()
        if lowered in DROPPED_HEADERS or lowered.startswith("proxy-"):
            continue
        kept.append((name, value))
    return kept


def _status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Malformed(f"statusCode {value!r} is not an integer")
    if isinstance(value, str) and not value.isdigit():
        raise _Malformed(f"statusCode {value!r} is not an integer")
    status = int(value)
    if not 200 <= status <= 599:  # 1xx would leave the connection mid-response
        raise _Malformed(f"statusCode {status} is not within 200..599")
    return status


def map_result(payload: bytes) -> HttpResponse:
    """A function's result as the HTTP response: ``{statusCode, headers, body, isBase64Encoded, cookies}``, or,
    without ``statusCode``, the whole result as a 200 JSON body (API Gateway's payload 2.0 rules). A result that
    cannot be a response (a bad status, header or body encoding) is API Gateway's 500, with ``malformed`` set."""
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        return HttpResponse(200, [("Content-Type", "application/json")], payload)
    except RecursionError:
        return bad_gateway("the result is nested too deeply to parse")
    if not isinstance(result, dict) or "statusCode" not in result:
        return HttpResponse(200, [("Content-Type", "application/json")], json.dumps(result).encode())
    try:
        status = _status(result["statusCode"])
        headers = _headers(result)
        raw = result.get("body")
        if raw is None:
            body = b""
        elif not isinstance(raw, str):
            body = json.dumps(raw).encode()
        elif result.get("isBase64Encoded"):
            try:
                body = base64.b64decode(raw, validate=True)
            except ValueError:
                raise _Malformed("body is not valid base64 although isBase64Encoded is true") from None
        else:
            body = raw.encode()
    except _Malformed as e:
        return bad_gateway(str(e))
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(
            (
                "Content-Type",
                "application/json"
                if raw is not None and not isinstance(raw, str)
                else "text/plain; charset=utf-8",
            )
        )
    return HttpResponse(status, headers, body)


def message(status: int, text: str) -> HttpResponse:
    return HttpResponse(
        status, [("Content-Type", "application/json")], json.dumps({"message": text}).encode()
    )


def forbidden(error_type: str) -> HttpResponse:
    """A function URL's refusal: 403 ``{"Message": "Forbidden"}``, the reason in ``x-amzn-ErrorType``."""
    return HttpResponse(
        403,
        [("Content-Type", "application/json"), ("x-amzn-ErrorType", error_type)],
        json.dumps({"Message": "Forbidden"}).encode(),
    )


def bad_gateway(malformed: str | None = None) -> HttpResponse:
    """API Gateway's answer to an integration response it cannot use: 500 ``{"message": "Internal Server
    Error"}``; ``malformed`` says why, for the gateway's log only."""
    answer = message(500, "Internal Server Error")
    return HttpResponse(answer.status, answer.headers, answer.body, malformed)


def error_for(status: int, headers: Mapping[str, str]) -> HttpResponse:
    """API Gateway's answers when the integration fails: function errors are 500s, throttles 429s."""
    if status == 429:
        return message(429, "Too Many Requests")
    if status == 404:
        return message(404, "Not Found")
    if status == 413:
        return message(413, "Request Entity Too Large")
    if "X-Amz-Function-Error" in headers:
        return message(500, "Internal Server Error")
    return message(503, "Service Unavailable")
