"""The seed's S3 lab on real containers: examples/s3-thumbnails (Lambda's S3 tutorial) end to end on the container
node. An image put into bucket ``photos`` of a real S3-compatible store (SeaweedFS, as the example's README and
tests/integration/test_bucket_bridge.py run it) → the bucket Trigger's bridge, a pod the operator runs → an Event
invocation through the chart's gateway → the function, a container, reads the object and writes its thumbnail to
``photos-resized``, which the test reads back.

SeaweedFS runs on the host, listening on the node address (pods reach the host there; loopback is another network
namespace's). The function is the example's code in a code image ``FROM ghcr.io/kubelambda/runtime-python:3.11``
with boto3 and Pillow bundled, as the tutorial packages Pillow with the function (the Debian-based runtime image
ships no boto3)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config
from PIL import Image

from kltest import Cluster, wait_for
from kltest.bridge import checkpoint_written
from kltest.e2e import REPO, code_image, copy_distributions, function_pods, ready
from kubelambda.devcluster._containernode import node_address
from kubelambda.devcluster.servers import S3Server
from kubelambda.kube import KubeClient, resource_path

EXAMPLE = REPO / "examples" / "s3-thumbnails"
# boto3 and its dependencies, and Pillow: the tutorial's deployment package.
PACKAGE = ["boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3", "pillow"]


@pytest.fixture(scope="module")
async def s3_store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    async with S3Server(tmp_path_factory.mktemp("seaweedfs"), host=node_address()) as server:
        yield server


@pytest.fixture(scope="module")
def thumbnailer_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("thumbnailer")
    function = yaml.safe_load((EXAMPLE / "function.yaml").read_text())
    task = work / "task"
    task.mkdir()
    (task / "app.py").write_text(function["spec"]["code"]["inline"]["app.py"])
    copy_distributions(PACKAGE, task)
    return code_image(
        "s3-thumbnailer", work, "FROM ghcr.io/kubelambda/runtime-python:3.11\nCOPY task/ /var/task/\n"
    )


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="demo-access-key",
        aws_secret_access_key="demo-secret-key",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


@pytest.mark.timeout(600)
async def test_an_upload_gets_its_thumbnail_through_the_bucket_trigger(
    cluster: Cluster, kube: KubeClient, namespace: str, s3_store: S3Server, thumbnailer_image: str
) -> None:
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in EXAMPLE.glob("*.yaml")}
    # The example's files as they are, but the store's address and the code, now the image built above.
    function = docs["function"]
    function["spec"]["code"] = {"image": thumbnailer_image}
    function["spec"]["environment"]["AWS_ENDPOINT_URL_S3"] = s3_store.endpoint
    trigger = docs["trigger"]
    trigger["spec"]["bucket"]["endpoint"] = s3_store.endpoint
    trigger["spec"]["bucket"]["pollIntervalSeconds"] = 1
    s3 = s3_client(s3_store.endpoint)
    for bucket in ("photos", "photos-resized"):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    cluster.apply([docs["secret"], function, trigger], namespace)
    await ready(cluster, namespace, "thumbnailer")
    # The bridge pod has listed the bucket once (objects there before are not events): upload after that.
    await wait_for(
        lambda: checkpoint_written(kube, namespace, "thumbnails"),
        bool,
        what="the bridge pod's first listing of bucket photos",
        timeout=300,
    )
    picture = io.BytesIO()
    Image.new("RGB", (640, 480), "teal").save(picture, format="JPEG")
    key = f"{namespace}/Happy Face.jpg"
    await asyncio.to_thread(s3.put_object, Bucket="photos", Key=key, Body=picture.getvalue())

    async def thumbnail() -> bytes | None:
        try:
            got = await asyncio.to_thread(s3.get_object, Bucket="photos-resized", Key=f"resized-{key}")
        except s3.exceptions.NoSuchKey:
            return None
        return await asyncio.to_thread(got["Body"].read)

    data = await wait_for(thumbnail, bool, what="the thumbnail in photos-resized", timeout=300, interval=1)
    assert data is not None
    with Image.open(io.BytesIO(data)) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (128, 96))
    await wait_for(
        lambda: kube.get(
            resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name="thumbnails")
        ),
        lambda trig: (trig.get("status") or {}).get("eventsDelivered", 0) >= 1,
        what="eventsDelivered written by the bridge pod",
        timeout=120,
    )
    # The function and the bridge ran as containers of the kubelet.
    pods = await function_pods(kube, namespace)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert thumbnailer_image in images, images
    for pod in pods:
        for status in pod["status"].get("containerStatuses") or []:
            assert status["containerID"].startswith("containerd://"), status
