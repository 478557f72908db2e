"""TokenReview (who is this bearer token?) and SubjectAccessReview (may this identity invoke that Function?),
each answer kept a few seconds, positive and negative alike, as the API server's webhook authenticator and
authorizer cache theirs: a warm invoke asks the API server nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kubelambda import metrics
from kubelambda.kube import KubeClient

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Identity:
    """A caller as Kubernetes knows it (the fields of a TokenReview's ``status.user``)."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    via: str = "bearer"  # bearer, sigv4 (an access key) or none (auth.mode none)
    access_key_id: str = ""

    @staticmethod
    def service_account(namespace: str, name: str, *, via: str, access_key_id: str = "") -> Identity:
        return Identity(
            username=f"system:serviceaccount:{namespace}:{name}",
            groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
            via=via,
            access_key_id=access_key_id,
        )


@dataclass
class TtlCache(Generic[K, V]):
    """Answers by key for ``ttl`` seconds; concurrent misses of one key share a single lookup."""

    ttl: float
    max_entries: int = 10000
    _entries: dict[K, tuple[float, V]] = field(default_factory=dict)
    _pending: dict[K, asyncio.Future[V]] = field(default_factory=dict)

    async def get(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic()
        found = self._entries.get(key)
        if found is not None and found[0] > now:
            return found[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await lookup()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[key]
        future.set_result(value)
        if self.ttl > 0:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, value)
        return value

    def expires(self, key: K) -> float:
        """When the answer kept for ``key`` stops being used (monotonic); 0 when none is kept."""
        found = self._entries.get(key)
        return found[0] if found is not None else 0.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()  # the review cache keeps no token


class TokenReviewer:
    """Bearer tokens → identities with TokenReview (``audiences`` empty: the API server's own)."""

    def __init__(self, kube: KubeClient, *, audiences: list[str], ttl: float) -> None:
        self.kube = kube
        self.audiences = audiences
        self.cache: TtlCache[bytes, Identity | None] = TtlCache(ttl)

    async def review(self, token: str) -> Identity | None:
        """The token's identity, or None when the API server does not accept it."""
        return await self.cache.get(_digest(token), lambda: self._ask(token))

    def expires(self, token: str) -> float:
        """When the kept answer for ``token`` stops being used (monotonic); 0 when none is kept."""
        return self.cache.expires(_digest(token))

    async def _ask(self, token: str) -> Identity | None:
        metrics.GATEWAY_AUTH_REVIEWS.labels("TokenReview").inc()
        spec: dict[str, object] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        answer = await self.kube.create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
        return Identity(
            username=user.get("username", ""),
            groups=tuple(user.get("groups") or ()),
            uid=user.get("uid", ""),
            extra=extra,
            via="bearer",
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class AccessReviewer:
    """``invoke`` on ``functions.kubelambda.io/<name>`` in a namespace, for an identity, with SubjectAccessReview."""

    def __init__(self, kube: KubeClient, *, ttl: float) -> None:
        self.kube = kube
        self.cache: TtlCache[tuple[Identity, str, str, str, str], Decision] = TtlCache(ttl)

    async def may(
        self, identity: Identity, verb: str, namespace: str, name: str, *, resource: str = "functions"
    ) -> Decision:
        """``resource``: ``functions`` (invoke, and the control-plane API) or ``functionaliases``."""
        return await self.cache.get(
            (identity, verb, namespace, name, resource),
            lambda: self._ask(identity, verb, namespace, name, resource),
        )

    def expires(
        self, identity: Identity, verb: str, namespace: str, name: str, *, resource: str = "functions"
    ) -> float:
        """When the kept decision stops being used (monotonic); 0 when none is kept."""
        return self.cache.expires((identity, verb, namespace, name, resource))

    async def _ask(self, identity: Identity, verb: str, namespace: str, name: str, resource: str) -> Decision:
        metrics.GATEWAY_AUTH_REVIEWS.labels("SubjectAccessReview").inc()
        spec: dict[str, object] = {
            "user": identity.username,
            "groups": list(identity.groups),
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": "kubelambda.io",
                "resource": resource,
                "name": name,
            },
        }
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        answer = await self.kube.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        status = answer.get("status") or {}
        return Decision(bool(status.get("allowed")) and not status.get("denied"), status.get("reason", ""))
