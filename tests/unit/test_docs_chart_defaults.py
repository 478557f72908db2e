"""What the docs say the chart's defaults are is what helm/kubelambda/values.yaml says.

Checked: the values table of docs/helm.md, and wherever a doc names a value with its default —
"`gateway.replicas` (default 1)", "the chart's default is `gateway.replicas: 1`", "`x.y` defaults to 3".
A key the docs name that values.yaml does not have is drift too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "helm" / "kubelambda" / "values.yaml"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

KEY = r"[a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)+"
MENTIONS = [
    # `gateway.replicas` (default 1) / (default: `1`)
    re.compile(rf"`(?P<key>{KEY})`\s*\(default:?\s+`?(?P<value>[^`);,\s]+)`?"),
    # default is `gateway.replicas: 1` / default `gateway.replicas: 1`
    re.compile(rf"default(?:s| is|,)?\s+`(?P<key>{KEY}):\s*(?P<value>[^`]+)`"),
    # `gateway.replicas` defaults to 1
    re.compile(rf"`(?P<key>{KEY})`\s+defaults to\s+`?(?P<value>[^`\s,;)]+?)`?[\s,;.)]"),
]


def flatten(node: object, prefix: str = "") -> dict[str, str]:
    """Dotted path -> the value as a doc writes it (``true``, ``1``, ``ClusterIP``; maps and lists as YAML)."""
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for key, sub in node.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, bool):
        return {prefix: str(node).lower()}
    if isinstance(node, dict | list):
        return {prefix: yaml.safe_dump(node, default_flow_style=True).strip()}
    return {prefix: str(node)}


VALUES_FLAT = flatten(yaml.safe_load(VALUES.read_text()))
TOP = {key.split(".", 1)[0] for key in VALUES_FLAT}


def mentions(text: str) -> list[tuple[str, str]]:
    """(key, value) of every "key with its default" in prose, for keys under a top-level chart value."""
    text = " ".join(text.split())  # a mention may wrap across lines
    found = []
    for pattern in MENTIONS:
        for m in pattern.finditer(text):
            if m["key"].split(".", 1)[0] in TOP:
                found.append((m["key"], m["value"].strip()))
    return found


def helm_table() -> list[tuple[str, str]]:
    """(key, default) from docs/helm.md's values table, where both cells name plain keys and literal values.

    A cell may list several: "`a.b.c` / `d` / `e.f`" with "`1` / `x` / `y`": a.b.c, a.b.d and a.e.f.
    """
    rows = []
    for line in (ROOT / "docs" / "helm.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        keys = [k.strip().strip("`") for k in re.split(r"\s+/\s+|,\s+", cells[0])]
        defaults = [d.strip() for d in re.split(r"\s+/\s+|,\s+", cells[1])]
        if len(keys) != len(defaults) or "." not in keys[0]:
            continue
        first = keys[0].split(".")
        for key, default in zip(keys, defaults, strict=True):
            literal = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", default)
            if literal is None:
                continue  # "appVersion", "—", "the gateway Service's DNS name": not a literal
            tail = key.split(".")  # replaces as many trailing parts of the first key
            rows.append((".".join(first[: len(first) - len(tail)] + tail), literal[1]))
    return rows


def test_the_values_table_of_helm_md_says_what_values_yaml_says() -> None:
    rows = helm_table()
    assert ("gateway.replicas", "3") in [(k, VALUES_FLAT.get(k)) for k, _ in rows], rows  # the table is read
    wrong = [
        f"{key}: docs/helm.md says {default!r}, values.yaml {VALUES_FLAT.get(key, '(no such key)')!r}"
        for key, default in rows
        if VALUES_FLAT.get(key) != default
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_defaults_named_in_prose_are_the_charts(doc: Path) -> None:
    wrong = [
        f"{doc.name}: `{key}` default {value!r}, values.yaml {VALUES_FLAT.get(key, '(no such key)')!r}"
        for key, value in mentions(doc.read_text())
        if VALUES_FLAT.get(key) != value
    ]
    assert not wrong, "\n".join(wrong)


def test_the_gateway_replica_count_is_checked_where_the_docs_give_it() -> None:
    # The mentions that once disagreed (operations.md said 2, scaling.md 1) are found by the checks above.
    for name in ("operations.md", "scaling.md"):
        found = mentions((ROOT / "docs" / name).read_text())
        assert ("gateway.replicas", VALUES_FLAT["gateway.replicas"]) in found, (name, found)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("| gateway | `gateway.replicas` (default 2), PodDisruptionBudget", [("gateway.replicas", "2")]),
        ("the chart's default is `gateway.replicas: 3` for this", [("gateway.replicas", "3")]),
        ("`nats.replicas` defaults to 5.", [("nats.replicas", "5")]),
        ("(default: `false`)", []),
        ("`spec.replicas` (default 1)", []),  # not a chart value
        ("`nats.replicas: 1`, `3` or `5`", []),  # choices, not a default
    ],
)
def test_mentions(text: str, found: list[tuple[str, str]]) -> None:
    assert mentions(text) == found
