"""Who is calling, and may they? The one step every entry point of the gateway takes before anything is queued
or run: :meth:`Authoriser.authorise` (docs/security.md).

- **Identity**: AWS SigV4 with an access key (:mod:`.sigv4`, :mod:`.keys`: a key stands for a ServiceAccount),
  or ``Authorization: Bearer <token>`` checked with TokenReview (:mod:`.reviews`).
- **Decision**: RBAC, with a SubjectAccessReview for the verb ``invoke`` on ``functions.kubelambda.io`` named
  after the Function in its namespace; answers are cached a few seconds (positive and negative).
- **Refusals** are Lambda's: 403 with ``x-amzn-ErrorType`` MissingAuthenticationTokenException,
  UnrecognizedClientException, InvalidSignatureException or AccessDeniedException.

``auth_mode: none`` skips all of it: every caller is the platform (for trusted networks only; said loudly).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from kubelambda import metrics
from kubelambda.gateway.auth import sigv4
from kubelambda.gateway.auth.keys import AccessKeyStore
from kubelambda.gateway.auth.reviews import AccessReviewer, Identity, TokenReviewer
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)

INVOKE = "lambda:InvokeFunction"
VERBS = {INVOKE: "invoke"}  # Lambda action -> RBAC verb on functions.kubelambda.io
NOBODY = Identity(username="system:anonymous", groups=("system:unauthenticated",), via="none")
PUBLIC = Identity(username="system:anonymous", groups=("system:unauthenticated",), via="public")
"""The caller of an HTTP Trigger with ``authType: NONE``: unchecked, and never trusted with internal headers."""

GRANTS_KEPT = 10_000
"""Bearer callers' grants kept for the invoke path's fast check (:meth:`Authoriser.authorise`), at most."""
# (the SHA-256 of the Authorization header as sent, action, namespace, Function): the gateway keeps no token
# it has seen, only its digest, as the TokenReview cache and the API server's own token cache do.
Grant = tuple[bytes, str, str, str]

__all__ = ["INVOKE", "NOBODY", "PUBLIC", "AuthRefused", "Authoriser", "Identity", "destination_refusal"]


async def destination_refusal(
    access: AccessReviewer | None,
    namespace: str,
    source: str,
    source_account: str | None,
    target: str,
    *,
    arn: str,
) -> str | None:
    """Why the Function ``source`` may not have its records sent to the Function ``target`` (same namespace), or
    None: its execution identity (``serviceAccountName``, else the namespace's ``default``) needs ``invoke`` on
    the target, as a Lambda execution role needs lambda:InvokeFunction. ``access`` None: auth is off."""
    if access is None:
        return None
    identity = Identity.service_account(namespace, source_account or "default", via="execution-role")
    decision = await access.may(identity, VERBS[INVOKE], namespace, target)
    if decision.allowed:
        return None
    return (
        f"AccessDeniedException: {identity.username} (the execution identity of {namespace}/{source}) is not "
        f"authorized to perform: {INVOKE} on resource: {arn}"
    )


def _bearer_token(authorization: str) -> str:
    return authorization.removeprefix("Bearer ").strip()


class AuthRefused(Exception):
    """A refused call: ``code`` is Lambda's error type (``ServiceException`` when the API server could not be
    asked: 500, worth a retry), ``reason`` the metric label."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return self.code.removesuffix("Exception")


