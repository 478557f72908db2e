"""``python -m kubelambda.api [crds [DIR] | docs [FILE]]``: write what the models generate.

``crds`` (the default) writes the CRDs (default: crds/); ``docs`` writes the Function and Trigger reference
(default: docs/reference.md). A bare ``DIR`` is ``crds DIR``, as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kubelambda.api._crd import write_crds
from kubelambda.api._docs import write_reference

_USAGE = "usage: python -m kubelambda.api [crds [DIR] | docs [FILE]]"


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in ("crds", "docs") else ("crds", argv)
    if len(rest) > 1 or (rest and rest[0].startswith("-")):
        print(_USAGE, file=sys.stderr)
        return 2
    if command == "docs":
        print(f"Wrote {write_reference(Path(rest[0]) if rest else Path('docs/reference.md'))}")
        return 0
    for path in write_crds(Path(rest[0]) if rest else Path("crds")):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
