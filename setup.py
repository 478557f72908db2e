"""The wheel carries the platform files the local cluster needs (kubelambda/bundle.py): copied into
``kubelambda/_bundle/`` when the package is built. An editable install uses the checkout's own."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

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


setup(cmdclass={"build_py": BuildWithBundle})
