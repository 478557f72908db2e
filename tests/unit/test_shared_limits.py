"""The leader's ledger of every replica's slots (gateway/limits.py): counting, releases, and the syncs that
correct lost releases and teach a new leader the slots it did not grant. The Leases and HTTP between replicas
are covered by tests/integration/test_ha.py."""

from __future__ import annotations

from typing import Any, cast

import pytest

from kubelambda.gateway.limits import SharedLimits, peer_token
from kubelambda.gateway.peers import Peers, url_of
from kubelambda.gateway.throttler import RESERVED, Throttled, Throttler
from kubelambda.kube import KubeClient


def shared(pool_limit: int = 10) -> SharedLimits:
    peers = Peers(
        cast(KubeClient, None), "kubelambda-system", "http://10.0.0.1:8080"
    )  # no Lease is touched here
    return SharedLimits(Throttler(pool_limit=pool_limit), peers, cast(Any, None), peer_token("k" * 16))


def test_a_replica_identity_names_its_url_and_differs_per_process() -> None:
    one, two = shared().peers, shared().peers
    assert url_of(one.identity) == url_of(two.identity) == "http://10.0.0.1:8080"
    assert one.identity != two.identity  # a restarted process does not inherit its predecessor's slots
    assert one.member_lease != two.member_lease


def test_the_leader_counts_every_replicas_slots_against_reserved() -> None:
    limits = shared()
    limits._count("a", 1, ("ns/f", "ns/f"), 2)
    limits._count("b", 1, ("ns/f", "ns/f"), 2)
    limits._count("b", 1, ("ns/f", "ns/f"), 2)  # a retried request: counted once
    with pytest.raises(Throttled) as refused:
        limits._count("c", 1, ("ns/f", "ns/f"), 2)
    assert refused.value.reason == RESERVED
    assert limits.throttler.in_flight == {"ns/f": 2}
    limits._uncount("a", 1)
    limits._uncount("a", 1)  # released twice (a retry): once
    assert limits.throttler.in_flight == {"ns/f": 1}
    assert limits.throttler.total == 1


def test_a_sync_releases_what_the_replica_gave_back_and_keeps_later_grants() -> None:
    limits = shared()
    for seq in (1, 2, 3):
        limits._count("a", seq, ("ns/f", "ns/f"), None)
    # The replica's list was taken after it gave back 1 and before it learnt of 3: 3 stays counted.
    limits._apply_sync("a", {"held": [[2, "ns/f", "ns/f"]], "last": 2})
    assert sorted(limits._ledger["a"]) == [2, 3]
    assert limits.throttler.total == 2


def test_a_new_leader_counts_the_slots_it_is_told_of_even_over_a_limit() -> None:
    limits = shared(pool_limit=2)
    limits._apply_sync("a", {"held": [[1, "ns/f", "ns/f"], [2, "ns/g", "ns/g"]], "last": 2})
    limits._apply_sync("b", {"held": [[7, "ns/f", "ns/f"]], "last": 7})
    assert limits.throttler.total == 3  # granted by the old leader: counted, so nothing more is admitted
    with pytest.raises(Throttled):
        limits._count("c", 1, ("ns/h", "ns/h"), None)
    assert limits.throttler.by_function == {"ns/f": 2, "ns/g": 1}
