"""``kubelambda fetch-code``: the init container that puts a Function's zip into ``/var/task``.

The operator adds it to the pod of a Function whose ``spec.code`` is ``archive {url, sha256}`` or
``s3 {endpoint, bucket, key, sha256?, region, credentialsSecret?}`` (``resources/deployment.py``). It:

1. downloads the zip over HTTP(S) (redirects followed), or with an S3 GetObject signed with AWS Signature
   Version 4 from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN`` too when set;
   unsigned when neither is set), path-style, no redirects; at most 50 MiB, like Lambda's zip limit;
2. checks its SHA-256 against the hex digest given (always for ``archive``, when given for ``s3``);
3. empties the target folder and unpacks the zip into it: absolute names and ``..`` are refused, at most
   250 MiB unpacked (Lambda's limit), files are 0644 or 0755 from the zip's Unix mode (``bootstrap`` stays
   executable), symbolic links are kept only when they resolve inside the folder, through the links written
   before them too (``a -> x/..`` with ``x -> .`` is refused).

Every connection (the first and each redirect's) goes only to an address that is not loopback, link-local (cloud
metadata), unspecified or the API server's (``KUBERNETES_SERVICE_HOST``), unless ``--allow-cidr`` names its range
(kubelambda/egress.py; the operator passes its ``KUBELAMBDA_URL_ALLOW_CIDRS``).

The standard library does it all (urllib, hashlib, hmac, zipfile): the control-plane image needs no AWS SDK for
one GET. On the local node, ``$KUBELAMBDA_ROOTFS`` is the container's root and the target path is taken under
it. Any failure ends with exit status 1 and one line on stderr naming what went wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import io
import json
import os
import re
import shutil
import socket
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kubelambda.egress import AddressPolicy, api_server_addresses

MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024
TIMEOUT = 60.0  # seconds per socket operation
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 16


class FetchError(Exception):
    """A failure to report on one line; the command exits with status 1."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials | None:
        """``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``); None when neither is set."""
        access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        if not access and not secret:
            return None
        if not access or not secret:
            missing = "AWS_ACCESS_KEY_ID" if not access else "AWS_SECRET_ACCESS_KEY"
            raise FetchError(f"{missing} is empty or unset while the other S3 credential is set")
        return cls(access, secret, env.get("AWS_SESSION_TOKEN") or None)


@dataclass(frozen=True)
class Unpacked:
    files: int
    bytes: int


# ---- paths -----------------------------------------------------------------------------------------


def target_dir(dest: str, env: Mapping[str, str]) -> Path:
    """``dest`` as seen by this container: under ``$KUBELAMBDA_ROOTFS`` when set (the local node)."""
    rootfs = env.get("KUBELAMBDA_ROOTFS")
    return Path(rootfs) / dest.lstrip("/") if rootfs else Path(dest)


