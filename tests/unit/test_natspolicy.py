"""kubelambda.natspolicy: the NATS subjects a tenant's destination may name."""

from __future__ import annotations

import pytest

from kubelambda.natspolicy import subject_refusal


@pytest.mark.parametrize(
    "subject",
    ["orders.failed", "team-a.records", "a", "a.b.c-d_e"],
)
def test_plain_subjects_are_allowed(subject: str) -> None:
    assert subject_refusal(subject) is None


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("$JS.API.STREAM.PURGE.KUBELAMBDA_ASYNC", "is reserved (prefix $)"),
        ("$KV.config.key", "reserved"),
        ("$SYS.REQ.SERVER.PING", "reserved"),
        ("$O.bucket", "reserved"),
        ("_INBOX.abc", "reserved"),
        ("_R_.x", "reserved"),
        ("kubelambda.async.ns.fn", "kubelambda's own"),
        ("kubelambda.dlq.ns", "kubelambda's own"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.*", "wildcards"),
        ("a.>", "wildcards"),
        ("a b", "wildcards"),
        ("", "not a plain subject"),
    ],
)
def test_server_and_platform_subjects_are_refused(subject: str, why: str) -> None:
    refusal = subject_refusal(subject)
    assert refusal is not None
    assert why in refusal, refusal