@dataclass
class Authoriser:
    settings: GatewaySettings
    kube: KubeClient

    def __post_init__(self) -> None:
        s = self.settings
        self.keys = AccessKeyStore(s.auth_namespace)
        self.tokens = TokenReviewer(self.kube, audiences=list(s.auth_audiences), ttl=s.auth_cache_seconds)
        self.access = AccessReviewer(self.kube, ttl=s.auth_cache_seconds)
        self._platform_prefix = f"system:serviceaccount:{s.auth_namespace}:"
        # Grants to bearer tokens, by the exact header's SHA-256: a warm invoke checks one entry, not the
        # TokenReview and SubjectAccessReview caches (two lookups, an Identity hashed and compared); each is used
        # no longer than both answers.
        self._granted: dict[Grant, tuple[float, Identity]] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.auth_mode != "none"

    def announce(self) -> None:
        """The startup log line and the mode metric."""
        mode = self.settings.auth_mode
        metrics.GATEWAY_AUTH_MODE.labels(mode).set(1)
        if self.enabled:
            logger.info(
                "Auth mode kubernetes: callers sign with an access key (SigV4) or send a Kubernetes token; "
                "RBAC verb invoke on functions.kubelambda.io decides (cached %.0f s)",
                self.settings.auth_cache_seconds,
            )
        else:
            logger.warning(
                "AUTH MODE NONE: every caller that reaches this gateway may invoke every Function in every "
                "namespace, read its log tails and set internal headers. Use it only on a trusted network."
            )

    def is_platform(self, identity: Identity) -> bool:
        """The platform's own components (ServiceAccounts of the system namespace), trusted with the internal
        headers (async request id, unscoped idempotency keys). With auth off everyone is."""
        if identity.via == "public":
            return False
        return not self.enabled or identity.username.startswith(self._platform_prefix)

    async def authorise(
        self, request: web.Request, action: str, function: FunctionRef, *, body: bytes
    ) -> Identity:
        """The caller's identity if it may do ``action`` on ``function``; raises :class:`AuthRefused`.

        A bearer token allowed before is allowed again from one entry kept by the SHA-256 of the exact
        ``Authorization`` header, until the first of its two answers (the TokenReview's, the
        SubjectAccessReview's) expires: the same answer as asking both caches, in one lookup. A SigV4 request is
        verified every time (its signature covers the body and the time), and refusals are never kept here."""
        if self.settings.auth_mode == "none":
            return NOBODY
        authorization = request.headers.get("Authorization", "")
        grant = (hashlib.sha256(authorization.encode()).digest(), action, function.namespace, function.name)
        kept = self._granted.get(grant)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        try:
            identity = await self.authenticate(request, body)
        except AuthRefused as e:
            metrics.GATEWAY_AUTH_REFUSALS.labels(e.reason).inc()
            raise
        await self.decide(
            identity,
            action,
            VERBS[action],
            function.namespace,
            function.name,
            arn=function.arn(self.settings.region),
            hint=" (bind the ClusterRole kubelambda-invoker)",
        )
        if identity.via == "bearer":
            self._keep(grant, authorization, identity)
        return identity

    def _keep(self, grant: Grant, authorization: str, identity: Identity) -> None:
        """Keeps a bearer token's grant until the first of the two answers it rests on expires."""
        _, action, namespace, name = grant
        until = min(
            self.tokens.expires(_bearer_token(authorization)),
            self.access.expires(identity, VERBS[action], namespace, name),
        )
        now = time.monotonic()
        if until <= now:  # not cached (auth.cacheSeconds 0)
            return
        if len(self._granted) >= GRANTS_KEPT:
            self._granted = {k: v for k, v in self._granted.items() if v[0] > now}
            if len(self._granted) >= GRANTS_KEPT:
                self._granted.clear()
        self._granted[grant] = (until, identity)

    async def decide(
        self,
        identity: Identity,
        action: str,
        verb: str,
        namespace: str,
        name: str,
        *,
        arn: str,
        resource: str = "functions",
        hint: str = "",
    ) -> None:
        """Raises :class:`AccessDeniedException <AuthRefused>` unless RBAC allows ``identity`` the ``verb`` on
        ``resource`` (of kubelambda.io) named ``name`` (empty: all) in ``namespace``; nothing when auth is off."""
        if not self.enabled:
            return
        try:
            try:
                decision = await self.access.may(identity, verb, namespace, name, resource=resource)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                logger.warning("SubjectAccessReview failed: %s", e)
                raise AuthRefused(
                    "ServiceException", f"Could not decide whether {identity.username} may {verb}"
                ) from e
            if not decision.allowed:
                target = f"{resource}.kubelambda.io {name!r}" if name else f"{resource}.kubelambda.io"
                raise AuthRefused(
                    "AccessDeniedException",
                    f"User: {identity.username} is not authorized to perform: {action} on resource: "
                    f"{arn} because no RBAC rule allows the verb {verb} on {target} in namespace "
                    f"{namespace!r}{hint}",
                )
        except AuthRefused as e:
            metrics.GATEWAY_AUTH_REFUSALS.labels(e.reason).inc()
            raise

    async def authenticate(self, request: web.Request, body: bytes) -> Identity:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = _bearer_token(authorization)
            try:
                identity = await self.tokens.review(token)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                logger.warning("TokenReview failed: %s", e)
                raise AuthRefused("ServiceException", "The token could not be reviewed") from e
            if identity is None:
                raise AuthRefused(
                    "UnrecognizedClientException", "The security token included in the request is invalid."
                )
            return identity
        try:
            signed = sigv4.parse(request.headers, request.query)
        except sigv4.SignatureError as e:
            raise AuthRefused(e.code, e.message) from e
        if signed is None:
            raise AuthRefused("MissingAuthenticationTokenException", "Missing Authentication Token")
        if signed.security_token is not None:
            raise AuthRefused(
                "UnrecognizedClientException",
                "The security token included in the request is invalid: kubelambda access keys have no "
                "session tokens (unset AWS_SESSION_TOKEN)",
            )
        key = self.keys.get(signed.access_key_id)
        if key is None:
            raise AuthRefused(
                "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        try:
            sigv4.check_scope(signed, region=self.settings.region, now=datetime.datetime.now(datetime.UTC))
            sigv4.verify(
                signed,
                sigv4.Request(
                    method=request.method,
                    raw_path=request.rel_url.raw_path,
                    query=request.query.items(),
                    headers=request.headers.items(),
                    body=body,
                ),
                key.secret_access_key,
            )
        except sigv4.SignatureError as e:
            raise AuthRefused(e.code, e.message) from e
        return Identity.service_account(
            key.namespace, key.service_account, via="sigv4", access_key_id=key.access_key_id
        )
