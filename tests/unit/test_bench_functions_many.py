"""bench/functions_many.py's ``--functions``: the counts to measure at, rising, each above the first row's 10."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # it imports its neighbours (_common, gateway_cpu)
    try:
        spec = importlib.util.spec_from_file_location("functions_many", BENCH / "functions_many.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_counts_are_read_in_order(bench: ModuleType) -> None:
    assert bench.counts("1000,3000,10000") == [1000, 3000, 10_000]
    assert bench.counts("11") == [11]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1000,x", "not comma-separated integers"),
        ("3000,1000", "must rise"),
        ("1000,1000", "must rise"),
        ("10", "each above 10"),
    ],
)
def test_bad_counts_are_refused_naming_them(bench: ModuleType, text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        bench.counts(text)
    assert repr(text) in str(refused.value)
    assert says in str(refused.value)
