"""API Gateway HTTP API (payload 2.0): the event a route builds and how a result becomes the response."""

from __future__ import annotations

import base64
import datetime
import json

import pytest

from kubelambda.gateway.httpapi import HttpRequest, build_event, error_for, map_result

NOW = datetime.datetime(2026, 11, 26, 16, 45, 7, tzinfo=datetime.UTC)


def request(**overrides: object) -> HttpRequest:
    values: dict[str, object] = {
        "method": "POST",
        "path": "/items/7",
        "query_string": "a=1&a=2&b=x",
        "query": [("a", "1"), ("a", "2"), ("b", "x")],
        "headers": [
            ("Content-Type", "application/json"),
            ("X-Dup", "one"),
            ("x-dup", "two"),
            ("Cookie", "s=1; t=2"),
            ("User-Agent", "curl/8"),
        ],
        "body": b'{"k": "v"}',
        "source_ip": "10.0.0.9",
        "host": "gw.example",
    }
    values.update(overrides)
    return HttpRequest(**values)  # type: ignore[arg-type]


def test_event_has_the_payload_2_fields() -> None:
    event = build_event(request(), route_key="$default", account="demo", now=NOW)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/7"
    assert event["rawQueryString"] == "a=1&a=2&b=x"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x"}
    assert event["headers"] == {
        "content-type": "application/json",
        "x-dup": "one,two",
        "user-agent": "curl/8",
    }
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["body"] == '{"k": "v"}'
    assert event["isBase64Encoded"] is False
    http = event["requestContext"]["http"]
    assert http == {
        "method": "POST",
        "path": "/items/7",
        "protocol": "HTTP/1.1",
        "sourceIp": "10.0.0.9",
        "userAgent": "curl/8",
    }
    assert event["requestContext"]["time"] == "26/Nov/2026:16:45:07 +0000"
    assert event["requestContext"]["timeEpoch"] == int(NOW.timestamp() * 1000)
    assert event["requestContext"]["accountId"] == "demo"


def test_binary_bodies_are_base64_and_empty_parts_are_absent() -> None:
    event = build_event(
        request(body=b"\x89PNG\x00", headers=[("Content-Type", "image/png")], query=[], query_string=""),
        route_key="$default",
        account="demo",
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x89PNG\x00"
    assert "queryStringParameters" not in event
    assert "cookies" not in event
    assert "body" not in build_event(request(body=b""), route_key="$default", account="d")


@pytest.mark.parametrize(
    ("result", "status", "headers", "body"),
    [
        ({"statusCode": 201, "body": "made"}, 201, [("Content-Type", "text/plain; charset=utf-8")], b"made"),
        (
            {"statusCode": 200, "headers": {"Content-Type": "text/html"}, "body": "<p>hi</p>"},
            200,
            [("Content-Type", "text/html")],
            b"<p>hi</p>",
        ),
        (
            {
                "statusCode": 200,
                "body": base64.b64encode(b"\x00\x01").decode(),
                "isBase64Encoded": True,
                "headers": {"content-type": "application/octet-stream"},
            },
            200,
            [("content-type", "application/octet-stream")],
            b"\x00\x01",
        ),
        (
            {"statusCode": 302, "headers": {"Location": "/x"}, "cookies": ["a=1", "b=2"]},
            302,
            [
                ("Location", "/x"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
            b"",
        ),
        # No statusCode: the whole result is a 200 JSON body.
        ({"message": "hello"}, 200, [("Content-Type", "application/json")], b'{"message": "hello"}'),
        ("just a string", 200, [("Content-Type", "application/json")], b'"just a string"'),
        # A statusCode that is no number, or a body that is no base64, is the integration's failure.
        (
            {"statusCode": "teapot"},
            500,
            [("Content-Type", "application/json")],
            b'{"message": "Internal Server Error"}',
        ),
    ],
    ids=["status", "headers", "base64", "cookies", "no status", "string", "bad status"],
)
def test_results_map_to_responses(
    result: object, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    response = map_result(json.dumps(result).encode())
    assert (response.status, response.headers, response.body) == (status, headers, body)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {"X-Amz-Function-Error": "Unhandled"}, 500),
        (429, {}, 429),
        (404, {}, 404),
        (413, {}, 413),
        (500, {}, 503),
    ],
)
def test_integration_failures(status: int, headers: dict[str, str], expected: int) -> None:
    assert error_for(status, headers).status == expected


def test_functions_never_set_framing_headers() -> None:
    result = {
        "statusCode": 200,
        "headers": {"Content-Length": "1", "Transfer-Encoding": "chunked", "Proxy-Connection": "x", "X-A": 1},
        "multiValueHeaders": {"Connection": ["close"], "X-B": ["1", "2"]},
        "cookies": ["a=1", "b=2"],
        "body": "hello",
    }
    mapped = map_result(json.dumps(result).encode())
    assert mapped.malformed is None
    assert mapped.headers == [
        ("X-A", "1"),
        ("X-B", "1"),
        ("X-B", "2"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"statusCode": 100}, "statusCode 100 is not within 200..599"),
        ({"statusCode": True}, "statusCode True is not an integer"),
        ({"statusCode": 200.5}, "statusCode 200.5 is not an integer"),
        ({"statusCode": 200, "headers": {"X": "a\r\nB: c"}}, "header 'X' has a control character"),
        ({"statusCode": 200, "headers": {"X\n": "a"}}, "header name 'X\\n' is not a token"),
        ({"statusCode": 200, "headers": {"X": {"a": 1}}}, "header 'X' is a dict, not a string"),
        ({"statusCode": 200, "cookies": "a=1"}, "cookies is a str, not a list"),
        ({"statusCode": 200, "cookies": ["a=1\r\n"]}, "header 'Set-Cookie' has a control character"),
        ({"statusCode": 200, "body": "%%", "isBase64Encoded": True}, "body is not valid base64"),
    ],
)
def test_malformed_results_are_api_gateways_500(result: dict[str, object], reason: str) -> None:
    mapped = map_result(json.dumps(result).encode())
    assert (mapped.status, mapped.body) == (500, b'{"message": "Internal Server Error"}')
    assert mapped.malformed is not None
    assert reason in mapped.malformed


def test_a_result_nested_too_deeply_is_a_500_not_an_exception() -> None:
    mapped = map_result(b"[" * 100_000 + b"]" * 100_000)
    assert mapped.status == 500
    assert mapped.malformed == "the result is nested too deeply to parse"
