"""The checked-in CRDs are exactly what the models generate; the models carry Lambda's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubelambda.api import render_crds
from kubelambda.api.v1alpha1 import FunctionSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_checked_in_crds_match_the_models() -> None:
    rendered = render_crds()
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(rendered)
    for name, text in rendered.items():
        assert (CRDS / name).read_text() == text, f"crds/{name} drifted from the models: run `make crds`"


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _walk(value, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_schemas_are_structural(name: str) -> None:
    doc = yaml.safe_load(render_crds()[name])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "title"} & set(node), path


@pytest.mark.parametrize(
    ("field", "default"),
    [
        ("memory_mb", 128),
        ("timeout_seconds", 3),
        ("ephemeral_storage_mb", 512),
    ],
    ids=["memoryMB", "timeoutSeconds", "ephemeralStorageMB"],
)
def test_function_defaults_are_lambdas(field: str, default: int) -> None:
    spec = FunctionSpec.model_validate(
        {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"a": "b"}}}
    )
    assert getattr(spec, field) == default
    assert spec.concurrency.per_instance == 1
    assert (spec.scaling.min_instances, spec.scaling.scale_to_zero_after_seconds) == (0, 60)
    assert (spec.async_.max_retries, spec.async_.max_event_age_seconds) == (2, 21600)


def test_printer_columns_and_names() -> None:
    fn = yaml.safe_load(render_crds()["kubelambda.io_functions.yaml"])
    trig = yaml.safe_load(render_crds()["kubelambda.io_triggers.yaml"])
    assert fn["spec"]["names"]["shortNames"] == ["fn"]
    assert trig["spec"]["names"]["shortNames"] == ["trig"]
    assert fn["spec"]["names"]["categories"] == ["kubelambda"] == trig["spec"]["names"]["categories"]
    shown = [c["name"] for c in fn["spec"]["versions"][0]["additionalPrinterColumns"] if "priority" not in c]
    assert shown == ["Runtime", "Version-Of", "Version", "Ready", "Instances", "Age"]
    shown = [
        c["name"] for c in trig["spec"]["versions"][0]["additionalPrinterColumns"] if "priority" not in c
    ]
    assert shown == ["Function", "Source", "Ready", "Age"]
    assert fn["spec"]["versions"][0]["subresources"] == {"status": {}}
    alias = yaml.safe_load(render_crds()["kubelambda.io_functionaliases.yaml"])
    assert alias["spec"]["names"]["shortNames"] == ["fnalias"]
    shown = [c["name"] for c in alias["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert shown == ["Function", "Alias", "Version", "Additional", "Weight", "Age"]
