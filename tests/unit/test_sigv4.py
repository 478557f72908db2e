"""The SigV4 verifier (gateway/auth/sigv4.py) against requests botocore signs: header and presigned, odd paths
and queries, the scope and clock rules, and every way a signature can be wrong."""

from __future__ import annotations

import datetime
import hashlib
import urllib.parse
from typing import Any

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kubelambda.gateway.auth import sigv4

KEY_ID = "KLAKABCDEFGHIJKLMNOP"
SECRET = "s3cr3t/with+odd=chars"
NOW = datetime.datetime(2026, 12, 5, 4, 30, 0, tzinfo=datetime.UTC)


def _signed_request(
    *,
    url: str = "http://gw.example:8080/2015-03-31/functions/team-a%2Fhello/invocations",
    body: bytes = b'{"x": 1}',
    method: str = "POST",
    headers: dict[str, str] | None = None,
    presign: int | None = None,
    region: str = "us-east-1",
    service: str = "lambda",
    secret: str = SECRET,
    when: datetime.datetime = NOW,
    token: str | None = None,
) -> tuple[dict[str, str], sigv4.Request]:
    """botocore signs; returns the headers as sent (with Host, as HTTP adds it) and what the gateway sees."""
    credentials = Credentials(KEY_ID, secret, token)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    auth: Any = (
        SigV4QueryAuth(credentials, service, region, expires=presign)
        if presign is not None
        else SigV4Auth(credentials, service, region)
    )
    auth._timestamp = when.strftime("%Y%m%dT%H%M%SZ")  # botocore's own hook for a fixed clock
    original = datetime.datetime

    class _Clock(datetime.datetime):
        @classmethod
        def utcnow(cls) -> Any:
            return when.replace(tzinfo=None)

        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return when if tz else when.replace(tzinfo=None)

    import botocore.auth

    botocore.auth.datetime.datetime = _Clock  # type: ignore[misc]
    try:
        auth.add_auth(request)
    finally:
        botocore.auth.datetime.datetime = original  # type: ignore[misc]
    prepared = request.prepare()
    parts = urllib.parse.urlsplit(prepared.url)
    sent = {"Host": parts.netloc, **{k: str(v) for k, v in prepared.headers.items()}}
    return sent, sigv4.Request(
        method=method,
        raw_path=parts.path,
        query=urllib.parse.parse_qsl(parts.query, keep_blank_values=True),
        headers=sent.items(),
        body=body,
    )


def _query(request: sigv4.Request) -> dict[str, str]:
    return dict(request.query)


def _check(
    headers: dict[str, str], request: sigv4.Request, *, secret: str = SECRET, now: datetime.datetime = NOW
) -> sigv4.Signed:
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    sigv4.check_scope(signed, region="us-east-1", now=now)
    sigv4.verify(signed, request, secret)
    return signed


