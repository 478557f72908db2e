"""docs/reference.md is exactly what the models generate, and says what the models say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubelambda import metrics
from kubelambda.api import crd_documents
from kubelambda.api.__main__ import main
from kubelambda.api._docs import refresh_metrics, render_metrics_table, render_reference

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
METRICS = ROOT / "docs" / "metrics.md"


def test_checked_in_reference_matches_the_models() -> None:
    assert REFERENCE.read_text() == render_reference(), (
        "docs/reference.md drifted from the models: run `make docs-reference`"
    )


def _fields(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    """(dotted path, schema) of every property under a schema node."""
    out: list[tuple[str, dict[str, object]]] = []
    if not isinstance(node, dict):
        return out
    for name, sub in node.get("properties", {}).items():
        out.append((f"{path}.{name}", sub))
        out += _fields(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += _fields(node[key], path)
    return out


def _schemas() -> list[tuple[str, dict[str, object]]]:
    out = []
    for doc in crd_documents().values():
        schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = doc["spec"]["names"]["kind"]
        for part in ("spec", "status"):
            out += _fields(schema["properties"][part], f"{kind}.{part}")
    return out


def test_every_field_description_and_rule_message_is_in_the_reference() -> None:
    text = render_reference()
    missing = []
    for path, node in _schemas():
        name = path.rsplit(".", 1)[-1]
        if f"`{name}`" not in text:
            missing.append(f"field {path}")
        description = node.get("description")
        if isinstance(description, str) and " ".join(description.replace("|", "\\|").split()) not in text:
            missing.append(f"description of {path}")
        for rule in node.get("x-kubernetes-validations", []):  # type: ignore[union-attr]
            if rule["message"] not in text:
                missing.append(f"rule of {path}: {rule['message']}")
    assert not missing, missing


@pytest.mark.parametrize(
    ("needle", "why"),
    [
        ("| `memoryMB` | integer | `128` | 128 ≤ value ≤ 10240 |", "a default and a range"),
        ("| `timeoutSeconds` | integer | `3` | 1 ≤ value ≤ 900 |", "Lambda's default timeout"),
        ("[`code`](#functionspeccode) (required)", "a required object links to its section"),
        ("### `Function.spec.envFrom[]`", "a list of objects gets a section"),
        ("exactly one of code.inline, code.archive, code.s3, code.image must be set", "an object's CEL rule"),
        ("`kubectl get` columns: Function, Source, Ready, Reason (`-o wide`), Age.", "the printer columns"),
    ],
    ids=["memory", "timeout", "link", "list", "rule", "columns"],
)
def test_reference_shapes(needle: str, why: str) -> None:
    assert needle in render_reference(), why


def test_every_section_link_resolves() -> None:
    text = render_reference()
    headings = {
        "".join(c for c in line[4:].lower() if c.isalnum() or c in "-_ ").replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("### ")
    }
    headings |= {"function", "trigger", "functionalias"}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links
    assert links <= headings, sorted(links - headings)


def test_checked_in_metrics_table_matches_the_registry() -> None:
    text = METRICS.read_text()
    assert refresh_metrics(text) == text, (
        "docs/metrics.md drifted from kubelambda.metrics: run `make docs-reference`"
    )


def test_every_registered_metric_is_in_the_table() -> None:
    table = render_metrics_table()
    names = {m.name for m in metrics.REGISTRY.collect()}
    assert names
    for name in names:
        shown = f"{name}_total" if f"`{name}_total`" in table else name
        assert f"`{shown}`" in table, name


def test_the_command_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.md").write_text(f"intro\n{render_metrics_table().replace('kubelambda_', 'old_')}\nend\n")
    assert main(["docs", str(out)]) == 0
    assert (out / "reference.md").read_text() == render_reference()
    assert (out / "metrics.md").read_text() == f"intro\n{render_metrics_table()}\nend\n"
    assert f"Wrote {out / 'reference.md'}" in capsys.readouterr().out
    assert main(["crds", str(tmp_path / "crds")]) == 0
    assert sorted(p.name for p in (tmp_path / "crds").iterdir()) == sorted(crd_documents())
    assert main(["docs", "a", "b"]) == 2
