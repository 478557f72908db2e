"""The files beside the Python code that the local platform needs: ``hack/`` (build recipes, RBAC),
``crds/``, ``helm/`` and ``runtime-images/`` (the agent's and the runtimes' sources).

In a source checkout (an editable install) they are the checkout's; a wheel carries a copy of them as package
data in ``kubelambda/_bundle/`` (``setup.py`` copies them there when it builds), with the same layout.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = ("crds", "hack", "helm", "runtime-images")
_HERE = Path(__file__).resolve().parent
MARKER = Path("hack") / "kube-binaries.sh"


def root() -> Path:
    """The folder holding ``hack/``, ``crds/``, ``helm/`` and ``runtime-images/``: the source checkout this
    package was installed from, else the copy the wheel carries."""
    checkout = _HERE.parents[1]
    if (checkout / MARKER).is_file():
        return checkout
    packaged = _HERE / "_bundle"
    if (packaged / MARKER).is_file():
        return packaged
    raise FileNotFoundError(
        f"kubelambda's platform files are missing: no {MARKER} in a source checkout ({checkout}) nor in the "
        f"installed package ({packaged}); reinstall kubelambda from a wheel built by `pip wheel .`"
    )
