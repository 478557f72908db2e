"""Every documented shell step runs as written: the ``sh``/``bash`` blocks of README.md, docs/quickstart.md,
docs/invoking.md, docs/async.md and each example's README, in order, in a new user's clean shell, from a folder
that looks like a fresh clone (links to the checkout's entries: kltest.docs) whose ``.venv`` is the wheel built
from this checkout, installed in a fresh venv (kltest.wheel; with the ``test`` extra, which the examples' snippets
and the AWS CLI come from), against one local platform of this module's own (``$XDG_STATE_HOME`` in the test's
folder).

A block that cannot run here is marked in its page (``<!-- docs-test: skip: why -->``, and the page says why);
this module checks that every such mark gives a reason and that each page keeps the steps it is about. A page
that does not start the platform itself finds it running (``kubelambda dev up`` before it, a no-op when it
runs); pages that stop it (``dev down``) leave the next page to start it again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kltest.docs import checkout_copy, clean_env, run_page, shell_blocks
from kltest.wheel import wheel_venv

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Page:
    path: str
    expect: tuple[str, ...]  # in the steps' output, in this order
    runs: int = 1  # the quickstart twice: it is idempotent
    starts_platform: bool = False  # the page's own steps run `kubelambda dev up`
    timeout: float = 900.0


PAGES = (
    Page(
        "docs/quickstart.md",
        (
            "The local cluster is running",
            '"message": "Hello, here!"',  # local invoke
            "Function demo/hello is Ready",
            '"message": "Hello, you!"',
            '"StatusCode": 200',  # the AWS CLI
            "Hello, aws!",
            "Hello, curl!",
            "Deleted Function demo/hello-python311",
            "The local cluster is stopped.",
        ),
        runs=2,
        starts_platform=True,
    ),
    Page(
        "docs/invoking.md",
        (
            '"StatusCode": 200',
            "START RequestId:",  # the AWS CLI's log tail, base64-decoded
            '"StatusCode": 202',
            '"StatusCode": 204',
            "Hello, curl!",
            "HTTP/1.1 202 Accepted",
            "X-Amz-Log-Result:",  # a Kubernetes token, with a log tail
        ),
    ),
    Page(
        "docs/async.md",
        ('"StatusCode": 202', '"condition": "RetriesExhausted"', "Re-drove "),
    ),
    Page(
        "examples/queue-worker/README.md",
        ("Redis on 127.0.0.1:6390", "{'job': 1}", "asked to fail", "SourceUnreachable"),
    ),
    Page(
        "examples/s3-thumbnails/README.md",
        ("make_bucket: photos", "upload: ", "resized-Happy Face.jpg", "Wrote s3://photos-resized/"),
        starts_platform=True,
    ),
    Page(
        "examples/stream-processor/README.md",
        ("customer", "discarded 1 record(s) of shardId-", "eventsDelivered"),
        starts_platform=True,
    ),
    Page(
        "examples/orders-table/README.md",
        ("CREATE TABLE", "INSERT", "MODIFY", "mail to ann about order 1"),
    ),
    Page(
        "README.md",
        (
            "Hello, demo!",  # make demo
            "Hello from version 1!",  # make demo: aws lambda create-function --zip-file (the code store)
            '"message": "Hello, you!"',
            "The local cluster is stopped.",
            "kubelambda-local",  # kubectl get nodes
            '"message": "Hello, me!"',  # local invoke
            "Function default/hello is Ready",
            "Deleted Function default/hello",
            "The local cluster is stopped.",
        ),
        starts_platform=True,
    ),
)


@dataclass
class Walk:
    work: Path
    env: dict[str, str]
    logs: Path

    def kubelambda(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.work / ".venv" / "bin" / "kubelambda"), *args],
            env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    root = tmp_path_factory.mktemp("docs")
    logs = root / "logs"
    logs.mkdir()
    # $KLTEST_DOCS_VENV: a venv made so before (to run one page again without building the wheel again).
    given = os.environ.get("KLTEST_DOCS_VENV")
    venv = Path(given) if given else wheel_venv(root / "wheel", extras="servers,test")
    walk = Walk(checkout_copy(root / "kubelambda", venv), clean_env(root / "state"), logs)
    try:
        yield walk
    finally:
        walk.kubelambda("dev", "down", timeout=180)


def test_every_skipped_block_says_why() -> None:
    for page in PAGES:
        blocks = shell_blocks(page.path)
        assert any(b.skipped is None for b in blocks), f"{page.path}: no step runs"
        for block in blocks:
            assert block.skipped is None or len(block.skipped) > 20, block


@pytest.mark.timeout(3000)  # the first page waits for the wheel's venv too
@pytest.mark.parametrize("page", PAGES, ids=[p.path for p in PAGES])
def test_the_page_runs_as_written(page: Page, walk: Walk) -> None:
    for run in range(1, page.runs + 1):
        if not page.starts_platform:
            up = walk.kubelambda("dev", "up")
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        log = walk.logs / f"{page.path.replace('/', '_')}.{run}.log"
        said = run_page(page.path, work=walk.work, env=walk.env, log=log, timeout=page.timeout)
        at = 0
        for expected in page.expect:
            found = said.find(expected, at)
            assert found >= 0, f"{page.path} (run {run}): {expected!r} not in the output after {at} ({log})"
            at = found + len(expected)
