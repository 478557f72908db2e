"""How the operator paces itself against the API server (_pace) and decides an object needs no write (_owned)."""

from __future__ import annotations

import asyncio

import pytest

from kubelambda.kube import ApiError
from kubelambda.operator import _pace
from kubelambda.operator._owned import APPLIED_ANNOTATION, contains, every_step, stored_form, with_digest
from kubelambda.operator._pace import AdaptiveLimit, backoff_seconds, is_transient, retrying


def test_transient_answers_are_busy_not_refusals() -> None:
    for status in (429, 500, 502, 503, 504):
        assert is_transient(ApiError(status, "", "")), status
    for status in (400, 403, 404, 409, 422):
        assert not is_transient(ApiError(status, "", "")), status
    assert is_transient(TimeoutError())
    assert not is_transient(ValueError())


def test_backoff_doubles_up_to_its_cap_and_is_spread() -> None:
    lows = [backoff_seconds(n, rand=lambda: 0.0) for n in range(8)]
    highs = [backoff_seconds(n, rand=lambda: 1.0) for n in range(8)]
    assert lows[:3] == [0.25, 0.5, 1.0]
    assert highs[:3] == [0.5, 1.0, 2.0]
    assert highs[-1] == _pace.BACKOFF_MAX
    assert all(lo < hi for lo, hi in zip(lows, highs, strict=True))  # a range, not one instant


def test_the_limit_halves_on_overload_once_per_window_and_grows_back_by_one_per_round() -> None:
    now = [0.0]
    limit = AdaptiveLimit(100, clock=lambda: now[0])
    limit.overloaded()
    limit.overloaded()  # the same overload, reported by another reconcile already running
    assert limit.limit == 50
    now[0] += _pace.CUT_SECONDS
    limit.overloaded()
    assert limit.limit == 25
    for _ in range(25):  # one round of 25 reconciles
        limit.succeeded()
    assert 25.9 < limit.limit < 26.1
    for _ in range(10):
        now[0] += _pace.CUT_SECONDS
        limit.overloaded()
    assert limit.limit == _pace.MIN_LIMIT
    for _ in range(100_000):
        limit.succeeded()
    assert limit.limit == 100


async def test_the_limit_admits_no_more_than_its_size() -> None:
    limit = AdaptiveLimit(3)
    running = peak = 0
    release = asyncio.Event()

    async def one() -> None:
        nonlocal running, peak
        async with limit:
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(one()) for _ in range(10)]
    for _ in range(50):  # every task had every chance to enter
        await asyncio.sleep(0)
    assert (running, limit.held) == (3, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert (peak, limit.held) == (3, 0)


async def test_retrying_retries_only_transient_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pace, "backoff_seconds", lambda attempt: 0.0)
    told: list[int] = []
    answers: list[BaseException | str] = [ApiError(504, "Timeout", ""), TimeoutError(), "done"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await retrying(call, overloaded=lambda: told.append(1)) == "done"
    assert len(told) == 2
    answers[:] = [ApiError(409, "Conflict", ""), "never"]
    with pytest.raises(ApiError) as refused:
        await retrying(call, overloaded=lambda: told.append(1))
    assert refused.value.status == 409
    assert len(told) == 2
    answers[:] = [ApiError(503, "", "")] * _pace.ATTEMPTS + ["never"]
    with pytest.raises(ApiError):
        await retrying(call, overloaded=lambda: told.append(1))
    assert answers == ["never"]


def test_an_object_holding_all_it_would_be_applied_with_needs_no_write() -> None:
    want = with_digest(
        {
            "kind": "Service",
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"ports": [{"port": 80}], "selector": {"x": "1"}},
        }
    )
    assert len(want["metadata"]["annotations"][APPLIED_ANNOTATION]) == 64
    live = {
        "kind": "Service",
        "metadata": {
            "name": "a",
            "labels": {"x": "1"},
            "annotations": dict(want["metadata"]["annotations"]),
            "resourceVersion": "7",
        },
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"x": "1"}, "type": "ClusterIP"},
    }
    assert contains(live, want)  # the API server's defaults are extra, not different
    # A false the API server does not keep is held; a true it would keep is not.
    assert contains(live, {**want, "spec": {**want["spec"], "publishNotReadyAddresses": False}})
    assert not contains(live, {**want, "spec": {**want["spec"], "publishNotReadyAddresses": True}})
    drifted = {**live, "spec": {**live["spec"], "selector": {"x": "2"}}}
    assert not contains(drifted, want)
    extra_port = {**live, "spec": {**live["spec"], "ports": [{"port": 80}, {"port": 81}]}}
    assert not contains(extra_port, want)
    # A field the operator no longer sets is only seen through the digest: the new body's differs.
    fewer = with_digest({**want, "metadata": {"name": "a"}})
    assert (
        fewer["metadata"]["annotations"][APPLIED_ANNOTATION]
        != want["metadata"]["annotations"][APPLIED_ANNOTATION]
    )
    assert not contains(live, fewer)


def test_a_secret_written_as_string_data_is_compared_as_the_data_it_is_kept_as() -> None:
    want = {"kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque", "stringData": {"token": "abc"}}
    live = {"kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque", "data": {"token": "YWJj"}}
    assert contains(live, stored_form(want))
    assert not contains(live, stored_form({**want, "stringData": {"token": "abd"}}))


async def test_a_failed_step_is_raised_only_once_every_other_step_has_ended() -> None:
    """No step outlives its reconcile: the slow step's own failure would otherwise surface later, unretrieved
    (kopf raises it when it stops), and its write would race the retry."""
    slow_may_end = asyncio.Event()
    ended: list[str] = []

    async def fails_at_once() -> None:
        raise ApiError(403, "Forbidden", "namespace is being terminated")

    async def slow() -> str:
        await slow_may_end.wait()
        ended.append("slow")
        raise ApiError(403, "Forbidden", "the second failure")

    task = asyncio.create_task(every_step([fails_at_once(), slow()]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()  # asyncio.gather would have raised the first failure by now
    slow_may_end.set()
    with pytest.raises(ApiError, match="namespace is being terminated"):
        await task
    assert ended == ["slow"]


async def test_every_step_returns_the_results_in_order() -> None:
    async def value(v: int) -> int:
        await asyncio.sleep(0)
        return v

    assert await every_step([value(1), value(2), value(3)]) == [1, 2, 3]
