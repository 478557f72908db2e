"""AWS Signature Version 4, verified as AWS verifies it (the signer side is botocore's; this is ours).

A request carries its signature either in the ``Authorization`` header
(``AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/lambda/aws4_request, SignedHeaders=..., Signature=...``)
or in a presigned query string (``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
``X-Amz-SignedHeaders``, ``X-Amz-Signature``). :func:`parse` reads either into a :class:`Signed`, and
:func:`verify` recomputes the signature from the request and the key's secret:

- the canonical request: method, the path with every segment URI-encoded a second time (every service but S3),
  the query string (names and values encoded per RFC 3986, sorted; without ``X-Amz-Signature``), the signed
  headers (lower-case names, values trimmed with inner runs of spaces folded), their names, and the payload hash
  (``x-amz-content-sha256`` when sent, which may be ``UNSIGNED-PAYLOAD``, else the SHA-256 of the body; a
  presigned URL may also be signed over ``UNSIGNED-PAYLOAD``, as S3-style presigners do);
- the string to sign over the scope ``<date>/<region>/<service>/aws4_request``;
- the key derived from the secret by HMAC over date, region, service and ``aws4_request``.

The scope must name this gateway's region and the service ``lambda``, its date must be the request's date, and
the request's time must be within 15 minutes of ours (a presigned URL: not expired, and not from the future).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "lambda"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW = datetime.timedelta(minutes=15)
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600  # AWS: a week
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_SPACES = re.compile(r" +")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SignatureError(Exception):
    """The request is signed wrongly; ``code`` is the Lambda error (InvalidSignatureException, or
    IncompleteSignatureException folded into it, as Lambda answers both with 403)."""

    def __init__(self, message: str, *, code: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Signed:
    """What a signed request claims: who (access key id), when, where (scope) and what it signed."""

    access_key_id: str
    date: str  # the scope's date, YYYYMMDD
    region: str
    service: str
    amz_date: str  # the request time, YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    expires: int | None = None  # presigned only, seconds
    security_token: str | None = None

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request a signature covers, as received (``raw_path`` still percent-encoded)."""

    method: str
    raw_path: str
    query: Iterable[tuple[str, str]]  # decoded names and values, in order, repeated names kept
    headers: Iterable[tuple[str, str]]  # as received, repeated names kept
    body: bytes


def parse(headers: Mapping[str, str], query: Mapping[str, str]) -> Signed | None:
    """The signature a request carries, or None when it carries none. Raises :class:`SignatureError` for a
    malformed one (Lambda: IncompleteSignatureException, answered as InvalidSignatureException here)."""
    authorization = headers.get("Authorization")
    if authorization is not None and authorization.startswith("AWS4-"):
        return _parse_header(authorization, headers)
    if "X-Amz-Signature" in query or "X-Amz-Credential" in query:
        return _parse_query(query)
    return None


