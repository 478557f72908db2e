"""bench/operator_scale.py's count of API writes: every write between two scrapes of apiserver_request_total,
by verb, resource, subresource and code (4xx included), attributed to the operator or left out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "operator_scale.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("operator_scale", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["operator_scale"] = module
    spec.loader.exec_module(module)
    return module


def sample(verb: str, resource: str, sub: str, code: str, value: float, group: str = "") -> str:
    return (
        f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
        f'resource="{resource}",scope="resource",subresource="{sub}",verb="{verb}",version="v1"}} {value:g}'
    )


BEFORE = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        "# TYPE apiserver_request_total counter",
        sample("PATCH", "functions", "status", "200", 10, group="kubelambda.io"),
        sample("APPLY", "deployments", "", "200", 5, group="apps"),
        sample("GET", "functions", "", "200", 900),
        sample("POST", "functions", "", "201", 3),
    ]
)
AFTER = "\n".join(
    [
        sample("PATCH", "functions", "status", "200", 1010, group="kubelambda.io"),
        sample("APPLY", "functions", "status", "200", 700, group="kubelambda.io"),
        sample("APPLY", "functions", "status", "409", 42, group="kubelambda.io"),
        sample("APPLY", "deployments", "", "200", 1005, group="apps"),
        # the same key under another group/version: summed with the first
        sample("APPLY", "deployments", "", "200", 1, group="extensions"),
        sample("PUT", "deployments", "status", "200", 2000, group="apps"),
        sample("PUT", "replicasets", "status", "200", 2000, group="apps"),
        sample("POST", "replicasets", "", "201", 1000, group="apps"),
        sample("POST", "events", "", "201", 300),
        sample("GET", "functions", "", "200", 5000),
        sample("POST", "functions", "", "201", 1003),
        sample("POST", "functions", "", "409", 2),
        'apiserver_request_total{code="200",resource="configmaps",subresource="",verb="APPLY",note="a \\"q\\", b"} 7',
    ]
)


def test_parse_sums_over_unlisted_labels_and_keeps_only_writes(bench: ModuleType) -> None:
    after = bench.parse_write_totals(AFTER)
    assert after[("APPLY", "deployments", "", "200")] == 1006
    assert after[("APPLY", "configmaps", "", "200")] == 7  # quoted comma and quote in another label value
    assert not any(verb == "GET" for verb, *_ in after)


def test_every_write_is_counted_by_verb_subresource_and_code(bench: ModuleType) -> None:
    deltas = bench.write_deltas(bench.parse_write_totals(BEFORE), bench.parse_write_totals(AFTER))
    writes = bench.attributed_writes(deltas)
    assert writes == {
        # PATCH and APPLY of functions/status are two counts, added, not one overwriting the other
        ("PATCH", "functions", "status", "200"): 1000,
        ("APPLY", "functions", "status", "200"): 700,
        # a write answered 409 still counts
        ("APPLY", "functions", "status", "409"): 42,
        ("APPLY", "deployments", "", "200"): 1001,
        ("APPLY", "configmaps", "", "200"): 7,
        ("POST", "events", "", "201"): 300,
        # the benchmark's own Function creates (any code), the controllers' status writes and ReplicaSets
        # are not the operator's
    }
    assert sum(v for k, v in writes.items() if k[1] == "functions") == 1742


def test_the_floor_counts_function_creates_when_asked(bench: ModuleType) -> None:
    deltas = bench.write_deltas(bench.parse_write_totals(BEFORE), bench.parse_write_totals(AFTER))
    writes = bench.attributed_writes(deltas, own_creates=False)
    assert writes[("POST", "functions", "", "201")] == 1000
    assert writes[("POST", "functions", "", "409")] == 2


def test_a_counter_that_did_not_move_is_left_out(bench: ModuleType) -> None:
    totals = bench.parse_write_totals(BEFORE)
    assert bench.write_deltas(totals, totals) == {}


def test_label_names_the_subresource_and_code(bench: ModuleType) -> None:
    assert bench.label(("APPLY", "functions", "status", "409")) == "APPLY functions/status 409"
    assert bench.label(("POST", "events", "", "201")) == "POST events 201"
