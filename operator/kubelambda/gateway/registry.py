"""What the gateway knows of functions and their instances, kept current by watches.

Two watches across all namespaces: Functions (``kubelambda.io/v1alpha1``) and the EndpointSlices of their
Services (label ``kubelambda.io/function``). The invoke path only reads this cache; it never calls the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kubelambda.api.v1alpha1 import FunctionSpec
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.jsonobj import JSON
from kubelambda.kube import KubeClient, list_and_watch, resource_path
from kubelambda.resources.labels import FUNCTION_LABEL

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)
_STARTING_REASONS = ("InstancesStarting",)


@dataclass
class FunctionEntry:
    namespace: str
    name: str
    spec: FunctionSpec
    ready: bool
    not_ready: str  # "reason: message" of the Ready condition when it is not True

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass
class Registry:
    functions: dict[Key, FunctionEntry] = field(default_factory=dict)
    # Ready "ip:port" per function, merged over its EndpointSlices.
    endpoints: dict[Key, list[str]] = field(default_factory=dict)
    _slices: dict[str, tuple[Key, list[str]]] = field(
        default_factory=dict
    )  # slice uid → (function, addresses)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _listed: set[str] = field(default_factory=set)
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def function(self, ref: FunctionRef) -> FunctionEntry | None:
        return self.functions.get((ref.namespace, ref.name))

    def ready_endpoints(self, key: Key) -> list[str]:
        return self.endpoints.get(key, [])

    async def wait_for_endpoints(self, key: Key, *, timeout: float) -> list[str]:
        """Ready endpoints of ``key`` once there is one; ``[]`` when ``timeout`` passes first."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: bool(self.endpoints.get(key))), timeout)
            except TimeoutError:
                return []
        return self.endpoints.get(key, [])

    # ---- cache updates (from the watches) -----------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def apply_function(self, kind: str, body: JSON) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.functions.pop(key, None)
            return
        try:
            spec = FunctionSpec.model_validate(body.get("spec", {}))
        except ValueError as e:
            logger.warning("Ignored Function %s/%s with a spec the gateway cannot read: %s", *key, e)
            self.functions.pop(key, None)
            return
        ready = next(
            (c for c in body.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), None
        )
        # Invocable when Ready, and also while its instances start (the activator's own scale-up makes a
        # function scaled to zero "InstancesStarting" until its first instance is ready).
        is_ready = ready is not None and (
            ready.get("status") == "True" or ready.get("reason") in _STARTING_REASONS
        )
        why = (
            ""
            if is_ready
            else (f"{ready.get('reason', '')}: {ready.get('message', '')}" if ready else "not reconciled yet")
        )
        self.functions[key] = FunctionEntry(meta["namespace"], meta["name"], spec, is_ready, why)

    def apply_slice(self, kind: str, body: JSON) -> None:
        meta = body["metadata"]
        uid = meta["uid"]
        function = meta.get("labels", {}).get(FUNCTION_LABEL)
        if kind == "DELETED" or function is None:
            self._slices.pop(uid, None)
        else:
            port = next((p.get("port") for p in body.get("ports") or [] if p.get("port")), None)
            addresses = []
            if port is not None:
                for endpoint in body.get("endpoints") or []:
                    conditions = endpoint.get("conditions", {})
                    # Serving but terminating instances get no new work; ready ones do.
                    if conditions.get("ready") and not conditions.get("terminating"):
                        addresses += [f"{a}:{port}" for a in endpoint.get("addresses", [])]
            self._slices[uid] = ((meta["namespace"], function), sorted(addresses))
        merged: dict[Key, list[str]] = {}
        for key, addresses in self._slices.values():
            merged.setdefault(key, []).extend(addresses)
        self.endpoints = {k: sorted(set(v)) for k, v in merged.items()}

    # ---- watches --------------------------------------------------------------------------------------

    async def _on_functions(self, items: list[JSON]) -> None:
        self.functions.clear()
        for item in items:
            self.apply_function("MODIFIED", item)
        await self._notify()

    async def _on_function(self, kind: str, body: JSON) -> None:
        self.apply_function(kind, body)
        await self._notify()

    async def _on_slices(self, items: list[JSON]) -> None:
        self._slices.clear()
        for item in items:
            self.apply_slice("MODIFIED", item)
        if not items:
            self.endpoints = {}
        await self._notify()

    async def _on_slice(self, kind: str, body: JSON) -> None:
        self.apply_slice(kind, body)
        await self._notify()

    async def run(self, kube: KubeClient) -> None:
        """Keeps both caches current until cancelled; :attr:`synced` is set once both initial lists are in."""
        await asyncio.gather(
            list_and_watch(
                kube,
                resource_path("kubelambda.io/v1alpha1", "functions"),
                on_list=self._synced_after(self._on_functions, "functions"),
                on_event=self._on_function,
            ),
            list_and_watch(
                kube,
                resource_path("discovery.k8s.io/v1", "endpointslices"),
                params={"labelSelector": FUNCTION_LABEL},
                on_list=self._synced_after(self._on_slices, "endpointslices"),
                on_event=self._on_slice,
            ),
        )

    def _synced_after(
        self, handler: Callable[[list[JSON]], Awaitable[None]], what: str
    ) -> Callable[[list[JSON]], Awaitable[None]]:
        async def wrapped(items: list[JSON]) -> None:
            await handler(items)
            self._listed.add(what)
            if self._listed >= {"functions", "endpointslices"}:
                self.synced.set()

        return wrapped


class RegistryLookups:
    """What the async worker asks of the Functions (:class:`kubelambda.asyncworker.worker.Invoker`), answered
    from a :class:`Registry`; shared by the gateway and the standalone worker."""

    registry: Registry

    def arn_region(self) -> str:
        raise NotImplementedError

    async def wait_synced(self) -> None:
        await self.registry.synced.wait()

    def async_function(self, namespace: str, name: str) -> FunctionSpec | None:
        fn = self.registry.functions.get((namespace, name))
        return fn.spec if fn is not None else None

    def function_arn(self, namespace: str, name: str) -> str:
        return FunctionRef(namespace, name).arn(self.arn_region())
