"""The platform's code store: zips uploaded through the control-plane API (``Code.ZipFile``, or copied from
``S3Bucket``/``S3Key``), content-addressed in an S3-compatible bucket (docs/versions.md, "Code").

A Function made by the API references its zip as ``code.archive {url, sha256}``: the URL is the gateway's own
``/kubelambda/code/<sha256>.zip`` with an HMAC signature (a key derived from the store's secret key, so every
gateway replica shares it) and no expiry. The function's ``fetch-code`` init container downloads it from there;
GetFunction's ``Code.Location`` is the same path signed with an expiry of ten minutes (Lambda's). Whoever may
read the Function may read its code, as in Lambda.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import logging
import re
import time
import urllib.parse
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from kubelambda.api.v1alpha1 import API_VERSION
from kubelambda.gateway.config import GatewaySettings
from kubelambda.kube import ApiError, KubeClient, resource_path

ZIP_MAX_BYTES = 50 * 1024 * 1024  # Lambda's direct upload limit (zipped); fetch-code refuses more too
CODE_PATH = "/kubelambda/code"
LOCATION_SECONDS = 600  # Lambda's Code.Location is valid ten minutes
_KEY_PREFIX = "sha256/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
logger = logging.getLogger(__name__)


class StoreError(Exception):
    """A store call failed: ``code`` is Lambda's error type for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StoredCode:
    sha256: str  # hex
    size: int


