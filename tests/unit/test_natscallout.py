"""The log shippers' NATS credentials and the auth callout's decisions (kubelambda.natscallout); the real server's
side is tests/security/test_nats_credentials.py."""

from __future__ import annotations

import base64

import nacl.signing
import nkeys
import pytest

from kubelambda import natsauth
from kubelambda.natscallout import Issuer, LogAuthService, Refused, jwt_claims

KEY = "unit-test-agent-key-0123456789"
USER_NKEY = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"


def service(namespaces: dict[str, int]) -> LogAuthService:
    async def created(namespace: str) -> int | None:
        return namespaces.get(namespace)

    return LogAuthService("nats://127.0.0.1:1", issuer=Issuer("seed" * 8), agent_key=KEY, namespaces=created)


async def test_a_namespaces_credential_gets_only_its_log_subjects() -> None:
    svc = service({"team-a": 100})
    token = await svc.decide("logs.team-a", natsauth.log_password(KEY, "team-a", 150), USER_NKEY)
    claims = jwt_claims(token)
    assert (claims["sub"], claims["aud"], claims["iss"]) == (USER_NKEY, "$G", svc.issuer.public_key)
    assert claims["nats"]["pub"] == {"allow": ["kubelambda.logs.team-a.>"]}
    assert claims["nats"]["sub"] == {"allow": ["_INBOX.team-a.>"]}
    assert claims["exp"] > claims["iat"]
    # Signed by the issuer's account key, as the server checks it.
    head, body, sig = token.split(".")
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    public = svc.issuer.public_key
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    assert raw[0] == nkeys.PREFIX_BYTE_ACCOUNT  # an account key ("A..."), then its 32 bytes and a CRC
    nacl.signing.VerifyKey(raw[1:33]).verify(f"{head}.{body}".encode(), signature)  # raises if not


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("logs.team-b", natsauth.log_password(KEY, "team-a", 150), "wrong password"),  # A's under B's name
        ("logs.team-a", natsauth.log_password("another key 0123456789", "team-a", 150), "wrong password"),
        ("logs.team-a", "not-a-number.abc", "malformed password"),
        ("logs.gone", natsauth.log_password(KEY, "gone", 150), "does not exist or is terminating"),
        (
            "logs.team-a",
            natsauth.log_password(KEY, "team-a", 99),
            "issued before namespace team-a was created",
        ),
        ("agent", "whatever", "unknown user 'agent'"),
    ],
)
async def test_refused(user: str, password: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        await service({"team-a": 100, "team-b": 100}).decide(user, password, USER_NKEY)


def test_urls_and_server_config() -> None:
    url = natsauth.log_url("nats://gateway:secret@nats:4222", KEY, "team-a", 7)
    assert natsauth.user_of(url) == "logs.team-a"
    assert "secret" not in url
    assert (
        natsauth.without_credentials(url + ",nats://u:p@other:4222") == "nats://nats:4222,nats://other:4222"
    )
    conf = natsauth.authorization(natsauth.new_passwords(), issuer=Issuer("x" * 32).public_key)
    assert f'issuer: "{Issuer("x" * 32).public_key}"' in conf
    assert "agent" not in natsauth.USERS  # no user shared by every namespace's shippers
