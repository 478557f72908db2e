"""kopf's last-handled spec as the operator keeps it (``_kopf.CompactDiffBase``): what changes a Function's
handling (spec, labels, annotations) and nothing else; inline code as its checksum."""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import kopf

from kubelambda.operator._kopf import CompactDiffBase

CODE = {"app.py": "def handler(event, context):\n    return 1\n"}


def body(**changes: Any) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {
            "name": "hello",
            "namespace": "demo",
            "uid": "u-1",
            "resourceVersion": "7",
            "labels": {"team": "a"},
            "annotations": {"note": "x"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": CODE}},
        "status": {"observedGeneration": 1, "kopf": {"lastHandledSpec": "{}"}},
    }
    raw.update(changes)
    return kopf.Body(cast(kopf.RawBody, raw))


def storage() -> CompactDiffBase:
    return CompactDiffBase(name="kopf", field="status.kopf.lastHandledSpec")


def test_essence_is_spec_labels_annotations_with_code_as_checksum() -> None:
    digest = hashlib.sha256(json.dumps(CODE, sort_keys=True).encode()).hexdigest()
    assert storage().build(body=body()) == {
        "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
        "spec": {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"sha256": digest}}},
    }


def test_status_and_system_metadata_do_not_change_the_essence() -> None:
    other = body(status={"observedGeneration": 9, "conditions": [{"type": "Ready"}]})
    other["metadata"]["resourceVersion"] = "8"
    assert storage().build(body=other) == storage().build(body=body())


def test_code_change_changes_the_essence_and_leaves_the_body_alone() -> None:
    original = body()
    changed = body(spec={**original["spec"], "code": {"inline": {"app.py": "pass\n"}}})
    assert storage().build(body=changed) != storage().build(body=original)
    assert original["spec"]["code"]["inline"] == CODE  # the essence is a copy, not the body edited


def test_extra_fields_are_taken_from_the_whole_body() -> None:
    essence: Any = storage().build(body=body(), extra_fields=["status.observedGeneration"])
    assert essence["status"] == {"observedGeneration": 1}
