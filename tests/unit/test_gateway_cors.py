"""CORS of HTTP Triggers as function URLs answer it (gateway/cors.py): a table."""

from __future__ import annotations

import pytest

from kubelambda.gateway.cors import CorsPolicy

APP = "https://app.example.com"
STRICT = CorsPolicy.from_spec(
    {
        "allowOrigins": [APP],
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["content-type", "authorization"],
        "exposeHeaders": ["x-request-id"],
        "maxAge": 600,
        "allowCredentials": True,
    }
)
OPEN = CorsPolicy.from_spec({"allowOrigins": ["*"], "allowMethods": ["ANY"]})


@pytest.mark.parametrize(
    ("policy", "origin", "method", "expected"),
    [
        (
            STRICT,
            APP,
            "POST",
            {
                "Access-Control-Allow-Origin": APP,
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "content-type, authorization",
                "Access-Control-Max-Age": "600",
                "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin",
            },
        ),
        (STRICT, "https://evil.example", "POST", {}),
        (STRICT, APP, "DELETE", {}),
        (
            OPEN,
            "https://any.example",
            "PATCH",
            {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*", "Vary": "Origin"},
        ),
    ],
    ids=["allowed", "other-origin", "other-method", "open"],
)
def test_preflight(policy: CorsPolicy, origin: str, method: str, expected: dict[str, str]) -> None:
    assert dict(policy.preflight(origin, method)) == expected


def test_answers_carry_the_allow_headers_for_allowed_origins_only() -> None:
    assert dict(STRICT.response_headers(APP)) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Expose-Headers": "x-request-id",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    assert STRICT.response_headers("https://evil.example") == []
    assert STRICT.response_headers(None) == []
    # "*" with credentials would be refused by browsers: the origin is echoed instead.
    echoing = CorsPolicy.from_spec({"allowOrigins": ["*"], "allowCredentials": True})
    assert dict(echoing.response_headers(APP))["Access-Control-Allow-Origin"] == APP
