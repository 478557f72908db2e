"""``docs/reference.md``: the Function, Trigger and FunctionAlias reference, generated from the models.

It walks the same structural schema the CRDs are made of (``crd_documents()``), so every field, type, default,
limit, description and CEL rule message in the reference is exactly what the API server enforces. One section
per object (``spec``, ``spec.code``, ``spec.code.s3``, ...), each a table of its fields and the list of its rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubelambda.api._crd import CRDS, crd_documents
from kubelambda.api.v1alpha1 import API_VERSION
from kubelambda.api.v1alpha1._common import CONDITION_REASON, DNS_LABEL, DNS_SUBDOMAIN
from kubelambda.jsonobj import JSON

_HEADER = f"""\
<!-- Generated from the pydantic models in operator/kubelambda/api by `make docs-reference`. Do not edit. -->
# Function and Trigger reference (`{API_VERSION}`)

Every field of the two kinds, as the API server validates them: generated from the pydantic models in
`operator/kubelambda/api/v1alpha1/` (the same schema as the CRDs in `crds/`) by `make docs-reference`
(`python -m kubelambda.api docs`); `tests/unit/test_docs_reference.py` fails when this page drifts from the
models. `kubectl explain fn.spec.scaling` shows the same descriptions. What the operator makes of these objects
is in [api.md](api.md); the concepts in [concepts.md](concepts.md).

Columns: **type** (`[]` a list, `map[string]X` an object with free keys), **default** (filled in by the API
server when the field is absent), **limits** (what the schema refuses), and the description. **Rules** are the
CEL validations of an object: the message is what `kubectl apply` prints when the rule fails.
"""


# Patterns that read better as words (the same regular expressions Kubernetes validates names with).
_NAMED_PATTERNS = {
    DNS_SUBDOMAIN: "a DNS subdomain name (RFC 1123: lower-case alphanumerics, `-`, `.`)",
    DNS_LABEL: "a DNS label (RFC 1123: lower-case alphanumerics and `-`)",
    CONDITION_REASON: "a CamelCase reason",
}


def _code(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "), sort_keys=False)
    else:
        text = str(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _type(node: JSON) -> str:
    kind = node.get("type")
    if kind == "array":
        return _type(node.get("items", {})) + "[]"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and not node.get("properties"):
            return f"map[string]{_type(extra)}"
        if node.get("x-kubernetes-preserve-unknown-fields") and not node.get("properties"):
            return "object (any JSON)"
        return "object"
    if kind is None and node.get("x-kubernetes-preserve-unknown-fields"):
        return "any JSON"
    if node.get("format") and kind == "string":
        return f"string ({node['format']})"
    return str(kind)


def _limits(node: JSON) -> str:
    parts: list[str] = []
    if "enum" in node:
        parts.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None or high is not None:
        left = "" if low is None else f"{low} {'<' if node.get('exclusiveMinimum') else '≤'} "
        right = "" if high is None else f" {'<' if node.get('exclusiveMaximum') else '≤'} {high}"
        parts.append(f"{left}value{right}")
    for lo, hi, what in (
        ("minLength", "maxLength", "length"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ):
        if lo in node or hi in node:
            left = f"{node[lo]} ≤ " if lo in node else ""
            right = f" ≤ {node[hi]}" if hi in node else ""
            parts.append(f"{left}{what}{right}")
    if "pattern" in node:
        named = _NAMED_PATTERNS.get(node["pattern"])
        parts.append(named or f"matches {_code(node['pattern'])}")
    items = node.get("items")
    if node.get("type") == "array" and isinstance(items, dict) and items.get("type") != "object":
        inner = _limits(items)
        if inner:
            parts.append(f"each: {inner}")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("type") != "object":
        inner = _limits(extra)
        if inner:
            parts.append(f"each value: {inner}")
    return "; ".join(parts)


def _child_object(node: JSON) -> JSON | None:
    """The object schema a field opens (itself, its list items or its map values), if it has fields."""
    for candidate in (node, node.get("items"), node.get("additionalProperties")):
        if isinstance(candidate, dict) and candidate.get("properties"):
            return candidate
    return None


def _suffix(node: JSON) -> str:
    if node.get("type") == "array":
        return "[]"
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return "{}"
    return ""


def _anchor(path: str) -> str:
    """The anchor GitHub gives the heading ``### `path` ``."""
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _rules(node: JSON) -> list[JSON]:
    rules = list(node.get("x-kubernetes-validations", []))
    for sub in (node.get("items"), node.get("additionalProperties")):
        if isinstance(sub, dict) and not sub.get("properties"):
            rules += sub.get("x-kubernetes-validations", [])
    return rules


def _section(path: str, node: JSON, out: list[str]) -> None:
    """One object's heading, table and rules; then its child objects, depth first in field order."""
    out.append(f"### `{path}`\n")
    if node.get("description"):
        out.append(node["description"] + "\n")
    required = set(node.get("required", []))
    children: list[tuple[str, JSON]] = []
    out.append("| field | type | default | limits | description |")
    out.append("|---|---|---|---|---|")
    for name, sub in node["properties"].items():
        child = _child_object(sub)
        label = f"`{name}`"
        if child is not None:
            child_path = f"{path}.{name}{_suffix(sub)}"
            label = f"[`{name}`](#{_anchor(child_path)})"
            children.append((child_path, child))
        if name in required:
            label += " (required)"
        default = _code(sub["default"]) if "default" in sub else ""
        description = sub.get("description", "")
        field_rules = [r for r in _rules(sub) if child is None]
        if field_rules:
            description += " " + " ".join(f"Rule: {r['message']}." for r in field_rules)
        out.append(
            f"| {label} | {_cell(_type(sub))} | {_cell(default)} | {_cell(_limits(sub))} | {_cell(description)} |"
        )
    out.append("")
    rules = _rules(node)
    if rules:
        out.append("Rules:\n")
        for rule in rules:
            where = f" (reported on `{rule['fieldPath'].lstrip('.')}`)" if rule.get("fieldPath") else ""
            out.append(f"- {rule['message']}{where}")
        out.append("")
    for child_path, child in children:
        _section(child_path, child, out)


