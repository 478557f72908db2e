"""kubelambda fetch-code as the init container runs it, against a real HTTP server and a real S3 store.

Each test runs ``python -m kubelambda fetch-code ...`` with the operator's own arguments (from the Deployment
builder) and a ``$KUBELAMBDA_ROOTFS`` laid out as the local node lays it out (``var/task`` a symlink to the
volume), then reads the unpacked files. The last test deploys a Function with ``code.archive`` through the
operator and invokes its pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.files import serve_files, zip_bytes
from kltest.platform import LOOPBACK_ALLOWED, start_operator
from kubelambda.api.v1alpha1.function import FunctionSpec
from kubelambda.devcluster.servers import S3Server
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.deployment import make_deployment
from kubelambda.resources.names import FunctionObject
from kubelambda.settings import OperatorSettings

pytestmark = pytest.mark.integration

HANDLER = b'def handler(event, context):\n    return {"message": f"Hello from a zip, {event[\'name\']}!"}\n'
BOOTSTRAP = b"#!/bin/sh\necho bootstrap\n"


def code_zip() -> bytes:
    return zip_bytes(
        {
            "app.py": (HANDLER, 0o100644),
            "bootstrap": (BOOTSTRAP, 0o100755),
            "pkg/__init__.py": (b"", 0o100644),
        }
    )


ZIP = code_zip()
ZIP_SHA = hashlib.sha256(ZIP).hexdigest()


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serve_files({"/code.zip": ZIP, "/not-a-zip": b"<html>hello</html>"}) as server:
        yield server.url


@pytest.fixture(scope="module")
async def s3(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    async with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def function(code: dict[str, Any]) -> FunctionObject:
    spec = {"runtime": "python3.11", "handler": "app.handler", "code": code}
    return FunctionObject(
        name="zipped", namespace="ns", uid="u-1", generation=1, spec=FunctionSpec.model_validate(spec)
    )


def init_container_args(code: dict[str, Any]) -> list[str]:
    """The fetch-code container's args exactly as the operator's Deployment builder writes them."""
    settings = OperatorSettings(kubeconfig=None, url_allow_cidrs=LOOPBACK_ALLOWED)  # the servers here
    deployment = make_deployment(function(code), image="runtime", settings=settings)
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"].startswith("ghcr.io/kubelambda/kubelambda:")
    return list(init["args"])


def rootfs(tmp_path: Path) -> tuple[Path, Path]:
    """A container root as the local node makes it: ``var/task`` a symlink to the (empty) code volume."""
    volume = tmp_path / "volumes" / "code"
    volume.mkdir(parents=True)
    root = tmp_path / "rootfs" / "fetch-code"
    (root / "var").mkdir(parents=True)
    (root / "var" / "task").symlink_to(volume)
    return root, volume


def run_fetch(args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "kubelambda", *args],
        env={**clean, "KUBELAMBDA_ROOTFS": str(root), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_unpacked(volume: Path) -> None:
    assert sorted(str(p.relative_to(volume)) for p in volume.rglob("*")) == [
        "app.py",
        "bootstrap",
        "pkg",
        "pkg/__init__.py",
    ]
    assert (volume / "app.py").read_bytes() == HANDLER
    assert stat.S_IMODE((volume / "bootstrap").stat().st_mode) == 0o755
    assert subprocess.run([volume / "bootstrap"], capture_output=True, check=True).stdout == b"bootstrap\n"


def test_archive_over_http(http_url: str, tmp_path: Path) -> None:
    root, volume = rootfs(tmp_path)
    (volume / "stale.py").write_text("from an earlier run of the init container")
    args = init_container_args({"archive": {"url": f"{http_url}/code.zip", "sha256": ZIP_SHA}})
    assert args[-2:] == ["--dest", "/var/task"]
    done = run_fetch(args, root)
    assert done.returncode == 0, done.stderr
    assert f"sha256 {ZIP_SHA}" in done.stdout
    assert_unpacked(volume)


@pytest.mark.parametrize(
    ("path", "sha", "message"),
    [
        ("/code.zip", "0" * 64, f"SHA-256 mismatch for {{url}}/code.zip: expected {'0' * 64}, got {ZIP_SHA}"),
        ("/missing.zip", ZIP_SHA, "GET {url}/missing.zip: HTTP 404 Not Found"),
        ("/not-a-zip", hashlib.sha256(b"<html>hello</html>").hexdigest(), "not a zip archive"),
    ],
)
def test_archive_failures_are_one_line_and_write_nothing(
    http_url: str, tmp_path: Path, path: str, sha: str, message: str
) -> None:
    root, volume = rootfs(tmp_path)
    done = run_fetch(init_container_args({"archive": {"url": f"{http_url}{path}", "sha256": sha}}), root)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("kubelambda fetch-code: ")
    assert message.format(url=http_url) in done.stderr
    assert list(volume.iterdir()) == []


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    root, _ = rootfs(tmp_path)
    done = run_fetch(
        [
            "fetch-code",
            "--url",
            "http://127.0.0.1:9/x.zip",
            "--sha256",
            ZIP_SHA,
            "--allow-cidr=127.0.0.0/8",
            "--dest",
            "/var/task",
        ],
        root,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "GET http://127.0.0.1:9/x.zip: " in done.stderr


async def test_s3_signed_and_anonymous(s3: S3Server, tmp_path: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )
    await asyncio.to_thread(client.create_bucket, Bucket="code")
    await asyncio.to_thread(client.put_object, Bucket="code", Key="fns/hello world.zip", Body=ZIP)

    for i, (code, env) in enumerate(
        [
            # Signed with the Secret's keys, checksum given.
            (
                {"endpoint": s3.endpoint, "bucket": "code", "key": "fns/hello world.zip", "sha256": ZIP_SHA,
                 "credentialsSecret": "s3-creds"},
                {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"},
            ),
            # Anonymous, no checksum: the digest is printed.
            ({"endpoint": s3.endpoint, "bucket": "code", "key": "fns/hello world.zip"}, {}),
        ]
    ):  # fmt: skip
        root, volume = rootfs(tmp_path / str(i))
        args = init_container_args({"s3": code})
        done = await asyncio.to_thread(run_fetch, args, root, **env)
        assert done.returncode == 0, done.stderr
        assert f"fetched s3://code/fns/hello world.zip ({len(ZIP)} bytes, sha256 {ZIP_SHA})" in done.stdout
        assert_unpacked(volume)

    root, volume = rootfs(tmp_path / "missing")
    args = init_container_args({"s3": {"endpoint": s3.endpoint, "bucket": "code", "key": "nope.zip"}})
    done = await asyncio.to_thread(run_fetch, args, root, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"S3 GetObject s3://code/nope.zip at {s3.endpoint}: HTTP 404" in done.stderr
    assert "NoSuchKey" in done.stderr


async def test_operator_runs_a_function_from_an_archive(
    cluster: Cluster, kube: KubeClient, namespace: str, http_url: str
) -> None:
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0)
    try:
        doc = {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "zipped"},
            "spec": {
                "runtime": "python3.11",
                "handler": "app.handler",
                "code": {"archive": {"url": f"{http_url}/code.zip", "sha256": ZIP_SHA}},
                "scaling": {"minInstances": 1},
            },
        }
        cluster.apply(doc, namespace)
        path = resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="zipped")
        await wait_for(
            lambda: kube.get(path),
            lambda fn: any(
                c["type"] == "Ready" and c.get("reason") == "InstancesReady"
                for c in (fn.get("status") or {}).get("conditions", [])
            ),
            what="the zipped function's first instance ready",
            timeout=120,
        )
        pods = await kube.list(
            resource_path("v1", "pods", namespace=namespace),
            params={"labelSelector": "kubelambda.io/function=zipped"},
        )
        (pod,) = pods["items"]
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0
        ip = pod["status"]["podIP"]
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://{ip}:8080/invoke", json={"name": "kubelambda"}) as resp,
        ):
            assert resp.status == 200
            body = await resp.json()
        assert body["message"] == "Hello from a zip, kubelambda!"
    finally:
        await operator.stop()
