"""A PostgreSQL stream Trigger deleted with its namespace.

Its bridge holds :data:`~kubelambda.resources.bridge.CLEANUP_FINALIZER` until it dropped the replication slot and
publication it created (kubelambda.bridge.streams.postgres). When the whole namespace is deleted, the bridge's
Deployment and pod go too and a terminating namespace admits no new pod: nothing could ever take the finalizer off,
and the Trigger, and with it the namespace, would stay Terminating for ever (``kubectl delete namespace`` hangs).
So the operator gives a bridge still running :data:`GRACE_SECONDS` to drop what it created, then takes the
finalizer off itself, saying in a Warning Event and its log what may be left in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

import aiohttp
import kopf

from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, change_finalizer, resource_path
from kubelambda.resources.bridge import CLEANUP_FINALIZER

log = logging.getLogger("kubelambda.operator")

GRACE_SECONDS = 30.0
"""How long a running bridge gets to drop its slot once its namespace is being deleted (it polls every 5 s)."""

POLL_SECONDS = 2.0
"""How often a held Trigger and its namespace are read while it waits for its bridge."""

_releasing: set[tuple[str, str]] = set()


def held_in_deletion(trigger: JSON) -> bool:
    """A Trigger being deleted that still carries the bridge's cleanup finalizer."""
    meta = trigger.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) and CLEANUP_FINALIZER in (meta.get("finalizers") or [])


async def follow_held_trigger(kube: KubeClient, trigger: JSON, *, grace: float = GRACE_SECONDS) -> None:
    """Follows a Trigger being deleted that its bridge's finalizer holds (one task per Trigger, until it is gone or
    released): once its namespace has been terminating for ``grace`` seconds, takes the finalizer off. A Trigger
    deleted on its own in a living namespace is left to its bridge (woken by the operator when disabled)."""
    meta = trigger["metadata"]
    key = (meta["namespace"], meta["name"])
    if key in _releasing or not held_in_deletion(trigger):
        return
    _releasing.add(key)
    task = asyncio.create_task(_follow(kube, dict(trigger), grace), name=f"release-{key[0]}/{key[1]}")
    task.add_done_callback(lambda _: _releasing.discard(key))


async def _follow(kube: KubeClient, trigger: JSON, grace: float) -> None:
    meta = trigger["metadata"]
    path = resource_path(f"{GROUP}/{VERSION}", "triggers", namespace=meta["namespace"], name=meta["name"])
    namespace_path = resource_path("v1", "namespaces", name=meta["namespace"])
    terminating_since: float | None = None
    while True:
        try:
            current = await kube.get_or_none(path)
            if (
                current is None
                or not held_in_deletion(current)
                or current["metadata"].get("uid") != meta.get("uid")
            ):
                return  # its bridge dropped what it created and let the Trigger go
            namespace = await kube.get_or_none(namespace_path)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning(
                "Could not read Trigger %s/%s or its namespace: %s", meta["namespace"], meta["name"], e
            )
        else:
            if namespace is None or (namespace.get("metadata") or {}).get("deletionTimestamp"):
                terminating_since = terminating_since or time.monotonic()
                if time.monotonic() - terminating_since >= grace:
                    await _release(kube, trigger, path)
                    return
        await asyncio.sleep(POLL_SECONDS)


async def _release(kube: KubeClient, trigger: JSON, path: str) -> None:
    meta = trigger["metadata"]
    try:
        released = await change_finalizer(kube, path, CLEANUP_FINALIZER, hold=False, uid=meta.get("uid"))
    except (ApiError, RuntimeError) as e:
        log.warning(
            "Could not release Trigger %s/%s in its deleted namespace: %s", meta["namespace"], meta["name"], e
        )
        return
    if released:
        message = (
            f"Namespace {meta['namespace']} is being deleted and the bridge of Trigger {meta['name']} cannot run "
            f"there any more: the replication slot and publication it created may be left in the database "
            f"(docs/triggers-database.md: drop them by hand)"
        )
        log.warning("%s", message)
        with contextlib.suppress(Exception):
            kopf.warn(
                kopf.Body(cast(kopf.RawBody, _event_body(trigger))), reason="SlotMayBeLeft", message=message
            )


def _event_body(trigger: JSON) -> dict[str, Any]:
    meta = trigger["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Trigger",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
    }