def render_reference() -> str:
    """The text of docs/reference.md."""
    documents = crd_documents()
    out = [_HEADER]
    out.append("Contents: " + ", ".join(f"[{info.kind}](#{info.kind.lower()})" for info in CRDS) + "\n")
    for info in CRDS:
        version = documents[info.filename]["spec"]["versions"][0]
        names = documents[info.filename]["spec"]["names"]
        schema = version["schema"]["openAPIV3Schema"]
        out.append(f"## {info.kind}\n")
        out.append(
            f"{info.description} `apiVersion: {API_VERSION}`, `kind: {info.kind}`, namespaced; "
            f"`kubectl get {names['plural']}` or `{', '.join(names['shortNames'])}` "
            f"(category `{names['categories'][0]}`).\n"
        )
        columns = [
            c["name"] + (" (`-o wide`)" if "priority" in c else "")
            for c in version["additionalPrinterColumns"]
        ]
        out.append(f"`kubectl get` columns: {', '.join(columns)}.\n")
        for part in ("spec", "status"):
            if schema["properties"][part].get("properties"):  # a kind without status fields has no section
                _section(f"{info.kind}.{part}", schema["properties"][part], out)
    return "\n".join(out).rstrip() + "\n"


# ---- docs/metrics.md: the table of every metric in kubelambda.metrics --------------------------------------

METRICS_BEGIN = (
    "<!-- BEGIN metrics table: generated from operator/kubelambda/metrics.py by `make docs-reference` -->"
)
METRICS_END = "<!-- END metrics table -->"

# Which process exports a metric, by name prefix (first match wins).
_EXPORTED_BY = (
    ("kubelambda_operator_", "operator (`/metrics` on its metrics port, 8082 in the chart)"),
    ("kubelambda_bridge_", "bridge (`/metrics` of each Trigger's bridge pod)"),
    ("kubelambda_log_export_", "log exporter (`/metrics` on port 9464, `logs.otlp.metricsPort`)"),
    ("kubelambda_async_events_accepted", "gateway"),
    ("kubelambda_async_", "async worker (the gateway's `/metrics` when the worker runs inside it)"),
    ("kubelambda_", "gateway (`/metrics`)"),
)


def _metric_rows() -> list[tuple[str, str, str, str, str]]:
    """(name, type, labels, exported by, help) for every collector in kubelambda.metrics, in definition order."""
    from prometheus_client.metrics import MetricWrapperBase

    from kubelambda import metrics

    rows = []
    for value in vars(metrics).values():
        if isinstance(value, metrics.Invocations):  # plain numbers behind three families (the invoke path's)
            for name, kind, label_names, help_text in value.DECLARED:
                full = f"{name}_total" if kind == "counter" else name
                labels = ", ".join(f"`{label}`" for label in label_names)
                where = next(w for prefix, w in _EXPORTED_BY if full.startswith(prefix))
                rows.append((full, kind, labels, where, help_text))
            continue
        if not isinstance(value, MetricWrapperBase):
            continue
        # prometheus_client keeps a wrapper's declaration in these attributes (it has no public accessor).
        name = str(value._name)
        kind = str(value._type)
        labels = ", ".join(f"`{label}`" for label in value._labelnames)
        help_text = str(value._documentation)
        full = f"{name}_total" if kind == "counter" else name
        where = next(w for prefix, w in _EXPORTED_BY if full.startswith(prefix))
        rows.append((full, kind, labels, where, help_text))
    return rows


def render_metrics_table() -> str:
    """The generated block of docs/metrics.md, markers included."""
    out = [METRICS_BEGIN, "| metric | type | labels | exported by | meaning |", "|---|---|---|---|---|"]
    for name, kind, labels, where, help_text in _metric_rows():
        out.append(f"| `{name}` | {kind} | {labels} | {where} | {_cell(help_text)} |")
    out.append(METRICS_END)
    return "\n".join(out)


def refresh_metrics(text: str) -> str:
    """``text`` (docs/metrics.md) with its generated block replaced by the current one."""
    start, end = text.index(METRICS_BEGIN), text.index(METRICS_END) + len(METRICS_END)
    return text[:start] + render_metrics_table() + text[end:]


def write_docs(directory: Path) -> list[Path]:
    """Write ``reference.md`` and refresh the metrics table of ``metrics.md`` (when it exists) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    reference = directory / "reference.md"
    reference.write_text(render_reference())
    written = [reference]
    metrics_page = directory / "metrics.md"
    if metrics_page.exists():
        text = metrics_page.read_text()
        fresh = refresh_metrics(text)
        if fresh != text:
            metrics_page.write_text(fresh)
        written.append(metrics_page)
    return written