def _parse_header(authorization: str, headers: Mapping[str, str]) -> Signed:
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(f"Unsupported signing algorithm {algorithm!r}: only {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"Authorization header field {part.strip()!r} is not name=value")
        fields[name] = value
    missing = [f for f in ("Credential", "SignedHeaders", "Signature") if f not in fields]
    if missing:
        raise SignatureError(f"Authorization header requires {', '.join(missing)}")
    amz_date = headers.get("X-Amz-Date")
    if amz_date is None:
        raise SignatureError("Authorization header requires an X-Amz-Date header")
    return _signed(
        credential=fields["Credential"],
        signed_headers=fields["SignedHeaders"],
        signature=fields["Signature"],
        amz_date=amz_date,
        presigned=False,
        security_token=headers.get("X-Amz-Security-Token"),
    )


def _parse_query(query: Mapping[str, str]) -> Signed:
    missing = [
        f
        for f in (
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
            "X-Amz-Expires",
        )
        if f not in query
    ]
    if missing:
        raise SignatureError(f"A presigned request requires the query parameters {', '.join(missing)}")
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise SignatureError(f"Unsupported X-Amz-Algorithm {query['X-Amz-Algorithm']!r}: only {ALGORITHM}")
    try:
        expires = int(query["X-Amz-Expires"])
    except ValueError:
        raise SignatureError(f"X-Amz-Expires {query['X-Amz-Expires']!r} is not a number of seconds") from None
    if not 1 <= expires <= MAX_PRESIGNED_EXPIRES:
        raise SignatureError(f"X-Amz-Expires must be 1..{MAX_PRESIGNED_EXPIRES} seconds, not {expires}")
    return _signed(
        credential=query["X-Amz-Credential"],
        signed_headers=query["X-Amz-SignedHeaders"],
        signature=query["X-Amz-Signature"],
        amz_date=query["X-Amz-Date"],
        presigned=True,
        expires=expires,
        security_token=query.get("X-Amz-Security-Token"),
    )


def _signed(
    *,
    credential: str,
    signed_headers: str,
    signature: str,
    amz_date: str,
    presigned: bool,
    expires: int | None = None,
    security_token: str | None = None,
) -> Signed:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise SignatureError(
            f"Credential {credential!r} must be <access key id>/<date>/<region>/<service>/aws4_request"
        )
    names = tuple(signed_headers.split(";"))
    if not signed_headers or any(n != n.lower() or not n for n in names):
        raise SignatureError(f"SignedHeaders {signed_headers!r} must be lower-case names joined by ';'")
    if "host" not in names:
        raise SignatureError("SignedHeaders must include host")
    if not re.fullmatch(r"[0-9a-f]{64}", signature):
        raise SignatureError("Signature must be 64 lower-case hex digits")
    return Signed(
        access_key_id=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        amz_date=amz_date,
        signed_headers=names,
        signature=signature,
        presigned=presigned,
        expires=expires,
        security_token=security_token,
    )


def check_scope(signed: Signed, *, region: str, now: datetime.datetime) -> None:
    """The scope, the date and the clock: raises :class:`SignatureError` as AWS words it."""
    try:
        when = datetime.datetime.strptime(signed.amz_date, _TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise SignatureError(
            f"X-Amz-Date {signed.amz_date!r} must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'"
        ) from None
    if signed.service != SERVICE:
        raise SignatureError(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if signed.region != region:
        raise SignatureError(f"Credential should be scoped to a valid region, not '{signed.region}'.")
    if signed.date != signed.amz_date[:8]:
        raise SignatureError(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{signed.date}' != '{signed.amz_date[:8]}'"
        )
    stamp = now.strftime(_TIME_FORMAT)
    if signed.presigned:
        assert signed.expires is not None
        if when - now > MAX_SKEW:
            raise SignatureError(f"Signature not yet current: {signed.amz_date} is still later than {stamp}")
        if now > when + datetime.timedelta(seconds=signed.expires):
            raise SignatureError(
                f"Signature expired: {signed.amz_date} + {signed.expires} s is now earlier than {stamp}"
            )
    elif when < now - MAX_SKEW:
        earliest = (now - MAX_SKEW).strftime(_TIME_FORMAT)
        raise SignatureError(
            f"Signature expired: {signed.amz_date} is now earlier than {earliest} ({stamp} - 15 min.)"
        )
    elif when > now + MAX_SKEW:
        latest = (now + MAX_SKEW).strftime(_TIME_FORMAT)
        raise SignatureError(
            f"Signature not yet current: {signed.amz_date} is still later than {latest} ({stamp} + 15 min.)"
        )


def verify(signed: Signed, request: Request, secret: str) -> None:
    """Recomputes the signature with ``secret``; raises :class:`SignatureError` when it differs.

    A presigned request without ``x-amz-content-sha256`` may have been signed over the body's hash (botocore,
    every service but S3) or over ``UNSIGNED-PAYLOAD`` (S3-style presigners): either is accepted."""
    expected = signature(signed, request, secret)
    if hmac.compare_digest(expected, signed.signature):
        return
    no_claim = not any(name.lower() == "x-amz-content-sha256" for name, _ in request.headers)
    if signed.presigned and no_claim:
        expected = signature(signed, request, secret, payload_hash=UNSIGNED_PAYLOAD)
        if hmac.compare_digest(expected, signed.signature):
            return
    raise SignatureError(
        "The request signature we calculated does not match the signature you provided. Check your AWS "
        "Secret Access Key and signing method. Consult the service documentation for details."
    )


def signature(signed: Signed, request: Request, secret: str, *, payload_hash: str | None = None) -> str:
    canonical = canonical_request(signed, request, payload_hash=payload_hash)
    to_sign = "\n".join(
        (ALGORITHM, signed.amz_date, signed.scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    key = signing_key(secret, signed.date, signed.region, signed.service)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The key derived from ``secret`` for a day, region and service: four HMACs, kept (as AWS SDKs keep theirs)
    for the next requests of that key that day; a request's signature is still computed and compared every
    time, only the key it is computed with is reused."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(signed: Signed, request: Request, *, payload_hash: str | None = None) -> str:
    headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    lines = []
    for name in signed.signed_headers:
        if name not in headers:
            raise SignatureError(f"The header {name!r} is named in SignedHeaders but not in the request")
        lines.append(f"{name}:{','.join(headers[name])}\n")
    return "\n".join(
        (
            request.method.upper(),
            canonical_path(request.raw_path),
            canonical_query(request.query),
            "".join(lines),
            ";".join(signed.signed_headers),
            payload_hash or _payload_hash(headers, request.body),
        )
    )


def _payload_hash(headers: Mapping[str, list[str]], body: bytes) -> str:
    claimed = headers.get("x-amz-content-sha256")
    if claimed is None:
        return hashlib.sha256(body).hexdigest()
    value = claimed[0]
    if value == UNSIGNED_PAYLOAD:
        return value
    if not _HEX64.match(value):
        raise SignatureError(
            f"x-amz-content-sha256 must be {UNSIGNED_PAYLOAD} or a hex SHA-256, not {value!r}"
        )
    if not hmac.compare_digest(value, hashlib.sha256(body).hexdigest()):
        raise SignatureError("The provided 'x-amz-content-sha256' header does not match what was computed.")
    return value


def canonical_path(raw_path: str) -> str:
    """Dot segments and empty segments removed, then every byte but unreserved ones and ``/`` encoded (again:
    the path arrives encoded once, so ``a%2Fb`` becomes ``a%252Fb``, as every SDK signs it outside S3)."""
    if not raw_path:
        return "/"
    kept: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    path = "/" + "/".join(kept)
    if raw_path.endswith("/") and kept:
        path += "/"
    return urllib.parse.quote(path, safe="/~")


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    pairs = sorted((_encode(name), _encode(value)) for name, value in query if name != "X-Amz-Signature")
    return "&".join(f"{name}={value}" for name, value in pairs)


def _encode(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")
