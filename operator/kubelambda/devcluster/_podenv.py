"""What a container sees: environment variables and volumes, resolved from the pod spec and the API.

Secrets and ConfigMaps are read with the node's own credentials, so the API server's Node authorizer
decides, as in a real cluster, that this node may read only what its pods reference.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, resource_path


class ConfigError(Exception):
    """The container cannot be configured yet (a missing Secret, a bad reference): ``CreateContainerConfigError``."""


@dataclass(frozen=True)
class PodFacts:
    """The values downward-API references can read."""

    pod: JSON
    pod_ip: str
    host_ip: str
    node_name: str

    def field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str(meta.get(match.group(1), {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1], {})
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")

    def resource(self, ref: JSON, default_container: str) -> str:
        name = ref.get("containerName") or default_container
        container = next((c for c in self.pod["spec"].get("containers", []) if c["name"] == name), None)
        if container is None:
            raise ConfigError(f"resourceFieldRef names unknown container {name!r}")
        kind, _, resource = ref["resource"].partition(".")
        value = container.get("resources", {}).get(kind, {}).get(resource)
        if value is None:
            # The kubelet reports node allocatable for unset limits; requests default to 0.
            value = "0" if kind == "requests" else _node_allocatable(resource)
        return _divide(str(value), str(ref.get("divisor", "1")), resource)


def _node_allocatable(resource: str) -> str:
    if resource == "cpu":
        return str(os.cpu_count() or 1)
    if resource == "memory":
        return str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return "0"


_SUFFIX = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity (``500m``, ``128Mi``, ``1e3``) as a float in base units."""
    match = re.fullmatch(
        r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", value.strip()
    )
    if not match or match.group(2) not in _SUFFIX:
        raise ConfigError(f"bad quantity {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def _divide(value: str, divisor: str, resource: str) -> str:
    # The kubelet rounds up, and reports at least 1 for a non-zero CPU value (e.g. 250m / 1 → "1").
    result = math.ceil(parse_quantity(value) / parse_quantity(divisor))
    return str(result)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, others stay as written."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(sub, value)


class ObjectCache:
    """Secrets and ConfigMaps read for one pod start, so each is fetched once."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self._cache: dict[tuple[str, str], JSON | None] = {}

    async def get(self, plural: str, name: str, *, optional: bool) -> JSON | None:
        key = (plural, name)
        if key not in self._cache:
            try:
                self._cache[key] = await self.kube.get(
                    resource_path("v1", plural, namespace=self.namespace, name=name)
                )
            except ApiError as e:
                # Only a 404 means "missing". A 403 is the Node authorizer refusing an object of a pod bound a
                # moment ago (its graph has not caught up): passing, so it propagates and the caller retries.
                if e.status != 404:
                    raise
                self._cache[key] = None
        obj = self._cache[key]
        if obj is None and not optional:
            kind = "secret" if plural == "secrets" else "configmap"
            raise ConfigError(f'{kind} "{name}" not found')
        return obj

    async def data(self, plural: str, name: str, *, optional: bool) -> dict[str, bytes]:
        obj = await self.get(plural, name, optional=optional)
        if obj is None:
            return {}
        out: dict[str, bytes] = {}
        if plural == "secrets":
            out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        else:
            out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out


async def container_env(
    container: JSON,
    *,
    facts: PodFacts,
    objects: ObjectCache,
    base: Mapping[str, str],
) -> dict[str, str]:
    """``base`` (what every container gets), then ``envFrom``, then ``env``, each later one winning."""
    env = dict(base)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            values = await objects.data("configmaps", ref["name"], optional=bool(ref.get("optional")))
        elif "secretRef" in source:
            ref = source["secretRef"]
            values = await objects.data("secrets", ref["name"], optional=bool(ref.get("optional")))
        else:
            raise ConfigError(f"unsupported envFrom source {sorted(source)}")
        env.update({prefix + k: v.decode(errors="replace") for k, v in values.items()})
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = facts.field(source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = facts.resource(source["resourceFieldRef"], container["name"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            plural, ref = (
                ("secrets", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("configmaps", source["configMapKeyRef"])
            )
            optional = bool(ref.get("optional"))
            values = await objects.data(plural, ref["name"], optional=optional)
            if ref["key"] in values:
                env[name] = values[ref["key"]].decode(errors="replace")
            elif not optional:
                kind = "secret" if plural == "secrets" else "configmap"
                raise ConfigError(
                    f"couldn't find key {ref['key']} in {kind} {objects.namespace}/{ref['name']}"
                )
        else:
            raise ConfigError(f"unsupported valueFrom for env {name!r}: {sorted(source)}")
    return env


def _write(directory: Path, relative: str, content: bytes, mode: int | None) -> None:
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents:
        raise ConfigError(f"volume item path {relative!r} escapes its volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode if mode is not None else 0o644)


def _project_keys(
    directory: Path, values: dict[str, bytes], items: list[JSON] | None, default_mode: int | None, what: str
) -> None:
    if items:
        for item in items:
            if item["key"] not in values:
                raise ConfigError(f"{what} has no key {item['key']!r}")
            _write(directory, item["path"], values[item["key"]], item.get("mode", default_mode))
    else:
        for key, value in values.items():
            _write(directory, key, value, default_mode)


def _downward(directory: Path, items: list[JSON], facts: PodFacts, default_mode: int | None) -> None:
    first = facts.pod["spec"]["containers"][0]["name"]
    for item in items:
        if "fieldRef" in item:
            value = facts.field(item["fieldRef"]["fieldPath"])
        else:
            value = facts.resource(item["resourceFieldRef"], first)
        _write(directory, item["path"], value.encode(), item.get("mode", default_mode))


async def _project_object(
    directory: Path, objects: ObjectCache, plural: str, name: str, ref: JSON, mode: int | None
) -> None:
    """A ConfigMap's or Secret's keys (all, or ``ref['items']``) as files, for a volume or a projection."""
    values = await objects.data(plural, name, optional=bool(ref.get("optional")))
    kind = "secret" if plural == "secrets" else "configmap"
    _project_keys(directory, values, ref.get("items"), mode, f"{kind} {name}")


async def materialize_volume(
    volume: JSON, directory: Path, *, facts: PodFacts, objects: ObjectCache, kube: KubeClient
) -> None:
    """Writes one pod volume as a folder (ConfigMap, Secret, emptyDir, downwardAPI, projected, hostPath)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = volume["name"]
    if "emptyDir" in volume:
        return
    if "hostPath" in volume:
        directory.rmdir()
        directory.symlink_to(volume["hostPath"]["path"])
        return
    if "configMap" in volume:
        src = volume["configMap"]
        await _project_object(directory, objects, "configmaps", src["name"], src, src.get("defaultMode"))
        return
    if "secret" in volume:
        src = volume["secret"]
        await _project_object(directory, objects, "secrets", src["secretName"], src, src.get("defaultMode"))
        return
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        _downward(directory, src.get("items", []), facts, src.get("defaultMode"))
        return
    if "projected" in volume:
        src = volume["projected"]
        mode = src.get("defaultMode")
        for source in src.get("sources", []):
            if "serviceAccountToken" in source:
                token = await _service_account_token(kube, facts, source["serviceAccountToken"])
                _write(directory, source["serviceAccountToken"]["path"], token.encode(), mode or 0o600)
            elif "configMap" in source:
                ref = source["configMap"]
                await _project_object(directory, objects, "configmaps", ref["name"], ref, mode)
            elif "secret" in source:
                ref = source["secret"]
                await _project_object(directory, objects, "secrets", ref["name"], ref, mode)
            elif "downwardAPI" in source:
                _downward(directory, source["downwardAPI"].get("items", []), facts, mode)
            else:
                raise ConfigError(
                    f"volume {name!r}: projected source {sorted(source)} is not supported locally"
                )
        return
    kinds = sorted(k for k in volume if k != "name")
    raise ConfigError(f"volume {name!r}: type {kinds} is not supported by the local node")


async def _service_account_token(kube: KubeClient, facts: PodFacts, source: JSON) -> str:
    meta = facts.pod["metadata"]
    spec: JSON = {
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]},
        "expirationSeconds": int(source.get("expirationSeconds", 3607)),
    }
    if source.get("audience"):
        spec["audiences"] = [source["audience"]]
    sa = facts.pod["spec"].get("serviceAccountName", "default")
    path = resource_path("v1", "serviceaccounts", namespace=meta["namespace"], name=sa, subresource="token")
    result = await kube.create(
        path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    )
    return str(result["status"]["token"])
