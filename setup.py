"""The wheel carries the platform files the local cluster needs (kubelambda/bundle.py): copied into
``kubelambda/_bundle/`` when the package is built. An editable install uses the checkout's own.

It also carries ``kubelambda._native`` (native/, Rust with PyO3, built by setuptools-rust): the PostgreSQL change
stream's pgoutput decoding and record writing. An editable install builds it in place (operator/kubelambda/);
``CARGO_TARGET_DIR`` (the Makefile sets ~/.cache/kubelambda/cargo) keeps cargo's incremental build between venvs."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools_rust import Binding, RustExtension

HERE = Path(__file__).resolve().parent
BUNDLED = ("crds", "hack", "helm", "runtime-images")  # as kubelambda.bundle.BUNDLED
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "target", ".*")


class BuildWithBundle(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "kubelambda" / "_bundle"
        shutil.rmtree(target, ignore_errors=True)
        for name in BUNDLED:
            if (HERE / name).is_dir():  # the Dockerfile builds from operator/ alone: nothing to bundle
                shutil.copytree(HERE / name, target / name, ignore=SKIP, symlinks=False)


setup(
    cmdclass={"build_py": BuildWithBundle},
    # abi3 (Cargo.toml's pyo3 feature abi3-py311): one build serves every Python from 3.11 on.
    rust_extensions=[
        RustExtension(
            "kubelambda._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            py_limited_api="auto",
            debug=False,  # an editable install too: the bridge's hot path
        )
    ],
)
