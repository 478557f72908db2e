"""``python -m kubelambda.api [DIR]``: write the CRDs generated from the models (default: crds/)."""

from __future__ import annotations

import sys
from pathlib import Path

from kubelambda.api._crd import write_crds


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("crds")
    for path in write_crds(directory):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
