"""What the gateway knows of functions and their instances, kept current by watches.

Three watches across all namespaces: Functions (``kubelambda.io/v1alpha1``; published versions are Functions
too, with ``spec.versionOf``), FunctionAliases, and the EndpointSlices of the Functions' Services (label
``kubelambda.io/function``). The invoke path only reads this cache; it never calls the API.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kubelambda.api.v1alpha1 import FunctionAliasSpec, FunctionSpec
from kubelambda.gateway.auth import destination_refusal
from kubelambda.gateway.auth.reviews import AccessReviewer
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.jsonobj import JSON
from kubelambda.kube import KubeClient, list_and_watch, resource_path
from kubelambda.resources.labels import FUNCTION_LABEL
from kubelambda.resources.names import lambda_name, lambda_version

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
    # Worked out once (an entry is replaced, never changed, when its Function changes): read on every invocation.
    key: Key = field(init=False)  # (namespace, name)
    lambda_name: str = field(init=False)
    """The function name callers use: a published version's is its Function's."""
    version: str = field(init=False)
    """``$LATEST`` or the published version's number (``X-Amz-Executed-Version``)."""
    prepared: Any = field(default=None, init=False, repr=False, compare=False)
    """The invoke path's working for this entry (gateway/invoke_path.py ``Prepared``), made by its first call."""

    def __post_init__(self) -> None:
        self.key = (self.namespace, self.name)
        self.lambda_name = lambda_name(self.name, self.spec)
        self.version = lambda_version(self.spec)


VersionKey = tuple[str, str, str]  # (namespace, function, version number or alias name)


@dataclass(frozen=True)
class AliasEntry:
    namespace: str
    function: str
    name: str
    version: str  # a number or $LATEST
    additional: str | None = None  # a second version, taking ``weight`` of the invocations
    weight: float = 0.0

    def pick(self, draw: float) -> str:
        """The version one invocation runs, for a uniform ``draw`` in [0, 1)."""
        if self.additional is not None and draw < self.weight:
            return self.additional
        return self.version


@dataclass(frozen=True)
class Resolved:
    """What a qualified name invokes: the Function object that runs, and the version callers are told."""

    entry: FunctionEntry
    version: str  # X-Amz-Executed-Version
    qualifier: str  # as asked ($LATEST, a number or an alias), for the invoked ARN


class NotFound(Exception):
    """The name or qualifier names nothing; the message says which part."""


