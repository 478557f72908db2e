"""The Python runtime client (runtime-images/python/bootstrap.py) as a module, for its unit tests."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from kubelambda.runtimes import runtime_images_dir


@pytest.fixture(scope="module")
def bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bootstrap", runtime_images_dir() / "python" / "bootstrap.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