def check_zip(data: bytes, field: str) -> None:
    if len(data) > ZIP_MAX_BYTES:
        raise StoreError(
            "RequestEntityTooLargeException",
            f"{field} is {len(data)} bytes; Lambda's limit for a zipped deployment package is {ZIP_MAX_BYTES}",
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if not archive.infolist():
                raise StoreError("InvalidParameterValueException", f"{field}: the archive holds no files")
    except zipfile.BadZipFile as e:
        raise StoreError("InvalidParameterValueException", f"{field}: not a zip archive ({e})") from e


class CodeStore:
    def __init__(self, settings: GatewaySettings) -> None:
        assert settings.code_store_endpoint is not None
        self.settings = settings
        self.endpoint = settings.code_store_endpoint
        self.bucket = settings.code_store_bucket
        secret = settings.code_store_secret_access_key
        self._key = hmac.new(
            (secret.get_secret_value() if secret else "").encode(), b"kubelambda code URLs", hashlib.sha256
        ).digest()
        self._bucket_ready = False
        self._client_lock = asyncio.Lock()
        self._client: Any = None  # one aiobotocore S3 client (its own connection pool), made at first use
        self._exit = contextlib.AsyncExitStack()
        self.clients_made = 0
        """S3 clients made: one per store, however many calls (each client holds its own connection pool)."""

    # ---- signed URLs ----------------------------------------------------------------------------------

    def _signature(self, sha256: str, expires: int) -> str:
        return hmac.new(self._key, f"{sha256}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, sha256: str, *, expires: int = 0) -> str:
        """``<base>/kubelambda/code/<sha256>.zip?expires=..&signature=..`` (``expires`` 0: never)."""
        query = urllib.parse.urlencode({"expires": expires, "signature": self._signature(sha256, expires)})
        return f"{base.rstrip('/')}{CODE_PATH}/{sha256}.zip?{query}"

    def location(self, base: str, sha256: str) -> str:
        return self.url(base, sha256, expires=int(time.time()) + LOCATION_SECONDS)

    def pod_url(self, request: web.Request, sha256: str) -> str:
        """The URL a function's init container downloads from (``code_url``, else where the caller reached us)."""
        return self.url(self.settings.code_url or _base(request), sha256)

    def sha_of_url(self, url: str) -> str | None:
        """The sha256 of a URL :meth:`url` made (with any base), else None."""
        path = urllib.parse.urlsplit(url).path
        if not path.startswith(CODE_PATH + "/") or not path.endswith(".zip"):
            return None
        sha = path[len(CODE_PATH) + 1 : -len(".zip")]
        return sha if len(sha) == 64 else None

    # ---- S3 -------------------------------------------------------------------------------------------

    async def client(self) -> Any:
        """This store's S3 client, made at the first call and kept until :meth:`close` (a client per call made
        a connection pool, a TLS handshake and botocore's service model each time)."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
                from aiobotocore.session import get_session  # type: ignore[import-untyped]

                s = self.settings
                secret = s.code_store_secret_access_key
                made = get_session().create_client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=s.code_store_region,
                    aws_access_key_id=s.code_store_access_key_id,
                    aws_secret_access_key=secret.get_secret_value() if secret else None,
                    config=AioConfig(
                        s3={"addressing_style": "path"},
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=60,
                    ),
                )
                self._client = await self._exit.enter_async_context(made)
                self.clients_made += 1
        return self._client

    async def close(self) -> None:
        """Closes the S3 client (the gateway's shutdown); a later call makes a new one."""
        async with self._client_lock:
            self._client = None
            await self._exit.aclose()
            self._exit = contextlib.AsyncExitStack()

    async def _ensure_bucket(self, client: Any) -> None:
        if self._bucket_ready:
            return

        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                await client.create_bucket(Bucket=self.bucket)
            except ClientError as e:
                if _s3_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_ready = True

    async def put(self, data: bytes) -> StoredCode:
        """Stores a zip under its sha256 (once: an object already there is the same bytes). An object older than
        half the collector's grace period is written again, so that its age restarts: the Function that will
        reference it is written well within the grace period (:class:`CodeCollector`)."""

        sha = hashlib.sha256(data).hexdigest()
        key = _KEY_PREFIX + sha + ".zip"
        try:
            client = await self.client()
            await self._ensure_bucket(client)
            try:
                head = await client.head_object(Bucket=self.bucket, Key=key)
                age = time.time() - head["LastModified"].timestamp()
                fresh = age < self.settings.code_store_gc_grace_seconds / 2
            except ClientError:
                fresh = False
            if not fresh:
                await client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as e:
            raise StoreError(
                "ServiceException", f"The code store at {self.endpoint} refused the zip: {e}"
            ) from e
        return StoredCode(sha, len(data))

    async def read_source(self, bucket: str, key: str, version: str | None) -> bytes:
        """The zip a CreateFunction / UpdateFunctionCode names with S3Bucket/S3Key/S3ObjectVersion."""

        allowed = self.settings.code_store_source_buckets
        if bucket not in allowed:
            raise StoreError(
                "InvalidParameterValueException",
                f"S3Bucket: {bucket!r} is not a bucket this platform reads code from "
                f"(KUBELAMBDA_GATEWAY_CODE_STORE_SOURCE_BUCKETS: {', '.join(allowed) or 'none'})",
            )
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version:
            args["VersionId"] = version
        try:
            client = await self.client()
            answer = await client.get_object(**args)
            async with answer["Body"] as body:
                if int(answer.get("ContentLength", 0)) > ZIP_MAX_BYTES:
                    raise StoreError(
                        "InvalidParameterValueException",
                        f"S3Key: s3://{bucket}/{key} is {answer['ContentLength']} bytes; the limit for a "
                        f"zip is {ZIP_MAX_BYTES}",
                    )
                data: bytes = await body.read()
        except ClientError as e:
            raise StoreError(
                "InvalidParameterValueException",
                f"Error occurred while GetObject. S3 Error Code: {_s3_code(e)}. S3 Error Message: "
                f"s3://{bucket}/{key}{f' version {version}' if version else ''}: {e}",
            ) from e
        except BotoCoreError as e:
            raise StoreError("ServiceException", f"The code store at {self.endpoint}: {e}") from e
        return data

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """``GET /kubelambda/code/<sha256>.zip``: the zip, for a valid signature that has not expired."""

        sha = request.match_info["sha256"]
        try:
            expires = int(request.query.get("expires", ""))
        except ValueError:
            raise web.HTTPForbidden(text="expires: not an integer") from None
        given = request.query.get("signature", "")
        if not hmac.compare_digest(given, self._signature(sha, expires)):
            raise web.HTTPForbidden(text="signature: does not match this code URL")
        if expires and expires < time.time():
            raise web.HTTPForbidden(text="expires: this code URL has expired; get the function again")
        try:
            client = await self.client()
            answer = await client.get_object(Bucket=self.bucket, Key=_KEY_PREFIX + sha + ".zip")
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/zip",
                    "Content-Length": str(answer["ContentLength"]),
                }
            )
            try:
                await response.prepare(request)
                async with answer["Body"] as body:
                    while chunk := await body.read(256 * 1024):
                        await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                # The downloader went away (a pod's init container stopped, a client gave up): nothing to
                # answer, and no "unexpected error" either.
                logger.info("The download of zip %s ended: the client closed the connection", sha)
            return response
        except ClientError as e:
            if _s3_code(e) in ("NoSuchKey", "404"):
                raise web.HTTPNotFound(text=f"no zip {sha} in the code store") from e
            raise web.HTTPBadGateway(text=f"the code store: {e}") from e
        except BotoCoreError as e:
            raise web.HTTPBadGateway(text=f"the code store: {e}") from e

    async def stored(self) -> dict[str, float]:
        """Every zip of the store: sha256 → when it was last written (Unix time)."""
        found: dict[str, float] = {}
        client = await self.client()
        await self._ensure_bucket(client)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=_KEY_PREFIX)
        async for page in pages:
            for item in page.get("Contents") or []:
                sha = str(item["Key"])[len(_KEY_PREFIX) :].removesuffix(".zip")
                if _SHA256.match(sha):
                    found[sha] = item["LastModified"].timestamp()
        return found

    async def delete(self, shas: list[str]) -> None:
        client = await self.client()
        for sha in shas:
            await client.delete_object(Bucket=self.bucket, Key=_KEY_PREFIX + sha + ".zip")


