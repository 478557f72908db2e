"""A small asyncio client for the Kubernetes REST API, built on aiohttp.

Objects are plain dicts, exactly what the API server sends; 404 and 409 surface as :class:`ApiError` with
``status`` set, and ``get_or_none`` turns a 404 into ``None``.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp
import yaml

from kubelambda.jsonobj import JSON

PatchType = Literal["merge", "strategic", "json"]
_PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}
_IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``reason`` the API Status reason (NotFound, Conflict...)."""

    def __init__(self, status: int, reason: str, message: str, *, body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: JSON


def resource_path(
    api_version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/ns/pods/name/status`` and its ``/apis/<group>/<version>`` equivalent."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _materialize(data_b64: str | None, path: str | None, tmpdir: Path, stem: str) -> str | None:
    if data_b64:
        target = tmpdir / stem
        target.write_bytes(base64.b64decode(data_b64))
        return str(target)
    return path


class KubeClient:
    """Talks to one API server; use as ``async with KubeClient.from_kubeconfig(path) as kube: ...``."""

    def __init__(
        self,
        server: str,
        *,
        ssl_context: ssl.SSLContext,
        token_file: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._token_file = token_file
        self._token = token  # a fixed bearer token (e.g. from the TokenRequest API), when there is no file
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str]) -> Self:
        config = yaml.safe_load(Path(path).read_text())
        current = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        with tempfile.TemporaryDirectory(prefix="kubelambda-kcfg-") as tmp:
            tmpdir = Path(tmp)
            ca = _materialize(
                cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), tmpdir, "ca"
            )
            ctx = ssl.create_default_context(cafile=ca)
            cert = _materialize(
                user.get("client-certificate-data"), user.get("client-certificate"), tmpdir, "crt"
            )
            key = _materialize(user.get("client-key-data"), user.get("client-key"), tmpdir, "key")
            if cert and key:
                ctx.load_cert_chain(cert, key)
        # A static bearer token (a ServiceAccount's kubeconfig) when the user has one.
        return cls(cluster["server"], ssl_context=ctx, token=user.get("token"))

    @classmethod
    def in_cluster(cls, *, directory: Path = _IN_CLUSTER_DIR) -> Self:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ctx = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return cls(f"https://{host}:{port}", ssl_context=ctx, token_file=directory / "token")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=200),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        return self._session

    def bearer_token(self) -> str | None:
        """The token this client authenticates with (re-read: the kubelet rotates it), or None (certificates).
        Platform components present it to the gateway too (``Authorization: Bearer``, gateway/auth)."""
        if self._token_file is not None:
            return self._token_file.read_text().strip()
        return self._token

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self._token_file is not None:
            # Re-read on every call: bound tokens are rotated on disk by the kubelet.
            headers["Authorization"] = f"Bearer {self._token_file.read_text().strip()}"
        elif self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        _, result = await self.request_with_status(
            method, path, body=body, params=params, content_type=content_type, timeout=timeout
        )
        return result

    async def request_with_status(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, JSON]:
        """Like :meth:`request`, with the HTTP status (201 tells a server-side apply that it created)."""
        data = None if body is None else json.dumps(body).encode()
        async with self._http().request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=self._headers(content_type if data is not None else None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error(resp.status, text)
            if not text:
                return resp.status, {}
            result: JSON = json.loads(text)
            return resp.status, result

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> JSON:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> JSON | None:
        try:
            return await self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, path: str, *, params: Mapping[str, str] | None = None) -> JSON:
        return await self.get(path, params=params)

    async def create(self, path: str, body: JSON) -> JSON:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: JSON) -> JSON:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, *, patch_type: PatchType = "merge") -> JSON:
        return await self.request("PATCH", path, body=body, content_type=_PATCH_CONTENT_TYPES[patch_type])

    async def apply(self, path: str, body: JSON, *, field_manager: str, force: bool = True) -> JSON:
        """Server-side apply of ``body`` to ``path`` (the object's own path) as ``field_manager``."""
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return await self.request(
            "PATCH", path, body=body, params=params, content_type="application/apply-patch+yaml"
        )

    async def apply_reporting(
        self, path: str, body: JSON, *, field_manager: str, force: bool = True
    ) -> tuple[JSON, bool]:
        """:meth:`apply`, also saying whether the object was created (True) or already existed."""
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        status, result = await self.request_with_status(
            "PATCH", path, body=body, params=params, content_type="application/apply-patch+yaml"
        )
        return result, status == 201

    async def delete(
        self,
        path: str,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        propagation: str | None = None,
        missing_ok: bool = True,
    ) -> JSON | None:
        options: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if propagation is not None:
            options["propagationPolicy"] = propagation
        try:
            return await self.request("DELETE", path, body=options)
        except ApiError as e:
            if missing_ok and e.status == 404:
                return None
            raise

    async def watch(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """One watch request; ends when the server closes it. Raises ApiError(410) when the version is gone."""
        query = dict(params or {})
        query.update({"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)})
        if resource_version:
            query["resourceVersion"] = resource_version
        async with self._http().get(
            self.server + path,
            params=query,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            # One JSON document per line (an unfinished last line is dropped: the watch ended inside it).
            async for line in _split_lines(resp.content):
                if not line.strip() or not line.endswith(b"\n"):
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    raise ApiError(
                        int(status.get("code", 500)), status.get("reason", ""), status.get("message", "")
                    )
                yield WatchEvent(event["type"], event["object"])

    async def lines(self, path: str, *, params: Mapping[str, str] | None = None) -> AsyncIterator[str]:
        """A text answer line by line as it arrives (``pods/log``, with ``follow=true`` too)."""
        async with self._http().get(
            self.server + path,
            params=params,
            headers={**self._headers(), "Accept": "*/*"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            async for line in _split_lines(resp.content):
                yield line.removesuffix(b"\n").decode(errors="replace")


async def _split_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of a streamed answer as they arrive, each with its ``\\n``; then an unfinished last line,
    if any, without. A line can be as large as an object (1.5 MB in etcd): the stream is split here rather than
    through readline()'s 512 KB limit."""
    pending = b""
    async for chunk in content.iter_any():
        pending += chunk
        *done, pending = pending.split(b"\n")
        for line in done:
            yield line + b"\n"
    if pending:
        yield pending


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        return ApiError(status, "", text[:500])
    if not isinstance(body, dict):
        return ApiError(status, "", text[:500])
    return ApiError(status, str(body.get("reason", "")), str(body.get("message", text[:500])), body=body)
