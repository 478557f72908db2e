"""Per-namespace NATS credentials for log shipping (docs/logs.md, "Credentials"; docs/architecture.md).

Agents (function pods, warm-pool pods once specialised) and Trigger bridges ship their namespace's log records.
Each logs in as ``logs.<namespace>`` with a password the platform derived for that namespace:
``<issued>.<HMAC-SHA256(agent key, "logs:<namespace>:<issued>")>``, ``issued`` being when its holder was made (a
Function's or Trigger's creation, in Unix seconds). No NATS user of that name exists: the server hands such a
login to the **log auth service** (NATS auth callout, ``$SYS.REQ.USER.AUTH``), which runs in the gateway. It
checks the HMAC, reads the namespace and refuses when it is gone, terminating, or younger than ``issued`` (the
credential of a deleted namespace's Function does not open a namespace made later under the same name); else it
answers with a user JWT, signed by the callout's issuer key (an account nkey), that may publish only
``kubelambda.logs.<namespace>.>`` and subscribe only ``_INBOX.<namespace>.>`` (its acknowledgements), and that
expires after :data:`USER_TTL_SECONDS` (the agent logs in again an hour before, and is checked again; a
login left to expire would lose the acknowledgements of what was in flight).

The platform's own users (:data:`kubelambda.natsauth.USERS`) are the callout's ``auth_users``: the server checks
their passwords itself, as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nkeys
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kubelambda import natsauth
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.natsauth import LOG_USER_PREFIX, log_password, log_permissions, unix_seconds

logger = logging.getLogger(__name__)

SUBJECT = natsauth.CALLOUT_SUBJECT
USER_TTL_SECONDS = 24 * 3600
GLOBAL_ACCOUNT = "$G"  # the account of the server's configured users (no accounts block)
SEED_ENV = "KL_NATS_CALLOUT_SEED"
"""The environment variable the chart's NATS init container and the gateway read the issuer's seed from (any
string: its SHA-256 is the key's seed)."""
NAMESPACE_CACHE_SECONDS = 5.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())


class Issuer:
    """The account nkey the callout signs with; the server trusts its public key (``auth_callout.issuer``)."""

    def __init__(self, secret: str) -> None:
        raw = hashlib.sha256(secret.encode()).digest()
        self._keys = nkeys.from_seed(bytearray(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_ACCOUNT)))
        self.public_key: str = self._keys.public_key.decode()

    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as a NATS JWT (ed25519-nkey), with ``iss``, ``iat`` and ``jti`` filled in."""
        claims = {**claims, "iss": self.public_key, "iat": int(time.time())}
        body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        claims["jti"] = base64.b32encode(hashlib.sha256(body).digest()).decode().rstrip("=")
        payload = _HEADER + "." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        return payload + "." + _b64(self._keys.sign(payload.encode()))


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (the server's authorization request), not verified: only the server may publish on
    :data:`SUBJECT` (no platform user and no tenant may publish a ``$SYS`` subject), and what is answered is
    bound to the user key the server made for that one connection."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    claims = json.loads(_unb64(parts[1]))
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not an object")
    return claims


NamespaceCreated = Callable[[str], Awaitable[int | None]]
"""A namespace's creation time (Unix seconds), or None when it does not exist or is terminating."""


def kube_namespaces(kube: KubeClient, cache_seconds: float = NAMESPACE_CACHE_SECONDS) -> NamespaceCreated:
    """:data:`NamespaceCreated` from the API server, each answer reused for ``cache_seconds``."""
    cache: dict[str, tuple[float, int | None]] = {}

    async def created(namespace: str) -> int | None:
        now = time.monotonic()
        hit = cache.get(namespace)
        if hit is not None and now - hit[0] < cache_seconds:
            return hit[1]
        obj = await kube.get_or_none(resource_path("v1", "namespaces", name=namespace))
        meta = (obj or {}).get("metadata") or {}
        value = None
        if obj is not None and not meta.get("deletionTimestamp") and meta.get("creationTimestamp"):
            value = unix_seconds(str(meta["creationTimestamp"]))
        cache[namespace] = (now, value)
        return value

    return created


