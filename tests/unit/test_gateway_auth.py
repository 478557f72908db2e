"""The gateway's auth step without a cluster: access keys as Secrets, the review cache, SigV4 through the
Authoriser (botocore signs), and who is trusted with the internal headers."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import urllib.parse
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kubelambda.gateway.app import IDEMPOTENCY_KEY_HEADER, Gateway
from kubelambda.gateway.auth import INVOKE, Authoriser, AuthRefused
from kubelambda.gateway.auth.keys import AccessKeyStore, from_secret, new_key, secret_name, to_secret
from kubelambda.gateway.auth.reviews import Decision, Identity, TtlCache
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.kube import KubeClient


def _kube() -> KubeClient:
    return KubeClient("https://127.0.0.1:1", ssl_context=ssl.create_default_context())


def test_a_key_survives_its_secret() -> None:
    key = new_key("team-a", "web", created_by="alice", description="ci")
    assert key.access_key_id.startswith("KLAK")
    assert len(key.access_key_id) == 20
    assert len(key.secret_access_key) == 40
    secret = to_secret(key, namespace="kubelambda-system")
    assert secret["metadata"]["name"] == secret_name(key.access_key_id)
    assert secret["metadata"]["labels"] == {"kubelambda.io/access-key": "true"}
    back = from_secret(secret)
    assert back == key
    assert back.username == "system:serviceaccount:team-a:web"
    assert from_secret({"metadata": {"name": "x"}, "data": {}}) is None


async def test_the_store_follows_creations_and_deletions() -> None:
    store = AccessKeyStore("kubelambda-system")
    one, two = new_key("a", "x"), new_key("b", "y")
    await store._listed([to_secret(one, namespace="kubelambda-system")])
    assert store.synced.is_set()
    assert store.get(one.access_key_id) == one
    await store._event("ADDED", to_secret(two, namespace="kubelambda-system"))
    assert store.get(two.access_key_id) == two
    await store._event("DELETED", to_secret(one, namespace="kubelambda-system"))
    assert store.get(one.access_key_id) is None
    await store._listed([])  # a relist drops what disappeared while the watch was down
    assert store.keys == {}


async def test_concurrent_misses_share_one_lookup_and_answers_are_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=60)
    calls = 0
    release = asyncio.Event()

    async def lookup() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    waiting = [asyncio.create_task(cache.get("k", lookup)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert await cache.get("k", lookup) == 1
    assert calls == 1
    uncached: TtlCache[str, int] = TtlCache(ttl=0)
    assert [await uncached.get("k", lookup) for _ in range(2)] == [2, 3]


async def test_a_failed_lookup_is_not_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=60)

    async def broken() -> int:
        raise OSError("api server down")

    with pytest.raises(OSError, match="api server down"):
        await cache.get("k", broken)

    async def fine() -> int:
        return 7

    assert await cache.get("k", fine) == 7


def _signed(url: str, body: bytes, key_id: str, secret: str, **headers: str) -> Any:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(request)
    parts = urllib.parse.urlsplit(url)
    sent = {"Host": parts.netloc, **{k: str(v) for k, v in request.headers.items()}}
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return make_mocked_request("POST", path, headers=sent)


async def test_authenticate_a_botocore_signed_request() -> None:
    auth = Authoriser(GatewaySettings(auth_mode="kubernetes"), _kube())
    key = new_key("team-a", "web")
    await auth.keys._listed([to_secret(key, namespace="kubelambda-system")])
    url = "http://gw:8080/2015-03-31/functions/team-a%2Fhello/invocations?Qualifier=%24LATEST"
    body = b'{"a": 1}'
    request = _signed(url, body, key.access_key_id, key.secret_access_key, **{"X-Amz-Log-Type": "Tail"})
    identity = await auth.authenticate(request, body)
    assert identity == Identity.service_account("team-a", "web", via="sigv4", access_key_id=key.access_key_id)
    assert "system:serviceaccounts:team-a" in identity.groups

    with pytest.raises(AuthRefused) as refused:
        await auth.authenticate(request, b'{"a": 2}')
    assert refused.value.code == "InvalidSignatureException"
    stranger = _signed(url, body, "KLAKAAAAAAAAAAAAAAAA", "x" * 40)
    with pytest.raises(AuthRefused) as refused:
        await auth.authenticate(stranger, body)
    assert refused.value.code == "UnrecognizedClientException"
    with pytest.raises(AuthRefused) as refused:
        await auth.authenticate(make_mocked_request("POST", "/2015-03-31/functions/x/invocations"), b"")
    assert (refused.value.code, refused.value.message) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )


async def test_auth_none_lets_everyone_through_as_the_platform() -> None:
    auth = Authoriser(GatewaySettings(auth_mode="none"), _kube())
    request = make_mocked_request("POST", "/2015-03-31/functions/x/invocations")
    identity = await auth.authorise(request, INVOKE, FunctionRef("default", "x"), body=b"")
    assert auth.is_platform(identity)


def test_internal_headers_are_the_platforms_and_other_keys_are_scoped() -> None:
    gateway = Gateway(GatewaySettings(auth_mode="kubernetes"), _kube())
    request = make_mocked_request("POST", "/", headers={IDEMPOTENCY_KEY_HEADER: "tick-1"})
    worker = Identity.service_account("kubelambda-system", "kubelambda-async-worker", via="bearer")
    tenant = Identity.service_account("team-a", "web", via="sigv4")
    other = Identity.service_account("team-b", "web", via="sigv4")
    assert gateway.auth.is_platform(worker)
    assert not gateway.auth.is_platform(tenant)
    assert gateway._idempotency_key(request, worker) == "tick-1"
    scoped = {gateway._idempotency_key(request, who) for who in (worker, tenant, other)}
    assert len(scoped) == 3
    assert gateway._idempotency_key(request, tenant) == "caller:system:serviceaccount:team-a:web/tick-1"
    assert gateway._idempotency_key(make_mocked_request("POST", "/"), tenant) is None


async def test_an_api_server_that_cannot_be_asked_is_a_service_error_not_a_refusal() -> None:
    """TokenReview or SubjectAccessReview failing (nothing listens at the client's server) answers 500
    ServiceException, which clients retry, rather than calling the caller unrecognised or denied."""
    async with _kube() as kube:
        await _refusals_without_an_api_server(Authoriser(GatewaySettings(auth_mode="kubernetes"), kube))


async def _refusals_without_an_api_server(auth: Authoriser) -> None:
    ref = FunctionRef("team-a", "hello")
    bearer = make_mocked_request("POST", "/", headers={"Authorization": "Bearer some-token"})
    with pytest.raises(AuthRefused) as refused:
        await auth.authorise(bearer, INVOKE, ref, body=b"")
    assert refused.value.code == "ServiceException"
    key = new_key("team-a", "web")
    await auth.keys._listed([to_secret(key, namespace="kubelambda-system")])
    url = "http://gw:8080/2015-03-31/functions/team-a%2Fhello/invocations"
    signed = _signed(url, b"{}", key.access_key_id, key.secret_access_key)
    with pytest.raises(AuthRefused) as refused:
        await auth.authorise(signed, INVOKE, ref, body=b"{}")
    assert refused.value.code == "ServiceException"
    assert "Could not decide whether system:serviceaccount:team-a:web may invoke" in refused.value.message


async def test_a_bearer_grant_is_kept_by_its_header_no_longer_than_either_answer() -> None:
    """The invoke path's one-entry check of a bearer token: kept until the first of its TokenReview and
    SubjectAccessReview answers expires, then both caches decide again; refusals and SigV4 are never kept. The
    answers are put in the caches as an API server's would be: nothing here can reach one."""
    auth = Authoriser(GatewaySettings(auth_mode="kubernetes", auth_cache_seconds=60), _kube())
    ref = FunctionRef("team-a", "hello")
    alice = Identity("alice", groups=("system:authenticated",))
    now = time.monotonic()
    auth.tokens.cache._entries[hashlib.sha256(b"tok").digest()] = (now + 60, alice)
    decision = (alice, "invoke", "team-a", "hello", "functions")
    auth.access.cache._entries[decision] = (now + 30, Decision(True))
    header = "Bearer tok"
    digest = hashlib.sha256(header.encode()).digest()  # the gateway keeps no token, only its digest
    request = make_mocked_request("POST", "/", headers={"Authorization": header})
    assert await auth.authorise(request, INVOKE, ref, body=b"") == alice
    assert auth._granted == {(digest, INVOKE, "team-a", "hello"): (now + 30, alice)}  # the earlier expiry
    # Another spelling of the same token is its own entry, from the same answers.
    spaced = make_mocked_request("POST", "/", headers={"Authorization": header + " "})
    assert await auth.authorise(spaced, INVOKE, ref, body=b"") == alice
    assert len(auth._granted) == 2

    # Once the grant expired the caches decide again: the decision now is a denial, and it is not kept.
    auth._granted[(digest, INVOKE, "team-a", "hello")] = (now - 1, alice)
    auth.access.cache._entries[decision] = (now + 30, Decision(False))
    with pytest.raises(AuthRefused) as refused:
        await auth.authorise(request, INVOKE, ref, body=b"")
    assert refused.value.code == "AccessDeniedException"
    with pytest.raises(AuthRefused):
        await auth.authorise(request, INVOKE, ref, body=b"")
    assert auth._granted[(digest, INVOKE, "team-a", "hello")] == (now - 1, alice)

    # A signed request is verified every time: its signature covers the body.
    key = new_key("team-a", "web")
    await auth.keys._listed([to_secret(key, namespace="kubelambda-system")])
    web_sa = Identity.service_account("team-a", "web", via="sigv4", access_key_id=key.access_key_id)
    auth.access.cache._entries[(web_sa, "invoke", "team-a", "hello", "functions")] = (
        now + 30,
        Decision(True),
    )
    url = "http://gw:8080/2015-03-31/functions/team-a%2Fhello/invocations"
    signed = _signed(url, b"{}", key.access_key_id, key.secret_access_key)
    assert await auth.authorise(signed, INVOKE, ref, body=b"{}") == web_sa
    assert len(auth._granted) == 2
    with pytest.raises(AuthRefused) as refused:
        await auth.authorise(signed, INVOKE, ref, body=b'{"other": 1}')
    assert refused.value.code == "InvalidSignatureException"