# ---- download --------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Signed requests never follow a redirect: the Authorization header would go along with it."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _checked_connect(policy: AddressPolicy) -> Callable[..., socket.socket]:
    """``socket.create_connection`` that connects only to addresses ``policy`` lets through."""

    def connect(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        host, port = address
        error: OSError | None = None
        for family, ip in policy.resolve(host, port):  # Refused (an OSError) when any address is refused
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if isinstance(timeout, int | float):  # else http.client's "no timeout given" marker
                    sock.settimeout(timeout)
                sock.connect((ip, port))
                return sock
            except OSError as e:
                sock.close()
                error = e
        assert error is not None
        raise error

    return connect


def _opener(policy: AddressPolicy, *, follow_redirects: bool) -> urllib.request.OpenerDirector:
    """urllib's opener whose HTTP and HTTPS connections (each redirect's too) go through :func:`_checked_connect`
    (HTTPS still verifies the certificate for the URL's host name)."""
    connect = _checked_connect(policy)

    class Http(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class Https(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Https, req, context=self._context)  # type: ignore[attr-defined]

    handlers: list[Any] = [HttpHandler(), HttpsHandler()]
    if not follow_redirects:
        handlers.append(_NoRedirect())
    return urllib.request.build_opener(*handlers)


def _read_capped(read: Callable[[int], bytes], length: str | None, *, what: str, limit: int) -> bytes:
    if length is not None and length.isdigit() and int(length) > limit:
        raise FetchError(f"{what} is {int(length)} bytes, over the {limit}-byte limit for a zipped function")
    out = bytearray()
    while chunk := read(_CHUNK):
        out += chunk
        if len(out) > limit:
            raise FetchError(f"{what} is over the {limit}-byte limit for a zipped function")
    return bytes(out)


def _s3_error(body: bytes) -> str:
    text = body[:4096].decode(errors="replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return ": ".join(m.group(1) for m in (code, message) if m is not None)


def http_get(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    what: str,
    limit: int = MAX_ZIPPED,
    follow_redirects: bool = True,
    timeout: float = TIMEOUT,
    policy: AddressPolicy | None = None,
) -> bytes:
    """The body of a GET of ``url``, at most ``limit`` bytes; a FetchError names the status or the failure.
    ``policy``: the addresses refused (default: :func:`default_policy` with nothing allowed)."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method="GET")
    opener = _opener(policy or default_policy(()), follow_redirects=follow_redirects)
    try:
        with opener.open(request, timeout=timeout) as resp:
            return _read_capped(resp.read, resp.headers.get("Content-Length"), what=what, limit=limit)
    except urllib.error.HTTPError as e:
        detail = _s3_error(e.read()) if e.headers.get("Content-Type", "").endswith("xml") else ""
        raise FetchError(f"{what}: HTTP {e.code} {e.reason}{f' ({detail})' if detail else ''}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise FetchError(f"{what}: {reason}") from None


def default_policy(allow: Sequence[str], env: Mapping[str, str] = os.environ) -> AddressPolicy:
    """Refuses loopback, link-local, metadata and the API server (``KUBERNETES_SERVICE_HOST``) but ``allow``."""
    from kubelambda.egress import parse_cidrs

    try:
        allowed = parse_cidrs(allow)
    except ValueError as e:
        raise FetchError(f"--allow-cidr: {e}") from None
    return AddressPolicy(allow=allowed, api_server=api_server_addresses(None, env), setting="--allow-cidr")


# ---- S3 (Signature Version 4) ----------------------------------------------------------------------


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_headers(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    region: str,
    credentials: Credentials,
    now: dt.datetime,
    service: str = "s3",
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """``headers`` plus ``Host``, ``x-amz-date``, ``x-amz-content-sha256`` and the SigV4 ``Authorization``.

    The URL's path must already be URI-encoded as S3 expects (each segment once, ``/`` kept).
    """
    parts = urllib.parse.urlsplit(url)
    amz_date = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {
        **headers,
        "Host": parts.netloc,
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_sha256,
    }
    if credentials.session_token:
        out["x-amz-security-token"] = credentials.session_token
    canonical = {k.lower(): " ".join(v.strip().split()) for k, v in out.items()}
    signed = ";".join(sorted(canonical))
    query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{k}:{canonical[k]}\n" for k in sorted(canonical)),
            signed,
            payload_sha256,
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + credentials.secret_key).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return out


def s3_object_url(endpoint: str, bucket: str, key: str) -> str:
    """Path-style: ``<endpoint>/<bucket>/<key>``, the key URI-encoded once with ``/`` kept."""
    return f"{endpoint.rstrip('/')}/{bucket}/{urllib.parse.quote(key, safe='/-_.~')}"


def s3_get(
    endpoint: str,
    bucket: str,
    key: str,
    *,
    region: str,
    credentials: Credentials | None,
    limit: int = MAX_ZIPPED,
    now: dt.datetime | None = None,
    policy: AddressPolicy | None = None,
) -> bytes:
    url = s3_object_url(endpoint, bucket, key)
    headers: dict[str, str] = {}
    if credentials is not None:
        headers = sigv4_headers(
            "GET", url, headers={}, region=region, credentials=credentials, now=now or dt.datetime.now(dt.UTC)
        )
    what = f"S3 GetObject s3://{bucket}/{key} at {endpoint}"
    return http_get(url, headers=headers, what=what, limit=limit, follow_redirects=False, policy=policy)


# ---- checksum and unpacking ------------------------------------------------------------------------


def verify_sha256(data: bytes, expected: str | None, *, what: str) -> str:
    """The hex SHA-256 of ``data``; a FetchError naming both digests when it is not ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and actual != expected.lower():
        raise FetchError(f"SHA-256 mismatch for {what}: expected {expected.lower()}, got {actual}")
    return actual


def _checked_name(name: str) -> PurePosixPath:
    if "\x00" in name or "\\" in name:
        raise FetchError(f"refusing zip entry {name!r}: NUL or backslash in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise FetchError(f"refusing zip entry {name!r}: absolute path")
    if ".." in path.parts:
        raise FetchError(f"refusing zip entry {name!r}: '..' would leave the target folder")
    return path


def _empty(folder: Path) -> None:
    """Removes what ``folder`` holds (a restarted init container starts over), not the folder itself."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _inside(root: Path, link: Path) -> bool:
    resolved = Path(os.path.realpath(link))
    return resolved == root or root in resolved.parents


def unpack(
    data: bytes,
    dest: Path,
    *,
    limit: int = MAX_UNZIPPED,
    merge: bool = False,
    reserved: frozenset[str] = frozenset(),
) -> Unpacked:
    """Unpacks the zip ``data`` into ``dest`` (emptied first); see the module docstring for the rules.

    With ``merge`` (a layer over the layers before it) ``dest`` is not emptied and the zip's files replace what
    is there; an entry whose first path part is in ``reserved`` is refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise FetchError(f"not a zip archive: {e}") from None
    with archive:
        infos = archive.infolist()
        entries = [(info, _checked_name(info.filename)) for info in infos]  # all names checked before writing
        for info, name in entries:
            if name.parts and name.parts[0] in reserved:
                raise FetchError(f"refusing zip entry {info.filename!r}: {name.parts[0]}/ is reserved")
        declared = sum(info.file_size for info in infos)
        if declared > limit:
            raise FetchError(f"the zip unpacks to {declared} bytes, over the {limit}-byte limit")
        if not dest.is_dir():
            raise FetchError(f"target folder {dest} does not exist")
        if not merge:
            _empty(dest)
        root = dest.resolve()
        seen: set[str] = set()
        written = files = 0
        links: list[tuple[Path, str, str]] = []
        for info, name in entries:
            mode = info.external_attr >> 16
            target = root.joinpath(*name.parts) if name.parts else root
            if info.is_dir():
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if merge:
                if info.filename.rstrip("/") in seen:
                    raise FetchError(f"zip entry {info.filename!r} appears twice")
                seen.add(info.filename.rstrip("/"))
                _replace(target)
            if stat.S_ISLNK(mode):
                links.append((target, archive.read(info).decode(errors="surrogateescape"), info.filename))
                continue
            perms = 0o755 if mode & 0o111 else 0o644
            try:
                with archive.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > limit:
                            raise FetchError(f"the zip unpacks to over the {limit}-byte limit")
                        out.write(chunk)
            except FileExistsError:
                raise FetchError(f"zip entry {info.filename!r} appears twice") from None
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
                raise FetchError(f"cannot unpack zip entry {info.filename!r}: {e}") from None
            os.chmod(target, perms)
            files += 1
        # Links last, so no file above was written through one. Each must resolve inside the folder when written,
        # and again once all are written: ``a -> x/..`` passes alone while ``x`` is missing, and leaves the
        # folder once ``x -> .`` exists.
        for target, link, entry in links:
            if os.path.isabs(link):
                raise FetchError(f"refusing zip symlink {entry!r} -> {link!r}: absolute target")
            os.symlink(link, target)
            if not _inside(root, target):
                target.unlink()
                raise FetchError(f"refusing zip symlink {entry!r} -> {link!r}: it leaves the target folder")
            files += 1
        for target, link, entry in links:
            if not _inside(root, target):
                for made, _, _ in links:
                    made.unlink(missing_ok=True)
                raise FetchError(
                    f"refusing zip symlink {entry!r} -> {link!r}: it leaves the target folder through the "
                    "zip's other symlinks"
                )
    return Unpacked(files=files, bytes=written)


def _replace(target: Path) -> None:
    """Makes room for a file of a later layer: what an earlier layer put there goes."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


# ---- the command -----------------------------------------------------------------------------------


def fetch(
    *,
    dest: str,
    env: Mapping[str, str],
    url: str | None = None,
    sha256: str | None = None,
    s3_endpoint: str | None = None,
    bucket: str | None = None,
    key: str | None = None,
    region: str = "us-east-1",
    allow_cidrs: Sequence[str] = (),
) -> str:
    """Fetches, checks and unpacks; returns the line to print on success."""
    policy = default_policy(allow_cidrs, env)
    if (url is None) == (s3_endpoint is None):
        raise FetchError("give exactly one of --url or --s3-endpoint")
    if url is not None:
        if not sha256:
            raise FetchError("--url needs --sha256")
        what = url
        data = http_get(url, what=f"GET {url}", policy=policy)
    else:
        assert s3_endpoint is not None
        if not bucket or not key:
            raise FetchError("--s3-endpoint needs --bucket and --key")
        what = f"s3://{bucket}/{key}"
        data = s3_get(
            s3_endpoint, bucket, key, region=region, credentials=Credentials.from_env(env), policy=policy
        )
    digest = verify_sha256(data, sha256, what=what)
    folder = target_dir(dest, env)
    unpacked = unpack(data, folder)
    return (
        f"fetched {what} ({len(data)} bytes, sha256 {digest}): "
        f"{unpacked.files} files, {unpacked.bytes} bytes into {dest}"
    )


def main(
    *,
    dest: str,
    url: str | None,
    sha256: str | None,
    s3_endpoint: str | None,
    bucket: str | None,
    key: str | None,
    region: str,
    allow_cidrs: Sequence[str] = (),
) -> int:
    try:
        line = fetch(
            dest=dest,
            env=os.environ,
            url=url,
            sha256=sha256,
            s3_endpoint=s3_endpoint,
            bucket=bucket,
            key=key,
            region=region,
            allow_cidrs=allow_cidrs,
        )
    except FetchError as e:
        print(f"kubelambda fetch-code: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kubelambda fetch-code: {e}", file=sys.stderr)
        return 1
    print(line, flush=True)
    return 0


# ---- layers ----------------------------------------------------------------------------------------

RESERVED_OPT = frozenset({"kubelambda"})  # /opt/kubelambda holds the agent and the runtime client


def fetch_layers(
    *, dest: str, layers: list[dict[str, str]], env: Mapping[str, str], allow_cidrs: Sequence[str] = ()
) -> list[str]:
    """Fetches and unpacks a Function's layers into ``dest`` in order, a later layer overwriting an earlier one's
    files; together at most 250 MiB unpacked. Each layer is ``{"url", "sha256"}``, ``{"s3Endpoint", "bucket",
    "key", "region", "sha256"?, "credentialsPrefix"?}`` (credentials from ``<prefix>AWS_ACCESS_KEY_ID`` ...) or
    ``{"file", "sha256"?}`` (a zip already in this container, from a ConfigMap). Returns a line per layer."""
    policy = default_policy(allow_cidrs, env)
    folder = target_dir(dest, env)
    if not folder.is_dir():
        raise FetchError(f"target folder {dest} does not exist")
    _empty(folder)  # a restarted init container starts over
    budget = MAX_UNZIPPED
    lines = []
    for i, layer in enumerate(layers, 1):
        sha256 = layer.get("sha256") or None
        if "url" in layer:
            if not sha256:
                raise FetchError(f"layer {i}: a url needs a sha256")
            what = layer["url"]
            data = http_get(what, what=f"layer {i}: GET {what}", policy=policy)
        elif "s3Endpoint" in layer:
            prefix = layer.get("credentialsPrefix", "")
            creds = Credentials.from_env(
                {k[len(prefix) :]: v for k, v in env.items() if prefix and k.startswith(prefix)}
            )
            what = f"s3://{layer['bucket']}/{layer['key']}"
            data = s3_get(
                layer["s3Endpoint"],
                layer["bucket"],
                layer["key"],
                region=layer.get("region", "us-east-1"),
                credentials=creds,
                policy=policy,
            )
        elif "file" in layer:
            what = layer["file"]
            path = target_dir(what, env)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise FetchError(f"layer {i}: {what}: {e.strerror}") from None
            if len(data) > MAX_ZIPPED:
                raise FetchError(f"layer {i}: {what} is over the {MAX_ZIPPED}-byte limit for a zip")
        else:
            raise FetchError(f"layer {i}: want url, s3Endpoint or file, got {sorted(layer)}")
        digest = verify_sha256(data, sha256, what=f"layer {i} ({what})")
        try:
            unpacked = unpack(data, folder, limit=budget, merge=True, reserved=RESERVED_OPT)
        except FetchError as e:
            raise FetchError(f"layer {i} ({what}): {e}") from None
        # A link of an earlier layer may leave the folder through one of this layer's.
        root = folder.resolve()
        for path in [Path(d) / n for d, dirs, names in os.walk(folder) for n in (*dirs, *names)]:
            if path.is_symlink() and not _inside(root, path):
                raise FetchError(
                    f"layer {i} ({what}): symlink {path.relative_to(folder)} leaves the target folder"
                )
        budget -= unpacked.bytes
        lines.append(
            f"layer {i}: {what} ({len(data)} bytes, sha256 {digest}): "
            f"{unpacked.files} files, {unpacked.bytes} bytes into {dest}"
        )
    return lines


def main_layers(*, dest: str, layers_json: str, allow_cidrs: Sequence[str] = ()) -> int:
    try:
        layers = json.loads(layers_json)
        if not isinstance(layers, list) or not all(
            isinstance(x, dict) and all(isinstance(v, str) for v in x.values()) for x in layers
        ):
            raise FetchError("--layers must be a JSON array of objects of strings")
        for line in fetch_layers(dest=dest, layers=layers, env=os.environ, allow_cidrs=allow_cidrs):
            print(line, flush=True)
    except json.JSONDecodeError as e:
        print(f"kubelambda fetch-layers: --layers is not JSON: {e}", file=sys.stderr)
        return 1
    except (FetchError, OSError) as e:
        print(f"kubelambda fetch-layers: {e}", file=sys.stderr)
        return 1
    return 0
