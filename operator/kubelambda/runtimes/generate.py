"""The files generated from the runtime table: ``python -m kubelambda.runtimes.generate [ROOT]`` rewrites them.

- ``helm/kubelambda/values.schema.json``: the runtime keys of ``runtime.images`` and of the gateway's warm pool
  ``sizes``/``maxSizes`` (the rest of the schema is written by hand and kept as it is);
- ``mk/runtime-images.mk``: the list of runtime images ``make kind-up`` loads (hack/images.sh builds them; a
  unit test checks that it has a line for each runtime's image).

tests/unit/runtimes/test_runtimes_table.py fails when a file differs from what this renders. The CRDs and
docs/reference.md take the runtimes from the API models (``make crds docs-reference``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kubelambda.runtimes.table import RUNTIMES

VALUES_SCHEMA = Path("helm/kubelambda/values.schema.json")
IMAGES_MK = Path("mk/runtime-images.mk")


def render_values_schema(current: str) -> str:
    """``current`` (the chart's values schema) with its per-runtime keys taken from the table."""
    schema: dict[str, Any] = json.loads(current)
    props = schema["properties"]
    props["runtime"]["properties"]["images"]["properties"] = {
        name: {"type": "string", "minLength": 1} for name in RUNTIMES
    }
    pools = props["gateway"]["properties"]["warmPools"]["properties"]
    for key in ("sizes", "maxSizes"):
        bounds = {k: v for k, v in next(iter(pools[key]["properties"].values())).items()}
        pools[key]["properties"] = {name: dict(bounds) for name in RUNTIMES}
    return json.dumps(schema, indent=2) + "\n"


def render_images_mk() -> str:
    """mk/runtime-images.mk: the runtime images of the table, which ``make kind-up`` loads (hack/images.sh builds them)."""
    images = " ".join(dict.fromkeys(f"{rt.spec.image}:{rt.tag}" for rt in RUNTIMES.values()))
    return "\n".join(
        [
            "# Generated from operator/kubelambda/runtimes/table.py by `make runtimes-generate`; do not edit.",
            "# The runtime images (repository:tag below IMAGE_REGISTRY) of every runtime, for `kind load` (mk/chart.mk).",
            f"RUNTIME_IMAGES := {images}",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path.cwd()
    schema = root / VALUES_SCHEMA
    schema.write_text(render_values_schema(schema.read_text()))
    (root / IMAGES_MK).write_text(render_images_mk())
    print(f"wrote {schema} and {root / IMAGES_MK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
