"""The runtime table is the one list of runtimes: what derives from it agrees, and generated files do not drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubelambda.api.v1alpha1 import RUNTIMES as API_RUNTIMES
from kubelambda.api.v1alpha1.function import HANDLER_PATTERNS
from kubelambda.cli.project import TEMPLATE_OF
from kubelambda.devcluster._images import IMAGES
from kubelambda.runtimes import RUNTIMES as COMMANDS
from kubelambda.runtimes import runtime_for_image
from kubelambda.runtimes.generate import IMAGES_MK, VALUES_SCHEMA, render_images_mk, render_values_schema
from kubelambda.runtimes.table import FAMILIES, RUNTIMES, image
from kubelambda.settings import default_runtime_images

ROOT = Path(__file__).resolve().parents[3]


def test_every_list_of_runtimes_is_the_table() -> None:
    assert tuple(RUNTIMES) == API_RUNTIMES == tuple(COMMANDS) == tuple(TEMPLATE_OF)
    assert set(default_runtime_images("r")) == set(RUNTIMES)
    assert set(HANDLER_PATTERNS) == {f.name for f in FAMILIES.values() if f.handler}
    assert {f"ghcr.io/kubelambda/{f.image}" for f in FAMILIES.values()} <= set(IMAGES)


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_each_runtime_has_its_scaffold_client_and_image(name: str) -> None:
    rt = RUNTIMES[name]
    assert (ROOT / "operator" / "kubelambda" / "scaffold" / rt.scaffold).is_dir()
    assert (ROOT / "runtime-images" / rt.family / "Dockerfile").is_file()
    # The local node finds the runtime back from its default image (registry and tag included).
    found = runtime_for_image(image(name, "ghcr.io/kubelambda"))
    assert found is not None
    assert found.name == name


def test_unknown_runtime_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown runtime 'python2\.7'; known: python3\.11, "):
        image("python2.7", "r")


@pytest.mark.parametrize(
    ("path", "render"),
    [
        (VALUES_SCHEMA, lambda: render_values_schema((ROOT / VALUES_SCHEMA).read_text())),
        (IMAGES_MK, render_images_mk),
    ],
)
def test_generated_files_match_the_table(path: Path, render: object) -> None:
    assert callable(render)
    assert (ROOT / path).read_text() == render(), (
        f"{path} drifted from the runtime table: make runtimes-generate"
    )


def test_values_schema_takes_every_runtime_and_refuses_others() -> None:
    schema = json.loads((ROOT / VALUES_SCHEMA).read_text())
    images = schema["properties"]["runtime"]["properties"]["images"]
    assert list(images["properties"]) == list(RUNTIMES)
    assert images["additionalProperties"] is False


def test_every_runtime_image_has_a_build_line_in_images_sh() -> None:
    # hack/images.sh builds the images (its table adds what only it knows: the Debian release and packages).
    lines = (ROOT / "hack" / "images.sh").read_text().splitlines()
    built = {tuple(line.split("|")[:2]) for line in lines if line.startswith("runtime-")}
    missing = [name for name, rt in RUNTIMES.items() if (rt.spec.image, rt.tag) not in built]
    assert missing == [], f"runtimes without a build line in hack/images.sh: {missing}"