@dataclass
class Registry:
    functions: dict[Key, FunctionEntry] = field(default_factory=dict)
    # Ready "ip:port" per function, merged over its EndpointSlices.
    endpoints: dict[Key, list[str]] = field(default_factory=dict)
    _slices: dict[str, tuple[Key, list[str]]] = field(
        default_factory=dict
    )  # slice uid → (function, addresses)
    _slices_of: dict[Key, set[str]] = field(default_factory=dict)  # function → the uids of its slices
    # Published versions: (namespace, function, "N") → the Function object that holds it.
    versions: dict[VersionKey, Key] = field(default_factory=dict)
    aliases: dict[VersionKey, AliasEntry] = field(default_factory=dict)
    _alias_keys: dict[Key, VersionKey] = field(default_factory=dict)  # object (namespace, name) → alias
    # object (namespace, name) → the resourceVersion of the alias held: an older one is not applied over it
    _alias_versions: dict[Key, str] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _listed: set[str] = field(default_factory=set)
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def function(self, ref: FunctionRef) -> FunctionEntry | None:
        return self.functions.get((ref.namespace, ref.name))

    def resolve(self, ref: FunctionRef, *, draw: float | None = None) -> Resolved:
        """The one resolve step of every entry point: ``name``, ``name:N`` or ``name:alias`` → the Function
        object that runs it. An alias with weighted routing picks its version with ``draw`` (uniform in
        [0, 1), random when None), once per invocation. Raises :class:`NotFound`."""
        base = self.functions.get((ref.namespace, ref.name))
        if base is None:
            raise NotFound("function")
        qualifier = ref.qualifier
        if qualifier == "$LATEST":
            return Resolved(base, base.version, qualifier)
        if base.spec.version_of is not None:
            raise NotFound("qualifier")  # a version object's own name takes no qualifier
        version = qualifier
        if not qualifier.isdigit():
            alias = self.aliases.get((ref.namespace, ref.name, qualifier))
            if alias is None:
                raise NotFound("alias")
            version = alias.pick(random.random() if draw is None else draw)
            if version == "$LATEST":
                return Resolved(base, version, qualifier)
        key = self.versions.get((ref.namespace, ref.name, str(int(version))))
        entry = self.functions.get(key) if key is not None else None
        if entry is None:
            raise NotFound("version")
        return Resolved(entry, entry.version, qualifier)

    def ready_endpoints(self, key: Key) -> list[str]:
        return self.endpoints.get(key, [])

    def instances(self) -> list[tuple[str, str, str]]:
        """Every ready instance: (``ns/name`` of its Function object, ``ns/function`` its reserved concurrency
        counts, endpoint)."""
        return [
            (f"{ns}/{name}", f"{ns}/{fn.lambda_name}", endpoint)
            for (ns, name), endpoints in self.endpoints.items()
            if (fn := self.functions.get((ns, name))) is not None
            for endpoint in endpoints
        ]

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
        self._forget_version(key)
        if kind == "DELETED":
            self.functions.pop(key, None)
            return
        try:
            spec = FunctionSpec.model_validate(body.get("spec", {}))
        except ValueError as e:
            logger.warning("Ignored Function %s/%s with a spec the gateway cannot read: %s", *key, e)
            self.functions.pop(key, None)
            return
        if spec.version_of is not None:
            self.versions[(key[0], spec.version_of.function, str(spec.version_of.version))] = key
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

    def _forget_version(self, key: Key) -> None:
        old = self.functions.get(key)
        if old is not None and old.spec.version_of is not None:
            of = old.spec.version_of
            version_key = (key[0], of.function, str(of.version))
            if self.versions.get(version_key) == key:
                del self.versions[version_key]

    def apply_alias(self, kind: str, body: JSON) -> None:
        """A FunctionAlias as the watch delivers it, or as this gateway just wrote it (the Lambda API applies its
        own writes at once, so a moved alias routes the very next call). A watch event older than what is held
        (the write's own event, or one from before it, arriving after the write was applied) changes nothing."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        version = meta.get("resourceVersion") or ""
        if kind != "DELETED" and _older(version, self._alias_versions.get(key, "")):
            return
        old = self._alias_keys.pop(key, None)
        if old is not None:
            self.aliases.pop(old, None)
        if kind == "DELETED":
            self._alias_versions.pop(key, None)
            return
        self._alias_versions[key] = version
        try:
            spec = FunctionAliasSpec.model_validate(body.get("spec", {}))
        except ValueError as e:
            logger.warning("Ignored FunctionAlias %s/%s with a spec the gateway cannot read: %s", *key, e)
            return
        extra = spec.routing[0] if spec.routing else None
        alias_key = (key[0], spec.function, spec.name)
        self.aliases[alias_key] = AliasEntry(
            key[0],
            spec.function,
            spec.name,
            spec.function_version,
            extra.version if extra is not None else None,
            extra.weight if extra is not None else 0.0,
        )
        self._alias_keys[key] = alias_key

    def apply_slice(self, kind: str, body: JSON) -> None:
        """One slice's change: the ready endpoints of the Function it belonged to and of the one it belongs to
        are merged again from their own slices (not every Function's: with 10,000 Functions, each slice event
        merged 10,000 slices)."""
        meta = body["metadata"]
        uid = meta["uid"]
        function = meta.get("labels", {}).get(FUNCTION_LABEL)
        changed: set[Key] = set()
        old = self._slices.pop(uid, None)
        if old is not None:
            self._slices_of[old[0]].discard(uid)
            changed.add(old[0])
        if kind != "DELETED" and function is not None:
            port = next((p.get("port") for p in body.get("ports") or [] if p.get("port")), None)
            addresses = []
            if port is not None:
                for endpoint in body.get("endpoints") or []:
                    conditions = endpoint.get("conditions", {})
                    # Serving but terminating instances get no new work; ready ones do.
                    if conditions.get("ready") and not conditions.get("terminating"):
                        addresses += [f"{a}:{port}" for a in endpoint.get("addresses", [])]
            key = (meta["namespace"], function)
            self._slices[uid] = (key, sorted(addresses))
            self._slices_of.setdefault(key, set()).add(uid)
            changed.add(key)
        for key in changed:
            uids = self._slices_of.get(key)
            if uids:
                self.endpoints[key] = sorted({a for u in uids for a in self._slices[u][1]})
            else:
                self._slices_of.pop(key, None)
                self.endpoints.pop(key, None)

    # ---- watches --------------------------------------------------------------------------------------

    async def _on_functions(self, items: list[JSON]) -> None:
        self.functions.clear()
        self.versions.clear()
        for item in items:
            self.apply_function("MODIFIED", item)
        await self._notify()

    async def _on_function(self, kind: str, body: JSON) -> None:
        self.apply_function(kind, body)
        await self._notify()

    async def _on_aliases(self, items: list[JSON]) -> None:
        self.aliases.clear()
        self._alias_keys.clear()
        self._alias_versions.clear()
        for item in items:
            self.apply_alias("ADDED", item)

    async def _on_alias(self, kind: str, body: JSON) -> None:
        self.apply_alias(kind, body)

    async def _on_slices(self, items: list[JSON]) -> None:
        self._slices.clear()
        self._slices_of.clear()
        self.endpoints = {}
        for item in items:
            self.apply_slice("MODIFIED", item)
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
                resource_path("kubelambda.io/v1alpha1", "functionaliases"),
                on_list=self._synced_after(self._on_aliases, "functionaliases"),
                on_event=self._on_alias,
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
            if self._listed >= {"functions", "functionaliases", "endpointslices"}:
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

    def destination_object(self, namespace: str, target: str) -> str:
        """The Function object a ``function`` destination (``name``, ``name:N`` or ``name:alias``) sends to now
        (an alias with weighted routing picks a version per record); ``target``'s name when nothing matches (the
        record is then dead-lettered as for a missing Function)."""
        name, _, qualifier = target.partition(":")
        try:
            return self.registry.resolve(FunctionRef(namespace, name, qualifier or "$LATEST")).entry.name
        except NotFound:
            return name

    def async_function(self, namespace: str, name: str) -> FunctionSpec | None:
        fn = self.registry.functions.get((namespace, name))
        return fn.spec if fn is not None else None

    def destination_access(self) -> AccessReviewer | None:
        """Who decides whether a Function may send its records to another (None: auth is off)."""
        raise NotImplementedError

    async def destination_refusal(self, namespace: str, source: str, target: str) -> str | None:
        """Why ``source``'s execution identity may not invoke the destination ``target``, or None
        (kubelambda.gateway.auth.destination_refusal)."""
        fn = self.registry.functions.get((namespace, source))
        return await destination_refusal(
            self.destination_access(),
            namespace,
            source,
            fn.spec.service_account_name if fn is not None else None,
            target,
            arn=self.function_arn(namespace, target),
        )

    def function_arn(self, namespace: str, name: str) -> str:
        """The ARN of the Function object ``name``: a published version's is ``<function>:<N>``."""
        fn = self.registry.functions.get((namespace, name))
        if fn is not None and fn.spec.version_of is not None:
            return f"{FunctionRef(namespace, fn.lambda_name).arn(self.arn_region())}:{fn.version}"
        return FunctionRef(namespace, name).arn(self.arn_region())


def _older(version: str, than: str) -> bool:
    """``version`` is an older resourceVersion of the same object than ``than``. The API server's are etcd
    revisions, which only grow; anything else (none held, not a number) counts as not older."""
    return version.isdigit() and than.isdigit() and int(version) < int(than)
