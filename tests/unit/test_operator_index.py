"""What the operator's Function index keeps of each Function (``_kopf._indexed_status``): only the status its
refreshes read, and a refresh from it writes the same changes as one from the whole status."""

from __future__ import annotations

from typing import Any

from kubelambda.operator._kopf import _function_pod_problem, _function_refresh, _indexed_status
from kubelambda.resources import status as st

STATUS: dict[str, Any] = {
    "observedGeneration": 3,
    "codeSha256": "ab" * 32,
    "invokeUrl": "http://gw/2015-03-31/functions/demo/hello/invocations",
    "instances": {"desired": 0, "ready": 0},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "ScaledToZero",
            "message": "no instance is running",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-12-06T06:00:00Z",
        }
    ],
    "kopf": {
        "lastHandledSpec": '{"spec": {"runtime": "python3.12", "environment": {"A": "' + "x" * 500 + '"}}}'
    },
}
DEPLOYMENT: dict[str, Any] = {
    "metadata": {"generation": 2},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
}
STUCK_POD: dict[str, Any] = {
    "status": {
        "containerStatuses": [
            {"name": "function", "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}}
        ]
    }
}


def test_the_index_keeps_only_what_the_refreshes_use() -> None:
    kept = _indexed_status({"spec": {"code": {"inline": {"app.py": "x" * 1000}}}, "status": STATUS})
    assert set(kept) == {"observedGeneration", "conditions", "instances"}
    assert _indexed_status({"metadata": {}}) == {}  # not reconciled yet


def test_a_refresh_from_the_index_writes_what_one_from_the_whole_status_writes() -> None:
    kept = _indexed_status({"status": STATUS})
    whole, slim = _function_refresh(STATUS, DEPLOYMENT), _function_refresh(kept, DEPLOYMENT)
    assert whole is not None
    assert slim is not None
    changes = st.status_changes(kept, slim)
    assert changes == st.status_changes(STATUS, whole)
    assert changes["instances"] == {"desired": 1, "ready": 1}
    assert st.find_condition(changes, st.READY)["reason"] == "InstancesReady"  # type: ignore[index]


def test_a_stuck_pod_from_the_index_writes_what_one_from_the_whole_status_writes() -> None:
    starting = {
        **STATUS,
        "conditions": [{**STATUS["conditions"][0], "status": "False", "reason": "InstancesStarting"}],
    }
    kept = _indexed_status({"status": starting})
    whole, slim = _function_pod_problem(starting, STUCK_POD), _function_pod_problem(kept, STUCK_POD)
    assert whole is not None
    assert slim is not None
    assert st.status_changes(kept, slim) == st.status_changes(starting, whole) != {}