@pytest.mark.parametrize(
    "url",
    [
        "http://gw.example:8080/2015-03-31/functions/team-a%2Fhello/invocations",
        "http://gw.example:8080/2015-03-31/functions/hello/invocations?Qualifier=%24LATEST",
        "http://gw.example/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3Ateam%3Afunction%3Ahi/invocations",
        "http://gw.example:8080/http/team-a/hello/a%20b/c~d/?z=1&a=2&a=1&empty=",
        "http://gw.example:8080/api/team-a/",
    ],
)
def test_header_signatures_from_botocore_verify(url: str) -> None:
    headers, request = _signed_request(
        url=url, headers={"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}
    )
    signed = _check(headers, request)
    assert not signed.presigned
    assert signed.access_key_id == KEY_ID
    assert (signed.region, signed.service, signed.date) == ("us-east-1", "lambda", "20261205")


def test_presigned_url_from_botocore_verifies() -> None:
    headers, request = _signed_request(
        presign=300, url="http://gw.example:8080/http/team-a/hello/x?q=1", method="GET", body=b""
    )
    assert "Authorization" not in headers
    signed = _check(headers, request)
    assert signed.presigned
    assert signed.expires == 300
    # botocore signs the (empty) body's hash outside S3: another body is refused.
    other = sigv4.Request("GET", request.raw_path, request.query, request.headers, b"other")
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(signed, other, SECRET)


def test_presigned_url_expires() -> None:
    headers, request = _signed_request(presign=60, method="GET", body=b"")
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    sigv4.check_scope(signed, region="us-east-1", now=NOW + datetime.timedelta(seconds=60))
    with pytest.raises(sigv4.SignatureError, match="Signature expired"):
        sigv4.check_scope(signed, region="us-east-1", now=NOW + datetime.timedelta(seconds=61))


@pytest.mark.parametrize(
    ("shift", "accepted"),
    [(-14, True), (14, True), (-16, False), (16, False)],
)
def test_clock_skew_is_fifteen_minutes(shift: int, accepted: bool) -> None:
    headers, request = _signed_request(when=NOW + datetime.timedelta(minutes=shift))
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    if accepted:
        sigv4.check_scope(signed, region="us-east-1", now=NOW)
    else:
        with pytest.raises(sigv4.SignatureError, match=r"Signature (expired|not yet current)"):
            sigv4.check_scope(signed, region="us-east-1", now=NOW)


def test_scope_must_be_this_region_and_lambda() -> None:
    headers, request = _signed_request(region="eu-west-1")
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    with pytest.raises(sigv4.SignatureError, match="valid region, not 'eu-west-1'"):
        sigv4.check_scope(signed, region="us-east-1", now=NOW)
    headers, request = _signed_request(service="s3")
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    with pytest.raises(sigv4.SignatureError, match="correct service: 'lambda'"):
        sigv4.check_scope(signed, region="us-east-1", now=NOW)


def test_wrong_secret_is_refused() -> None:
    headers, request = _signed_request(secret="not the secret")
    with pytest.raises(sigv4.SignatureError, match="does not match the signature you provided"):
        _check(headers, request)


def test_a_cached_signing_key_decides_nothing_for_another_request_or_secret() -> None:
    """The derived key is kept per (secret, day, region, service); the signature is still checked every time."""
    headers, request = _signed_request()
    signed = _check(headers, request)  # the key of SECRET for the day is derived and kept
    _check(headers, request)  # and used again
    assert sigv4.signing_key(
        SECRET, signed.date, signed.region, signed.service
    ) == sigv4.signing_key.__wrapped__(SECRET, signed.date, signed.region, signed.service)
    other = sigv4.Request(request.method, request.raw_path, request.query, request.headers, b'{"x": 2}')
    with pytest.raises(sigv4.SignatureError, match="does not match"):
        sigv4.verify(signed, other, SECRET)
    with pytest.raises(sigv4.SignatureError, match="does not match"):
        sigv4.verify(signed, request, "not the secret")


@pytest.mark.parametrize("part", ["body", "path", "query", "method", "signed header", "host"])
def test_any_change_to_a_signed_part_is_refused(part: str) -> None:
    headers, request = _signed_request(
        url="http://gw.example:8080/2015-03-31/functions/hello/invocations?Qualifier=%24LATEST",
        headers={"X-Amz-Log-Type": "Tail"},
    )
    signed = sigv4.parse(headers, _query(request))
    assert signed is not None
    assert "x-amz-log-type" in signed.signed_headers
    changed = dict(headers)
    method, path, query, body = request.method, request.raw_path, list(request.query), request.body
    if part == "body":
        body = b'{"x": 2}'
    elif part == "path":
        path = path.replace("hello", "other")
    elif part == "query":
        query = [("Qualifier", "1")]
    elif part == "method":
        method = "PUT"
    elif part == "signed header":
        changed["X-Amz-Log-Type"] = "None"
    else:
        changed["Host"] = "elsewhere:8080"
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(signed, sigv4.Request(method, path, query, changed.items(), body), SECRET)


def test_content_sha256_header_is_checked_and_unsigned_payload_allowed() -> None:
    body = b'{"big": true}'
    headers, request = _signed_request(
        body=body, headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    )
    _check(headers, request)
    tampered = sigv4.Request(request.method, request.raw_path, request.query, request.headers, b"{}")
    with pytest.raises(sigv4.SignatureError, match="x-amz-content-sha256"):
        _check(headers, tampered)
    headers, request = _signed_request(body=body, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    _check(
        headers, sigv4.Request(request.method, request.raw_path, request.query, request.headers, b"anything")
    )


def test_security_token_is_reported() -> None:
    headers, request = _signed_request(token="session")
    signed = _check(headers, request)
    assert signed.security_token == "session"


def test_unsigned_request_has_no_signature() -> None:
    assert sigv4.parse({"Content-Type": "application/json"}, {}) is None


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (
            "AWS4-HMAC-SHA512 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
            "algorithm",
        ),
        ("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=" + "0" * 64, "requires Credential"),
        (
            "AWS4-HMAC-SHA256 Credential=a/b/c/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
            "Credential",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=x-amz-date, Signature="
            + "0" * 64,
            "host",
        ),
        ("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz", "hex"),
    ],
)
def test_malformed_authorization_names_the_problem(authorization: str, message: str) -> None:
    with pytest.raises(sigv4.SignatureError, match=message):
        sigv4.parse({"Authorization": authorization, "X-Amz-Date": "20261205T043000Z"}, {})


def test_canonical_path_encodes_segments_twice() -> None:
    assert (
        sigv4.canonical_path("/2015-03-31/functions/a%2Fb/invocations")
        == "/2015-03-31/functions/a%252Fb/invocations"
    )
    assert sigv4.canonical_path("") == "/"
    assert sigv4.canonical_path("/a/./b/../c//d/") == "/a/c/d/"