class CodeCollector:
    """Deletes the zips no Function references (docs/versions.md, "Code"): every ``interval`` seconds, when
    ``is_collector()`` (the leader replica; every replica runs the loop, one acts), it lists the store, then every
    Function (``$LATEST`` and published versions; an alias names versions, which are Functions), and deletes each
    zip that no ``spec.code.archive.sha256`` names and that was written more than ``grace`` seconds ago. The store
    is listed first: a zip stored after that listing is not a candidate, and one stored before it (or written again
    by :meth:`CodeStore.put`) is younger than the grace period while its Function is being written."""

    def __init__(
        self, store: CodeStore, kube: KubeClient, *, is_collector: Callable[[], bool] = lambda: True
    ) -> None:
        self.store = store
        self.kube = kube
        self.is_collector = is_collector
        self.interval = store.settings.code_store_gc_interval_seconds
        self.grace = store.settings.code_store_gc_grace_seconds
        self.passes = 0
        """Passes completed (this replica's)."""
        self.last_pass_started = 0.0
        """Unix time the last completed pass listed the store."""
        self.deleted = 0

    async def referenced(self) -> set[str]:
        listed = await self.kube.list(resource_path(API_VERSION, "functions"))
        out: set[str] = set()
        for item in listed.get("items", []):
            archive = ((item.get("spec") or {}).get("code") or {}).get("archive") or {}
            sha = archive.get("sha256")
            if isinstance(sha, str):
                out.add(sha.lower())
        return out

    async def collect(self) -> list[str]:
        """One pass; the sha256s it deleted."""
        started = time.time()
        stored = await self.store.stored()
        referenced = await self.referenced()
        doomed = sorted(
            sha for sha, written in stored.items() if sha not in referenced and written < started - self.grace
        )
        if doomed:
            await self.store.delete(doomed)
            logger.info("Deleted %d zip(s) no Function references from the code store", len(doomed))
        self.deleted += len(doomed)
        self.passes += 1
        self.last_pass_started = started
        return doomed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.is_collector():
                continue
            try:
                await self.collect()
            except (ClientError, BotoCoreError, ApiError, OSError) as e:
                logger.warning(
                    "The code store's collector could not finish a pass (next in %.0f s): %s",
                    self.interval,
                    e,
                )
            except Exception:  # never the gateway's end: the next pass tries again
                logger.exception("The code store's collector failed a pass (next in %.0f s)", self.interval)


def _s3_code(e: Any) -> str:
    return str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
