"""The gateway's ready endpoints per Function, from the EndpointSlices of their Services
(``Registry.apply_slice``): merged over a Function's slices, changed only for the Function a slice event is
about, and rebuilt whole on a relist."""

from __future__ import annotations

import asyncio
from typing import Any

from kubelambda.gateway.registry import Registry
from kubelambda.resources.labels import FUNCTION_LABEL


def slice_(uid: str, function: str | None, *ready: str, not_ready: tuple[str, ...] = ()) -> dict[str, Any]:
    labels = {} if function is None else {FUNCTION_LABEL: function}
    return {
        "metadata": {"uid": uid, "namespace": "demo", "labels": labels},
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in ready]
        + [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready],
    }


def test_a_functions_slices_are_merged_and_each_event_changes_only_its_function() -> None:
    registry = Registry()
    registry.apply_slice("ADDED", slice_("a1", "a", "10.0.0.2", not_ready=("10.0.0.9",)))
    registry.apply_slice("ADDED", slice_("a2", "a", "10.0.0.1", "10.0.0.2"))
    registry.apply_slice("ADDED", slice_("b1", "b", "10.0.1.1"))
    assert registry.endpoints == {
        ("demo", "a"): ["10.0.0.1:8080", "10.0.0.2:8080"],
        ("demo", "b"): ["10.0.1.1:8080"],
    }
    registry.apply_slice("MODIFIED", slice_("a2", "a", not_ready=("10.0.0.1",)))
    assert registry.ready_endpoints(("demo", "a")) == ["10.0.0.2:8080"]
    assert registry.ready_endpoints(("demo", "b")) == ["10.0.1.1:8080"]
    registry.apply_slice("DELETED", slice_("a1", "a"))
    assert registry.endpoints == {("demo", "a"): [], ("demo", "b"): ["10.0.1.1:8080"]}  # a slice left, empty
    registry.apply_slice("DELETED", slice_("a2", "a"))
    assert registry.endpoints == {("demo", "b"): ["10.0.1.1:8080"]}


def test_a_slice_that_changes_function_leaves_the_old_one() -> None:
    registry = Registry()
    registry.apply_slice("ADDED", slice_("s", "a", "10.0.0.1"))
    registry.apply_slice("MODIFIED", slice_("s", "b", "10.0.0.1"))
    assert registry.endpoints == {("demo", "b"): ["10.0.0.1:8080"]}
    registry.apply_slice("MODIFIED", slice_("s", None, "10.0.0.1"))  # its label removed: no Function's
    assert registry.endpoints == {}


def test_a_relist_replaces_every_slice() -> None:
    registry = Registry()
    registry.apply_slice("ADDED", slice_("a1", "a", "10.0.0.1"))
    registry.apply_slice("ADDED", slice_("b1", "b", "10.0.1.1"))
    asyncio.run(registry._on_slices([slice_("b2", "b", "10.0.1.2")]))
    assert registry.endpoints == {("demo", "b"): ["10.0.1.2:8080"]}
    asyncio.run(registry._on_slices([]))
    assert registry.endpoints == {}
    registry.apply_slice("DELETED", slice_("b2", "b"))  # gone before the relist: nothing to forget
    assert registry.endpoints == {}