class LogAuthService:
    """Answers the NATS server's authorization requests for ``logs.<namespace>`` logins (module doc)."""

    def __init__(
        self,
        url: str,
        *,
        issuer: Issuer,
        agent_key: str,
        namespaces: NamespaceCreated,
        user_ttl_seconds: int = USER_TTL_SECONDS,
    ) -> None:
        self.url = url  # as the ``logauth`` user
        self.user_ttl_seconds = (
            user_ttl_seconds  # the agent renews its login before (KUBELAMBDA_LOG_RENEW_SECONDS)
        )
        self.issuer = issuer
        self.agent_key = agent_key
        self.namespaces = namespaces
        self._nc: NATS | None = None

    async def start(self) -> None:
        nc = NATS()
        await nc.connect(
            servers=natsauth.servers(self.url),
            max_reconnect_attempts=-1,
            **natsauth.connect_options(self.url),
        )
        # A queue group: every gateway replica answers, each request once.
        await nc.subscribe(SUBJECT, queue="kubelambda-logauth", cb=self._answer)
        await nc.flush()
        self._nc = nc

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None

    async def _answer(self, msg: Msg) -> None:
        try:
            request = jwt_claims(msg.data.decode())["nats"]
            user_nkey, server_id = str(request["user_nkey"]), str(request["server_id"]["id"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            logger.warning("an authorization request that is not one: %s", e)
            return
        opts = request.get("connect_opts") or {}
        try:
            user_jwt = await self.decide(str(opts.get("user") or ""), str(opts.get("pass") or ""), user_nkey)
            answer: dict[str, Any] = {"jwt": user_jwt}
        except Refused as e:
            logger.info("NATS login refused: %s", e)
            answer = {"error": str(e)}
        except (TimeoutError, ApiError, OSError) as e:
            logger.warning("NATS login not decided: %s", e)
            answer = {"error": "the log auth service could not read the namespace"}
        response = {
            "sub": user_nkey,
            "aud": server_id,
            "nats": {**answer, "type": "authorization_response", "version": 2},
        }
        if msg.reply and self._nc is not None:
            await self._nc.publish(msg.reply, self.issuer.sign(response).encode())

    async def decide(self, user: str, password: str, user_nkey: str) -> str:
        """The user JWT for a login as ``user``/``password``, or :class:`Refused` saying why."""
        if not user.startswith(LOG_USER_PREFIX):
            raise Refused(f"unknown user {user!r}")
        namespace = user[len(LOG_USER_PREFIX) :]
        issued_text, _, _ = password.partition(".")
        try:
            issued = int(issued_text)
        except ValueError:
            raise Refused(f"user {user}: malformed password") from None
        if not hmac.compare_digest(password, log_password(self.agent_key, namespace, issued)):
            raise Refused(f"user {user}: wrong password")
        created = await self.namespaces(namespace)
        if created is None:
            raise Refused(f"user {user}: namespace {namespace} does not exist or is terminating")
        if issued < created:
            raise Refused(f"user {user}: credential issued before namespace {namespace} was created")
        return self.issuer.sign(
            {
                "sub": user_nkey,
                "aud": GLOBAL_ACCOUNT,
                "name": user,
                "exp": int(time.time()) + self.user_ttl_seconds,
                "nats": {
                    **log_permissions(namespace),
                    "subs": -1,
                    "data": -1,
                    "payload": -1,
                    "type": "user",
                    "version": 2,
                },
            }
        )


class Refused(Exception):
    pass


def issuer_conf(source: str, target: str) -> None:
    """Copies nats.conf ``source`` to ``target`` with the issuer's public key (from :data:`SEED_ENV`) in place of
    ``$KL_NATS_CALLOUT_ISSUER``: the chart's NATS init container (a server cannot derive it itself)."""
    secret = os.environ.get(SEED_ENV)
    if not secret:
        raise SystemExit(f"{SEED_ENV} is not set")
    with open(source) as f:
        text = f.read()
    with open(target, "w") as f:
        f.write(text.replace("$" + natsauth.ISSUER_ENV, json.dumps(Issuer(secret).public_key)))


if __name__ == "__main__":  # python -m kubelambda.natscallout SOURCE TARGET
    issuer_conf(sys.argv[1], sys.argv[2])
