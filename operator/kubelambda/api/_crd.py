"""CustomResourceDefinitions generated from the pydantic models.

pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: no ``$ref``, no
``anyOf`` for optional fields, ``exclusiveMinimum`` as a boolean beside ``minimum``. CEL rules travel as
``x-kubernetes-validations`` in the models' ``json_schema_extra`` and are copied as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel

from kubelambda.api.v1alpha1 import (
    GROUP,
    VERSION,
    FunctionAliasSpec,
    FunctionAliasStatus,
    FunctionSpec,
    FunctionStatus,
    TriggerSpec,
    TriggerStatus,
)
from kubelambda.jsonobj import JSON

# JSON Schema keywords that mean the same in a CRD's OpenAPI v3 schema.
_KEEP = (
    "type",
    "format",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
)


@dataclass(frozen=True)
class CrdInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[JSON, ...]
    description: str

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


_READY = '.status.conditions[?(@.type=="Ready")]'
CRDS: tuple[CrdInfo, ...] = (
    CrdInfo(
        kind="Function",
        plural="functions",
        short_names=("fn",),
        spec=FunctionSpec,
        status=FunctionStatus,
        description="A function: code + runtime + limits, run by the operator as a Deployment of agent pods.",
        columns=(
            {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
            {"name": "Version-Of", "type": "string", "jsonPath": ".spec.versionOf.function"},
            {"name": "Version", "type": "integer", "jsonPath": ".spec.versionOf.version"},
            {"name": "Code-SHA256", "type": "string", "jsonPath": ".status.codeSha256", "priority": 1},
            {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
            {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "priority": 1},
            {"name": "Instances", "type": "integer", "jsonPath": ".status.instances.ready"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.instances.desired", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    CrdInfo(
        kind="Trigger",
        plural="triggers",
        short_names=("trig",),
        spec=TriggerSpec,
        status=TriggerStatus,
        description="Wires an event source (bucket, queue, stream, schedule, HTTP route) to a Function.",
        columns=(
            {"name": "Function", "type": "string", "jsonPath": ".spec.function"},
            {"name": "Source", "type": "string", "jsonPath": ".status.source"},
            {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
            {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    CrdInfo(
        kind="FunctionAlias",
        plural="functionaliases",
        short_names=("fnalias",),
        spec=FunctionAliasSpec,
        status=FunctionAliasStatus,
        description="A Lambda alias: a name for a published version of a Function, with optional weighted "
        "routing to a second version.",
        columns=(
            {"name": "Function", "type": "string", "jsonPath": ".spec.function"},
            {"name": "Alias", "type": "string", "jsonPath": ".spec.name"},
            {"name": "Version", "type": "string", "jsonPath": ".spec.functionVersion"},
            {"name": "Additional", "type": "string", "jsonPath": ".spec.routing[0].version"},
            {"name": "Weight", "type": "number", "jsonPath": ".spec.routing[0].weight"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
)


def _siblings(node: JSON) -> JSON:
    """Keywords written beside a ``$ref`` or ``anyOf`` (a field's description, default, rules)."""
    out = {key: node[key] for key in _KEEP if key in node}
    if "description" in out:
        out["description"] = _description(out["description"])
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _description(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def structural(schema: JSON, defs: JSON) -> JSON:
    """One pydantic JSON schema node → a structural OpenAPI v3 node (recursively)."""
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = structural(target, defs)
        extra = _siblings(node)
        rules = merged.get("x-kubernetes-validations", []) + extra.get("x-kubernetes-validations", [])
        merged.update(extra)
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a CRD field cannot be one of several types: {options}")
        inner = structural(options[0], defs)
        rest = _siblings(node)
        rules = inner.get("x-kubernetes-validations", []) + rest.get("x-kubernetes-validations", [])
        inner.update(rest)
        if rules:
            inner["x-kubernetes-validations"] = rules
        return inner
    out: JSON = {}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    for key in _KEEP:
        if key in node:
            out[key] = node[key]
    if "description" in out:
        out["description"] = _description(out["description"])
    if node.get("format") == "date-time":
        out["type"] = "string"
    kind = out.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        properties = node.get("properties", {})
        if properties:
            out["properties"] = {name: structural(sub, defs) for name, sub in properties.items()}
            required = [r for r in node.get("required", []) if r in properties]
            if required:
                out["required"] = required
        additional = node.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = structural(additional, defs)
        elif not properties and additional in (None, True, {}):
            out["x-kubernetes-preserve-unknown-fields"] = True  # dict[str, Any]: free-form JSON
    elif kind == "array":
        out["items"] = structural(node.get("items", {}), defs)
    elif not kind and not node.get("enum") and "const" not in node:
        out["x-kubernetes-preserve-unknown-fields"] = True  # Any
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _schema(model: type[BaseModel]) -> JSON:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd_document(info: CrdInfo) -> JSON:
    spec = _schema(info.spec)
    spec["description"] = f"Desired state of the {info.kind}."
    status = _schema(info.status)
    status["description"] = f"Observed state of the {info.kind}, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": list(info.short_names),
                "categories": ["kubelambda"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(info.columns),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_documents() -> dict[str, JSON]:
    """File name → CRD, for every kind."""
    return {info.filename: crd_document(info) for info in CRDS}


_HEADER = "# Generated from the pydantic models in operator/kubelambda/api by `make crds`. Do not edit.\n"


def render_crds() -> dict[str, str]:
    """File name → YAML text exactly as checked in under crds/."""
    return {
        name: _HEADER + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True)
        for name, doc in crd_documents().items()
    }


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
