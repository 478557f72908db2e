"""``python -m kubelambda.api [crds [DIR] | docs [DIR]]``: write what the models generate.

``crds`` (the default) writes the CRDs (default: crds/); ``docs`` writes the Function and Trigger reference
``DIR/reference.md`` and refreshes the metrics table in ``DIR/metrics.md`` (default DIR: docs/). A bare ``DIR``
is ``crds DIR``, as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kubelambda.api._crd import write_crds
from kubelambda.api._docs import write_docs

_USAGE = "usage: python -m kubelambda.api [crds [DIR] | docs [DIR]]"


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in ("crds", "docs") else ("crds", argv)
    if len(rest) > 1 or (rest and rest[0].startswith("-")):
        print(_USAGE, file=sys.stderr)
        return 2
    if command == "docs":
        for path in write_docs(Path(rest[0]) if rest else Path("docs")):
            print(f"Wrote {path}")
        return 0
    for path in write_crds(Path(rest[0]) if rest else Path("crds")):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
