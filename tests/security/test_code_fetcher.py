"""Issue 17, item 9: a chain of symbolic links in a Function's zip (``a -> x/..``, ``x -> .``) escapes the task
folder although each link passes alone. The attack runs ``kubelambda fetch-code`` exactly as the operator's init
container does (its arguments from the Deployment builder, ``$KUBELAMBDA_ROOTFS`` laid out as the local node lays
it out), against a real HTTP server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kltest.files import FileServer, serve_files, zip_bytes
from kltest.platform import LOOPBACK_ALLOWED
from kubelambda.api.v1alpha1.function import FunctionSpec
from kubelambda.resources.deployment import make_deployment
from kubelambda.resources.names import FunctionObject
from kubelambda.settings import OperatorSettings

pytestmark = pytest.mark.integration

LINK = 0o120777
HANDLER = b"def handler(event, context):\n    return 'ok'\n"
CHAIN = zip_bytes(
    {
        "app.py": (HANDLER, 0o100644),
        "a": (b"x/..", LINK),  # alone: x is missing, so a is the folder itself
        "x": (b".", LINK),  # alone: the folder itself; with it, a is the folder's parent
    }
)
DEEPER = zip_bytes(
    {
        "app.py": (HANDLER, 0o100644),
        "d/e": (
            b"../..",
            LINK,
        ),  # alone: d/e -> the folder's parent ... but d is a real folder: refused at once
    }
)
SAFE = zip_bytes(
    {
        "app.py": (HANDLER, 0o100644),
        "lib/real.py": (b"x = 1\n", 0o100644),
        "here": (b"lib/..", LINK),  # a chain that stays inside
        "alias": (b"here/lib/real.py", LINK),
    }
)


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    with serve_files({"/chain.zip": CHAIN, "/deeper.zip": DEEPER, "/safe.zip": SAFE}) as running:
        yield running


def fetch(
    server: FileServer, path: str, data: bytes, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    spec = {
        "runtime": "python3.11",
        "handler": "app.handler",
        "code": {"archive": {"url": f"{server.url}{path}", "sha256": hashlib.sha256(data).hexdigest()}},
    }
    fn = FunctionObject(
        name="zipped", namespace="ns", uid="u", generation=1, spec=FunctionSpec.model_validate(spec)
    )
    settings = OperatorSettings(
        kubeconfig=None, url_allow_cidrs=LOOPBACK_ALLOWED
    )  # the server is on loopback
    (init,) = make_deployment(fn, image="runtime", settings=settings)["spec"]["template"]["spec"][
        "initContainers"
    ]
    volume = tmp_path / "volumes" / "code"
    volume.mkdir(parents=True)
    root = tmp_path / "rootfs"
    (root / "var").mkdir(parents=True)
    (root / "var" / "task").symlink_to(volume)
    done = subprocess.run(
        [sys.executable, "-m", "kubelambda", *init["args"]],
        env={**os.environ, "KUBELAMBDA_ROOTFS": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, volume


def escaping(volume: Path) -> list[str]:
    """Links in ``volume`` whose target is outside it."""
    root = volume.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(volume):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                resolved = Path(os.path.realpath(path))
                if resolved != root and root not in resolved.parents:
                    out.append(str(path.relative_to(volume)))
    return out


def test_a_symlink_chain_out_of_the_task_folder_is_refused(server: FileServer, tmp_path: Path) -> None:
    done, volume = fetch(server, "/chain.zip", CHAIN, tmp_path / "chain")
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert "refusing zip symlink 'a' -> 'x/..': it leaves the target folder" in done.stderr
    assert escaping(volume) == []
    assert not (volume / "a").is_symlink()
    assert not (volume / "x").is_symlink()

    done, volume = fetch(server, "/deeper.zip", DEEPER, tmp_path / "deeper")
    assert done.returncode == 1
    assert "refusing zip symlink 'd/e' -> '../..': it leaves the target folder" in done.stderr
    assert escaping(volume) == []


def test_links_that_stay_inside_still_unpack(server: FileServer, tmp_path: Path) -> None:
    done, volume = fetch(server, "/safe.zip", SAFE, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (volume / "alias").read_text() == "x = 1\n"
    assert os.path.realpath(volume / "here") == str(volume.resolve())
    assert escaping(volume) == []
