"""The leader's ledger of every replica's slots (gateway/limits.py): counting, releases, and the syncs that
correct lost releases and teach a new leader the slots it did not grant. The Leases and HTTP between replicas
are covered by tests/integration/test_ha.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kubelambda.gateway.limits import Held, SharedLimits, peer_token
from kubelambda.gateway.peers import Peers, url_of
from kubelambda.gateway.throttler import RESERVED, Throttled, Throttler
from kubelambda.kube import KubeClient

F = Held("ns/f", "ns/f", timeout=10.0)


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
    limits._count("a", 1, F, 2)
    limits._count("b", 1, F, 2)
    limits._count("b", 1, F, 2)  # a retried request: counted once
    with pytest.raises(Throttled) as refused:
        limits._count("c", 1, F, 2)
    assert refused.value.reason == RESERVED
    assert limits.throttler.in_flight == {"ns/f": 2}
    limits._uncount("a", 1)
    limits._uncount("a", 1)  # released twice (a retry): once
    assert limits.throttler.in_flight == {"ns/f": 1}
    assert limits.throttler.total == 1


def test_a_sync_releases_what_the_replica_gave_back_and_keeps_later_grants() -> None:
    limits = shared()
    for seq in (1, 2, 3):
        limits._count("a", seq, F, None)
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
        limits._count("c", 1, Held("ns/h", "ns/h"), None)
    assert limits.throttler.by_function == {"ns/f": 2, "ns/g": 1}


def test_the_leader_assigns_an_instance_with_the_slot_over_every_replicas_calls() -> None:
    """perInstance 1, two instances: two replicas get one each, a third call gets its slot but no instance."""
    limits = shared()
    both = ["10.1.0.1:8080", "10.1.0.2:8080"]
    first = limits._grant("a", 1, F, None, both, 1)
    second = limits._grant("b", 1, F, None, both, 1)
    assert {first, second} == set(both)
    assert limits._grant("c", 1, F, None, both, 1) is None
    assert limits.throttler.total == 3
    limits._uncount("a", 1)  # the release gives the slot and its instance back in one
    assert limits._grant("c", 2, F, None, both, 1) == first
    assert limits.instances.load == dict.fromkeys(both, 1)


async def test_a_call_waits_at_the_leader_for_an_instance_to_free_up() -> None:
    limits = shared()
    one = ["10.1.0.1:8080"]
    assert limits._grant("a", 1, F, None, one, 1) == one[0]
    limits._count("b", 1, F, None)
    waiting = asyncio.create_task(limits._place_for("b", 1, lambda: one, 1, frozenset(), 10.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    limits._uncount("a", 1)
    assert await waiting == one[0]
    assert limits._ledger["b"][1].endpoint == one[0]
    # Another try elsewhere gives the instance back first; the one tried is avoided.
    assert await limits._place_for("b", 1, lambda: one, 1, frozenset(one), 0.0) is None
    assert limits.instances.load == {}


def test_a_dead_replicas_placed_slots_stay_counted_until_its_calls_timed_out_at_the_agent() -> None:
    limits = shared()
    me = limits.peers.identity
    limits._grant("dead", 1, F, 5, ["10.1.0.1:8080"], 1)  # running at the agent
    limits._grant("dead", 2, F, 5, [], 1)  # admitted, not yet sent to an instance
    until = limits._ledger["dead"][1].until
    limits.drop_gone({me}, now=until - 1)
    assert sorted(limits._ledger["dead"]) == [1]  # the unplaced slot went with the replica
    assert limits.throttler.by_function == {"ns/f": 1}
    assert limits.instances.load == {"10.1.0.1:8080": 1}
    limits.drop_gone({me}, now=until)  # the agent has ended it by now (the function's timeout)
    assert "dead" not in limits._ledger
    assert limits.throttler.total == 0
    assert limits.instances.load == {}


def test_a_dead_replicas_placed_slots_go_once_the_agent_no_longer_runs_calls_from_before_it_was_gone() -> (
    None
):
    """Its calls all arrived before the leader saw its Lease expired: the agent's calls that old bound how many of
    its slots still run; the others go (long before the function's timeout)."""
    limits = shared()
    me, e = limits.peers.identity, "10.1.0.1:8080"
    limits.instances_known = lambda: [("ns/f", "ns/f", e)]
    for seq in (1, 2, 3):
        limits._grant("dead", seq, F, 5, [e], 3)
    limits._grant("live", 1, F, 5, [e], 4)
    limits.drop_gone({me, "live"}, now=100.0)  # seen gone at t = 100
    assert limits._gone == {"dead": 100.0}
    # At t = 102 the agent runs 2 calls from before t = 100 and 1 since (the live replica's): 1 slot freed.
    limits._free_gone(e, [4.0, 3.0, 1.0], sent=102.0)
    assert len(limits._ledger["dead"]) == 2
    assert limits.throttler.by_function == {"ns/f": 3}
    assert limits.instances.load == {e: 3}
    limits._free_gone(e, None, sent=103.0)  # the agent did not answer, and the instance is still there: kept
    assert len(limits._ledger["dead"]) == 2
    limits._free_gone(e, [0.5], sent=104.0)  # only a call that arrived since: the dead replica's are over
    assert "dead" not in limits._ledger
    assert "dead" not in limits._gone
    assert limits.throttler.by_function == {"ns/f": 1}
    assert limits.instances.load == {e: 1}


def test_a_dead_replicas_slots_on_an_instance_that_is_gone_are_free() -> None:
    limits = shared()
    limits._grant("dead", 1, F, 5, ["10.1.0.1:8080"], 1)
    limits.drop_gone({limits.peers.identity}, now=100.0)
    limits._free_gone("10.1.0.1:8080", None, sent=101.0)  # not answering, and no longer a ready instance
    assert limits.throttler.total == 0


def test_a_replica_whose_lease_looks_expired_but_that_still_syncs_keeps_its_placed_slots() -> None:
    """The API server was too slow to take its renewals; its syncs (between replicas) say it is alive, and it may
    still send a call it was given an instance for."""
    limits = shared()
    e = "10.1.0.1:8080"
    limits._apply_sync("slow", {"held": [[1, "ns/f", "ns/f"]], "slots": {"1": [e, 10.0]}, "last": 1})
    synced = limits._synced_at["slow"]
    limits.drop_gone({limits.peers.identity}, now=synced + 1)
    limits._free_gone(e, [], sent=synced + 2)  # the agent runs nothing (the call is still on its way)
    assert limits.throttler.total == 1
    limits._free_gone(e, [], sent=synced + limits.peers.lease_seconds)  # silent for a Lease duration: dead
    assert limits.throttler.total == 0


def test_a_replica_that_renews_its_lease_again_is_not_gone() -> None:
    limits = shared()
    e = "10.1.0.1:8080"
    limits._grant("slow", 1, F, 5, [e], 1)
    limits.drop_gone({limits.peers.identity}, now=100.0)
    limits.drop_gone({limits.peers.identity, "slow"}, now=101.0)
    limits._free_gone(e, [], sent=102.0)
    assert limits.throttler.total == 1


def test_a_new_leader_learns_which_instances_the_slots_are_on() -> None:
    limits = shared()
    on_one = ["10.1.0.1:8080", 10]
    limits._apply_sync("a", {"held": [[1, "ns/f", "ns/f"]], "slots": {"1": on_one}, "last": 1})
    limits._apply_sync("b", {"held": [[4, "ns/f", "ns/f"]], "slots": {"4": on_one}, "last": 4})
    assert limits.instances.load == {"10.1.0.1:8080": 2}  # counted as they are, even over perInstance
    assert limits._grant("c", 1, F, None, ["10.1.0.1:8080", "10.1.0.2:8080"], 2) == "10.1.0.2:8080"
    # A replica's next sync moves a placement it changed; one it does not list yet (the answer may be on its
    # way) stays counted until the slot's release.
    limits._apply_sync("a", {"held": [[1, "ns/f", "ns/f"]], "slots": {"1": ["10.1.0.2:8080", 10]}, "last": 1})
    assert limits.instances.load == {"10.1.0.1:8080": 1, "10.1.0.2:8080": 2}
    limits._apply_sync("b", {"held": [[4, "ns/f", "ns/f"]], "slots": {"4": [None, 10]}, "last": 4})
    assert limits.instances.load == {"10.1.0.1:8080": 1, "10.1.0.2:8080": 2}
    limits._apply_sync("b", {"held": [], "last": 4})
    assert limits.instances.load == {"10.1.0.2:8080": 2}


def test_a_replica_syncs_in_the_format_a_leader_of_the_previous_version_reads() -> None:
    """A rolling update mixes versions: "held" keeps its three columns, the instance goes beside it."""
    limits = shared()
    limits.held[3] = Held("ns/f", "ns/f", timeout=10.0, endpoint="10.1.0.1:8080")
    limits.seq = 3
    body = limits._sync_body()
    assert body["held"] == [[3, "ns/f", "ns/f"]]
    leader = shared()
    leader._apply_sync("a", body)
    assert leader.instances.load == {"10.1.0.1:8080": 1}


def test_a_sync_taken_before_a_release_does_not_count_the_slot_again() -> None:
    limits = shared()
    limits._count("a", 1, F, None)
    limits._uncount("a", 1)  # the release arrived first
    limits._apply_sync("a", {"held": [[1, "ns/f", "ns/f"]], "last": 1})
    assert limits.throttler.total == 0


def test_a_sync_never_gives_back_a_slot_whose_grant_is_on_its_way() -> None:
    replica, leader = shared(), shared()
    replica.held[1] = Held("ns/f", "ns/f")
    replica.seq = 3
    replica._asking = {2, 3}  # asked, not answered: the leader may have counted them
    body = replica._sync_body()
    assert body["last"] == 1
    leader._count("a", 2, F, None)
    leader._apply_sync("a", body)
    assert sorted(leader._ledger["a"]) == [1, 2]


def test_a_new_leader_counts_the_calls_an_agent_runs_that_no_live_replica_holds() -> None:
    """Strays: calls older than the leader's term, less the live replicas' slots its predecessor placed there,
    count against the function and the instance until the agent no longer runs them."""
    limits = shared(pool_limit=10)
    limits._since = 100.0  # took over at t = 100
    e = "10.1.0.1:8080"
    # Before it knows every replica's slots: a replica's slot placed on e by the previous leader.
    limits._apply_sync("a", {"held": [[1, "ns/f", "ns/f"]], "slots": {"1": [e, 10.0]}, "last": 1})
    assert limits._ledger["a"][1].old
    limits.synced.set()
    # At t = 103 the agent runs 4 calls that arrived before t = 100 and 1 since: 4 - 1 (replica a's) = 3 strays.
    limits._count_strays("ns/f", "ns/f", e, [5.0, 4.0, 3.5, 3.0, 0.5], sent=103.0)
    assert limits._heard[e].count == 3
    assert limits.throttler.by_function == {"ns/f": 4}
    assert limits.instances.load == {e: 4}
    with pytest.raises(Throttled):
        limits._count("b", 1, F, 4)  # reserved 4: full
    # Two of them ended; replica a's slot was released: 1 stray left.
    limits._uncount("a", 1)
    limits._count_strays("ns/f", "ns/f", e, [6.0, 1.0], sent=104.0)
    assert limits._heard[e].count == 1
    assert limits.throttler.by_function == {"ns/f": 1}
    assert limits.instances.load == {e: 1}
    limits._count_strays("ns/f", "ns/f", e, [], sent=105.0)
    assert limits.throttler.total == 0
    assert limits.instances.load == {}


def test_a_slot_placed_by_this_leader_is_not_its_predecessors() -> None:
    limits = shared()
    limits.synced.set()
    limits._apply_sync(
        "a", {"held": [[1, "ns/f", "ns/f"]], "slots": {"1": ["10.1.0.1:8080", 10.0]}, "last": 1}
    )
    assert not limits._ledger["a"][1].old
