"""The bucket bridge against the real local cluster, a real SeaweedFS (S3 API), a real VersityGW (S3 event
notifications) and a real nats-server (Event queue).

The function's success destination is an HTTP endpoint of the test (kltest.records.Records): each invocation
record's ``requestPayload`` is the S3 event the function received. Until the Trigger reconciler runs bridges,
the tests create the Trigger with the admin client and run the bridge themselves (in-process, or as a process
they can SIGKILL).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import io
import urllib.parse
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
import yaml
from botocore.config import Config

from kltest import Cluster, wait_for
from kltest.bridge import BridgeProcess, checkpoint_written
from kltest.drained import async_queue_drained
from kltest.platform import Env, python_function
from kltest.records import Records
from kltest.versitygw import ROOT_PASSWORD as VERSITYGW_PASSWORD
from kltest.versitygw import ROOT_USER as VERSITYGW_USER
from kltest.versitygw import VersityGWServer
from kubelambda.bridge import BridgeSettings, run_bridge
from kubelambda.bridge._s3events import iso_time
from kubelambda.bridge.bucket import CHECKPOINT_EVERY
from kubelambda.devcluster._ports import free_port, retry_taken_ports
from kubelambda.devcluster.servers import S3Server
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bridge-key", "AWS_SECRET_ACCESS_KEY": "bridge-secret"}

HANDLER = """
def handler(event, context):
    return {"records": len(event["Records"])}
"""


@pytest.fixture(scope="module")
async def s3_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    async with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
async def bucket(s3_server: S3Server) -> str:
    """One bucket for the poll tests, each under a prefix of its own: the test SeaweedFS (volume.max=16) has
    room for the data of three buckets only; a fourth bucket's writes fail with InternalError."""
    await asyncio.to_thread(s3_client(s3_server.endpoint).create_bucket, Bucket="events")
    return "events"


@dataclass
class Bk(Env):
    """And the module's S3 server and bucket."""

    s3: S3Server
    bucket: str

    async def deploy_recorder(self) -> str:
        """A Function whose every successful invocation's record (with the event as requestPayload) reaches
        ``records`` under the namespace's key; returns that key."""
        key = f"{self.namespace}-events"
        doc = python_function(
            "recorder",
            HANDLER,
            timeoutSeconds=10,
            scaling={"maxInstances": 4},
            **{"async": {"maxRetries": 0, "onSuccess": {"url": self.records.url(key)}}},
        )
        await self.deploy(doc)
        return key

    def poll(self, name: str, **bucket: Any) -> JSON:
        """A polling Trigger of the recorder on the module's bucket, every second."""
        return trigger(
            name,
            "recorder",
            endpoint=self.s3.endpoint,
            bucket=self.bucket,
            mode="poll",
            pollIntervalSeconds=1,
            **bucket,
        )


@pytest.fixture
def bk(env: Env, s3_server: S3Server, bucket: str) -> Bk:
    return Bk(**vars(env), s3=s3_server, bucket=bucket)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}, max_pool_connections=16),
    )


def secret(name: str, data: dict[str, str]) -> JSON:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def trigger(name: str, function: str, *, enabled: bool = False, **bucket: Any) -> JSON:
    """A bucket Trigger. Disabled by default: the operator then makes its objects but runs no bridge pod, and the
    test runs the bridge itself (in-process, or as a process it can SIGKILL) without a second one competing."""
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"function": function, "enabled": enabled, "bucket": bucket},
    }


def events_of(records: Records, key: str) -> list[JSON]:
    """Every S3 record the function received (one per invocation), in arrival order."""
    out: list[JSON] = []
    for invocation in records.of(key):
        payload = invocation["requestPayload"]
        assert len(payload["Records"]) == 1  # one invocation per record, as S3 invokes Lambda
        out.append(payload["Records"][0])
    return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def object_key(record: JSON) -> str:
    return urllib.parse.unquote_plus(record["s3"]["object"]["key"])


@contextlib.asynccontextmanager
async def webhook_in_process(
    cluster: Cluster, namespace: str, name: str, gateway_url: str
) -> AsyncIterator[str]:
    """A notification-mode bridge in this process on a port outside the ephemeral range (another one if that is
    taken before the bridge binds it); yields its webhook URL once it answers."""

    async def start() -> tuple[contextlib.AbstractAsyncContextManager[asyncio.Task[None]], str]:
        port = free_port()
        running = bridge_in_process(cluster, namespace, name, gateway_url, port=port)
        task = await running.__aenter__()
        url = f"http://127.0.0.1:{port}/events"
        async with aiohttp.ClientSession() as http:
            await wait_for(
                lambda: http_status(http, url), lambda s: s == 200 or task.done(), what="the webhook up"
            )
        if task.done():
            error = task.exception() or AssertionError("the bridge stopped while starting")
            await running.__aexit__(type(error), error, None)
            raise error
        return running, url

    running, url = await retry_taken_ports(start, what="the webhook bridge")
    try:
        yield url
    except BaseException as e:
        if not await running.__aexit__(type(e), e, e.__traceback__):
            raise
    else:
        await running.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def bridge_in_process(
    cluster: Cluster, namespace: str, name: str, gateway_url: str, *, port: int = 0
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    settings = BridgeSettings(
        kubeconfig=str(cluster.kubeconfig),
        gateway_url=gateway_url,
        host="127.0.0.1",
        port=port,
        status_interval_seconds=1,
    )
    task = asyncio.create_task(run_bridge(namespace, name, settings, stop=stop))
    try:
        yield task
        assert not task.done() or task.exception() is None, task.exception()
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # a bridge that could not bind its port has stopped already
            await asyncio.wait_for(task, 30)


async def condition(kube: KubeClient, namespace: str, name: str, kind: str) -> JSON | None:
    body = await kube.get(resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name=name))
    for c in (body.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return None


async def no_more_events(bk: Bk, key: str, count: int) -> None:
    """Exactly ``count`` events reached the recorder, and no more can: every event the gateway accepted for it
    has been handled (its subject in the async stream is empty, see kltest.drained). Call it after a later
    event (a marker) was recorded, so the bridge is past whatever could have produced an extra one."""
    await async_queue_drained(bk.gateway, bk.namespace, "recorder")
    assert len(bk.records.of(key)) == count, [object_key(r) for r in events_of(bk.records, key)]


async def test_poll_mode_delivers_one_event_per_object_with_key_size_and_etag(bk: Bk) -> None:
    s3 = s3_client(bk.s3.endpoint)
    p = f"{bk.namespace}/"
    await asyncio.to_thread(
        s3.put_object, Bucket=bk.bucket, Key=f"{p}existing.txt", Body=b"before the trigger"
    )
    key = await bk.deploy_recorder()
    bk.apply(secret("s3-creds", CREDENTIALS))
    bk.apply(
        bk.poll(
            "uploads",
            credentialsSecret="s3-creds",
            events=["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
            filter={"prefix": p},
        )
    )
    async with bridge_in_process(bk.cluster, bk.namespace, "uploads", bk.url):
        await wait_for(
            lambda: checkpoint_written(bk.kube, bk.namespace, "uploads"), bool, what="the first listing"
        )
        bodies = {
            f"{p}plain.txt": b"hello",
            f"{p}with space/red flower.jpg": b"x" * 1000,
            f"{p}ünï cødé/日本語.bin": b"\x00" * 7,
        }
        for k, body in bodies.items():
            await asyncio.to_thread(s3.put_object, Bucket=bk.bucket, Key=k, Body=body)
        got = await bk.records.wait(key, len(bodies), timeout=60)
        events = events_of(bk.records, key)
        assert sorted(object_key(e) for e in events) == sorted(
            bodies
        )  # not existing.txt: it was there before
        for event in events:
            k = object_key(event)
            head = await asyncio.to_thread(s3.head_object, Bucket=bk.bucket, Key=k)
            assert event["eventSource"] == "aws:s3"
            assert event["eventVersion"] == "2.1"
            assert event["eventName"] == "ObjectCreated:Put"
            assert event["s3"]["configurationId"] == "uploads"
            assert event["s3"]["bucket"]["name"] == bk.bucket
            assert event["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{bk.bucket}"
            assert event["s3"]["object"]["size"] == len(bodies[k])
            assert (
                event["s3"]["object"]["eTag"] == head["ETag"].strip('"') == hashlib.md5(bodies[k]).hexdigest()
            )
            assert event["s3"]["object"]["key"] == urllib.parse.quote_plus(k, safe="/")
        assert len(got) == len(bodies)

        await asyncio.to_thread(s3.delete_object, Bucket=bk.bucket, Key=f"{p}plain.txt")
        await bk.records.wait(key, len(bodies) + 1, timeout=60)
        removed = events_of(bk.records, key)[-1]
        assert removed["eventName"] == "ObjectRemoved:Delete"
        assert object_key(removed) == f"{p}plain.txt"
        assert "eTag" not in removed["s3"]["object"]
        # A marker uploaded last: once its event is recorded, a listing after every change above was diffed.
        await asyncio.to_thread(s3.put_object, Bucket=bk.bucket, Key=f"{p}zz-marker.txt", Body=b"m")
        await bk.records.wait(key, len(bodies) + 2, timeout=60)
        assert object_key(events_of(bk.records, key)[-1]) == f"{p}zz-marker.txt"
        await no_more_events(bk, key, len(bodies) + 2)
        assert (await condition(bk.kube, bk.namespace, "uploads", "SourceReachable") or {}).get(
            "status"
        ) == "True"
        # The bridge writes its counters to the status on its own cadence, after the deliveries (seen once: 3 of 4).
        await wait_for(
            lambda: bk.kube.get(
                resource_path("kubelambda.io/v1alpha1", "triggers", namespace=bk.namespace, name="uploads")
            ),
            lambda b: (b.get("status") or {}).get("eventsDelivered", 0) >= len(bodies) + 1,
            what=f"eventsDelivered >= {len(bodies) + 1} in the Trigger's status",
        )


async def test_poll_mode_applies_prefix_suffix_and_event_type_filters(bk: Bk) -> None:
    s3 = s3_client(bk.s3.endpoint)
    p = f"{bk.namespace}/"
    key = await bk.deploy_recorder()
    bk.apply(
        bk.poll(
            "jpegs",
            filter={"prefix": f"{p}in/", "suffix": ".jpg"},
        )
    )  # no credentialsSecret: unsigned requests, which SeaweedFS without IAM accepts
    async with bridge_in_process(bk.cluster, bk.namespace, "jpegs", bk.url):
        await wait_for(
            lambda: checkpoint_written(bk.kube, bk.namespace, "jpegs"), bool, what="the first listing"
        )
        for k in ("in/a.jpg", "in/b.png", "out/c.jpg", "in/d.jpg", "in.jpg"):
            await asyncio.to_thread(s3.put_object, Bucket=bk.bucket, Key=p + k, Body=b"img")
        await bk.records.wait(key, 2, timeout=60)
        await asyncio.to_thread(
            s3.delete_object, Bucket=bk.bucket, Key=f"{p}in/a.jpg"
        )  # not asked: no removal event
        await asyncio.to_thread(s3.put_object, Bucket=bk.bucket, Key=f"{p}in/z.jpg", Body=b"last")
        await bk.records.wait(key, 3, timeout=60)  # z.jpg, uploaded last, is the marker
        await no_more_events(bk, key, 3)
        # Event invocations, run by the async worker concurrently: a and d (one listing) in either order, as S3's
        # notifications to Lambda are; z was uploaded after both had arrived.
        seen = [object_key(e) for e in events_of(bk.records, key)]
        assert sorted(seen[:2]) == [f"{p}in/a.jpg", f"{p}in/d.jpg"], seen
        assert seen[2] == f"{p}in/z.jpg", seen


async def test_a_bridge_killed_during_500_uploads_delivers_every_object_with_bounded_repeats(
    bk: Bk, tmp_path: Path
) -> None:
    s3 = s3_client(bk.s3.endpoint)
    key = await bk.deploy_recorder()
    bk.apply(
        bk.poll(
            "many",
            filter={"prefix": f"{bk.namespace}/"},
        )
    )
    keys = [f"{bk.namespace}/batch/{i:04d} obj.txt" for i in range(500)]
    bridge = BridgeProcess(bk.cluster, bk.namespace, "many", gateway_url=bk.url, log_dir=tmp_path)
    with bridge:
        await wait_for(
            lambda: checkpoint_written(bk.kube, bk.namespace, "many"),
            bool,
            what="the first listing",
            timeout=60,
        )

        def upload_all() -> None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda k: s3.put_object(Bucket=bk.bucket, Key=k, Body=k.encode()), keys))

        uploads = asyncio.create_task(asyncio.to_thread(upload_all))
        # Kill it mid-run, once some events went through and more are coming.
        await bk.records.wait(key, 60, timeout=90)
        bridge.kill()
        killed_at = len(bk.records.of(key))
        bridge.start()
        await uploads
        seen: Callable[[], set[str]] = lambda: {object_key(e) for e in events_of(bk.records, key)}  # noqa: E731
        await wait_for(
            lambda: asyncio.sleep(0, result=seen()),
            lambda got: got >= set(keys),
            what="an event for each of the 500 objects",
            timeout=150,
            interval=0.5,
        )
        # A marker uploaded after every object's event was seen: its event comes from a listing after the
        # restart's first one, the only listing that can repeat events.
        marker = f"{bk.namespace}/zz-marker.txt"
        await asyncio.to_thread(s3.put_object, Bucket=bk.bucket, Key=marker, Body=b"m")
        await wait_for(
            lambda: asyncio.sleep(0, result=seen()), lambda got: marker in got, what="the marker's event"
        )
        await no_more_events(bk, key, len(bk.records.of(key)))
    repeats = len(bk.records.of(key)) - len(keys) - 1
    print(f"\n500 uploads, bridge SIGKILLed after {killed_at} events: {repeats} repeated event(s)")
    assert seen() == {*keys, marker}
    assert 0 <= repeats <= CHECKPOINT_EVERY, repeats


async def test_notification_mode_invokes_for_a_minio_notification_and_refuses_without_the_token(
    bk: Bk,
) -> None:
    key = await bk.deploy_recorder()
    # Now: the bridge delivers no record whose event time is more than its replay window from now.
    event_time = iso_time(datetime.datetime.now(datetime.UTC))
    # No tokenSecret: the Secret the operator generates, <trigger>-bucket-token, key "token".
    bk.apply(secret("pushed-bucket-token", {"token": "s3cr3t-t0ken"}))
    bk.apply(
        trigger(
            "pushed",
            "recorder",
            endpoint="http://minio.example:9000",
            bucket="images",
            filter={"suffix": ".jpg"},
        )
    )

    def minio_record(object_key: str, bucket: str = "images", event: str = "s3:ObjectCreated:Put") -> JSON:
        return {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": event_time,
            "eventName": event,
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.0.7"},
            "responseElements": {
                "x-amz-request-id": "1873F0A5E1B2C3D4",
                "x-minio-origin-endpoint": "http://x",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "minioadmin"},
                    "arn": f"arn:aws:s3:::{bucket}",
                },
                "object": {
                    "key": urllib.parse.quote_plus(object_key, safe=""),  # MinIO escapes "/" too
                    "size": 2048,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "contentType": "image/jpeg",
                    "userMetadata": {"content-type": "image/jpeg"},
                    "sequencer": "1873F0A5E1B2C3D4",
                },
            },
            "source": {"host": "10.0.0.7", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7"},
        }

    def notification(*recs: JSON) -> JSON:
        first = recs[0]
        return {
            "EventName": first["eventName"],
            "Key": f"images/{first['s3']['object']['key']}",
            "Records": list(recs),
        }

    async with (
        webhook_in_process(bk.cluster, bk.namespace, "pushed", bk.url) as webhook,
        aiohttp.ClientSession() as http,
    ):

        async def post(body: JSON, headers: dict[str, str]) -> int:
            async with http.post(webhook, json=body, headers=headers) as resp:
                return resp.status

        good = notification(minio_record("photos/red flower é.jpg"))
        assert await post(good, {}) == 401
        assert await post(good, {"Authorization": "Bearer wrong"}) == 403
        assert await post(good, {"Authorization": "Basic czNjcjN0LXQwa2Vu"}) == 401  # no user:password
        # Basic with the token as the password (VersityGW's webhook URL http://user:token@host/events).
        assert await post(good, {"Authorization": "Basic " + b64("kubelambda:wrong")}) == 403
        # Refused requests invoke nothing: counted exactly below, once the accepted ones are all handled.
        auth = {"Authorization": "Bearer s3cr3t-t0ken"}
        assert await post(good, auth) == 200
        (invocation,) = await bk.records.wait(key, 1, timeout=60)
        event = invocation["requestPayload"]["Records"][0]
        assert event["eventSource"] == "aws:s3"
        assert event["eventName"] == "ObjectCreated:Put"
        assert event["eventTime"] == event_time
        assert event["s3"]["configurationId"] == "pushed"
        assert event["s3"]["bucket"]["name"] == "images"
        assert event["s3"]["object"]["key"] == "photos/red+flower+%C3%A9.jpg"
        assert event["s3"]["object"]["size"] == 2048
        assert event["s3"]["object"]["eTag"] == "d41d8cd98f00b204e9800998ecf8427e"
        assert event["requestParameters"] == {"sourceIPAddress": "10.0.0.7"}
        # Filtered out (suffix, other bucket, event type) but answered 200 so the store does not retry them.
        ignored = notification(
            minio_record("a.png"),
            minio_record("b.jpg", bucket="other"),
            minio_record("c.jpg", event="s3:ObjectAccessed:Get"),
        )
        assert await post(ignored, auth) == 200
        # Two records in one notification: two invocations.
        assert await post(notification(minio_record("x.jpg"), minio_record("y.jpg")), auth) == 200
        basic = {"Authorization": "Basic " + b64("kubelambda:s3cr3t-t0ken")}
        assert await post(notification(minio_record("z.jpg")), basic) == 200
        await bk.records.wait(key, 4, timeout=60)
        await no_more_events(bk, key, 4)
        assert sorted(object_key(e) for e in events_of(bk.records, key)) == [
            "photos/red flower é.jpg",
            "x.jpg",
            "y.jpg",
            "z.jpg",
        ]
        async with http.post(webhook, data=b"not json", headers=auth) as resp:
            assert resp.status == 400

    # A gateway that does not answer: the store is told to retry (not 2xx), nothing is lost silently.
    down = f"http://127.0.0.1:{free_port()}"
    async with (
        webhook_in_process(bk.cluster, bk.namespace, "pushed", down) as webhook,
        aiohttp.ClientSession() as http,
        http.post(webhook, json=notification(minio_record("retry.jpg")), headers=auth) as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["accepted"] == 0


async def test_notification_mode_takes_the_events_a_real_versitygw_sends(bk: Bk, tmp_path: Path) -> None:
    """VersityGW (built from its Go module) pushes its own bucket notifications, with the token as the Basic
    password of its webhook URL, to the bridge's webhook: the function gets Lambda's S3 event for each created and
    removed .jpg object, with VersityGW's size, eTag and time, and nothing for the objects the Trigger filters out."""
    key = await bk.deploy_recorder()
    token = "vers1ty-t0ken"
    bk.apply(secret("store-bucket-token", {"token": token}))
    store = VersityGWServer(
        tmp_path / "versitygw", webhook="", token=token
    )  # the webhook's URL is known below
    bk.apply(
        trigger(
            "store",
            "recorder",
            endpoint=store.endpoint,
            bucket="photos",
            events=["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
            filter={"prefix": "in/", "suffix": ".jpg"},
        )
    )
    # The webhook first: VersityGW posts a test event to it when it starts, and does not start without it.
    async with webhook_in_process(bk.cluster, bk.namespace, "store", bk.url) as webhook:
        store.webhook = webhook
        async with store:
            s3 = boto3.client(
                "s3",
                endpoint_url=store.endpoint,
                region_name="us-east-1",
                aws_access_key_id=VERSITYGW_USER,
                aws_secret_access_key=VERSITYGW_PASSWORD,
                config=Config(s3={"addressing_style": "path"}),
            )
            # VersityGW notifies for every bucket (no per-bucket notification configuration to set).
            await asyncio.to_thread(s3.create_bucket, Bucket="photos")
            # Filtered out by the Trigger (VersityGW sends them; the bridge answers 200 and invokes nothing).
            await asyncio.to_thread(s3.put_object, Bucket="photos", Key="in/c.png", Body=b"png")
            await asyncio.to_thread(s3.put_object, Bucket="photos", Key="out/d.jpg", Body=b"jpg")
            # VersityGW sends raw keys (S3 and MinIO encode them): a "+" or "%" must stay itself.
            bodies = {"in/red flower é+100%.jpg": b"x" * 2048, "in/a/b.jpg": b"jpeg"}
            for k, body in bodies.items():
                await asyncio.to_thread(s3.put_object, Bucket="photos", Key=k, Body=body)
            await bk.records.wait(key, len(bodies), timeout=60)
            heads = {k: await asyncio.to_thread(s3.head_object, Bucket="photos", Key=k) for k in bodies}
            await asyncio.to_thread(s3.delete_object, Bucket="photos", Key="in/a/b.jpg")
            await bk.records.wait(key, len(bodies) + 1, timeout=60)
            # A marker last: VersityGW posts each event as its request completes (one goroutine each, 3 s
            # timeout), so once the marker is recorded the filtered-out ones, sent seconds earlier, were answered.
            await asyncio.to_thread(s3.put_object, Bucket="photos", Key="in/zz-marker.jpg", Body=b"m")
            await wait_for(
                lambda: asyncio.sleep(0, result=[object_key(e) for e in events_of(bk.records, key)]),
                lambda got: "in/zz-marker.jpg" in got,
                what="the marker's event",
            )
            await no_more_events(bk, key, len(bodies) + 2)
    events = events_of(bk.records, key)
    created = {object_key(e): e for e in events if e["eventName"] == "ObjectCreated:Put"}
    assert sorted(created) == sorted([*bodies, "in/zz-marker.jpg"])
    for k, body in bodies.items():
        event = created[k]
        assert event["eventSource"] == "aws:s3"
        assert event["eventVersion"] == "2.1"
        assert event["s3"]["configurationId"] == "store"
        assert event["s3"]["bucket"]["name"] == "photos"
        assert event["s3"]["bucket"]["arn"] == "arn:aws:s3:::photos"
        assert event["s3"]["object"]["key"] == urllib.parse.quote_plus(k, safe="/")
        assert event["s3"]["object"]["size"] == len(body)
        assert event["s3"]["object"]["eTag"] == heads[k]["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        assert event["eventTime"].endswith("Z")
        assert event["userIdentity"] == {"principalId": VERSITYGW_USER}
    (removed,) = [e for e in events if e["eventName"].startswith("ObjectRemoved:")]
    assert removed["eventName"] == "ObjectRemoved:Delete"
    assert object_key(removed) == "in/a/b.jpg"


async def http_status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def test_an_unreachable_store_is_reported_and_the_bridge_recovers_by_itself(
    bk: Bk, tmp_path: Path
) -> None:
    key = await bk.deploy_recorder()
    server = S3Server(tmp_path / "late-seaweedfs")  # ports chosen, nothing listening yet
    bk.apply(
        trigger(
            "late", "recorder", endpoint=server.endpoint, bucket="late", mode="poll", pollIntervalSeconds=1
        )
    )
    async with bridge_in_process(bk.cluster, bk.namespace, "late", bk.url):
        down = await wait_for(
            lambda: condition(bk.kube, bk.namespace, "late", "SourceReachable"),
            lambda c: c is not None and c["status"] == "False",
            what="SourceReachable=False",
        )
        assert down["reason"] == "Unreachable"
        assert "Could not connect" in down["message"] or "connect" in down["message"].lower(), down
        async with server:
            s3 = s3_client(server.endpoint)
            await asyncio.to_thread(s3.create_bucket, Bucket="late")
            await wait_for(
                lambda: condition(bk.kube, bk.namespace, "late", "SourceReachable"),
                lambda c: c is not None and c["status"] == "True",
                what="SourceReachable=True after the store started",
                timeout=90,
            )
            await wait_for(
                lambda: checkpoint_written(bk.kube, bk.namespace, "late"), bool, what="the first listing"
            )
            await asyncio.to_thread(s3.put_object, Bucket="late", Key="after.txt", Body=b"1")
            (invocation,) = await bk.records.wait(key, 1, timeout=60)
            assert object_key(invocation["requestPayload"]["Records"][0]) == "after.txt"


async def bridge_pod_ip(kube: KubeClient, namespace: str, name: str) -> str:
    """The address of the operator's bridge pod of Trigger ``name`` once the Trigger says it is running."""
    path = resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name=name)
    await wait_for(
        lambda: kube.get(path),
        lambda b: any(
            c["type"] == "Ready" and c.get("reason") == "BridgeReady"
            for c in (b.get("status") or {}).get("conditions") or []
        ),
        what=f"Trigger {name} Ready with its bridge pod running",
        timeout=90,
    )
    pods = await kube.get(
        resource_path("v1", "pods", namespace=namespace),
        params={"labelSelector": f"kubelambda.io/trigger={name}"},
    )
    (pod,) = [p for p in pods["items"] if p["status"].get("podIP")]
    return str(pod["status"]["podIP"])


async def test_the_s3_thumbnails_example_writes_a_thumbnail_to_the_second_bucket(
    bk: Bk, tmp_path: Path
) -> None:
    """End to end through the operator: the example's three files applied as they are (but the store's port),
    the operator runs the poll bridge as a pod under its own ServiceAccount, reading the credentials Secret.
    A SeaweedFS of its own: the shared one has room for the data of three buckets only."""
    from PIL import Image

    async with S3Server(tmp_path / "seaweedfs") as s3_server:
        assert isinstance(s3_server, S3Server)
        example = REPO / "examples" / "s3-thumbnails"
        docs = {p.stem: yaml.safe_load(p.read_text()) for p in example.glob("*.yaml")}
        # The example's endpoint is SeaweedFS on 127.0.0.1:8333 (its README starts one there); this one's port is free.
        docs["function"]["spec"]["environment"]["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint
        docs["trigger"]["spec"]["bucket"]["endpoint"] = s3_server.endpoint
        docs["trigger"]["spec"]["bucket"]["pollIntervalSeconds"] = 1
        s3 = s3_client(s3_server.endpoint)
        for bucket in ("photos", "photos-resized"):
            with contextlib.suppress(
                s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists
            ):
                await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
        bk.apply(docs["secret"])
        await bk.deploy(docs["function"])
        bk.apply(docs["trigger"])
        image = io.BytesIO()
        Image.new("RGB", (640, 480), (200, 30, 30)).save(image, format="JPEG")
        key = f"{bk.namespace}/Happy Face.jpg"
        await bridge_pod_ip(bk.kube, bk.namespace, "thumbnails")
        await wait_for(
            lambda: checkpoint_written(bk.kube, bk.namespace, "thumbnails"),
            bool,
            what="the first listing",
            timeout=60,
        )
        await asyncio.to_thread(s3.put_object, Bucket="photos", Key=key, Body=image.getvalue())

        async def thumbnail() -> bytes | None:
            try:
                got = await asyncio.to_thread(s3.get_object, Bucket="photos-resized", Key=f"resized-{key}")
            except s3.exceptions.NoSuchKey:
                return None
            return await asyncio.to_thread(got["Body"].read)

        data = await wait_for(
            thumbnail, bool, what="the thumbnail in photos-resized", timeout=90, interval=0.5
        )
        assert data is not None
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "JPEG"
            assert thumb.size == (128, 96)
        body = await wait_for(
            lambda: bk.kube.get(
                resource_path("kubelambda.io/v1alpha1", "triggers", namespace=bk.namespace, name="thumbnails")
            ),
            lambda b: (b.get("status") or {}).get("eventsDelivered", 0) >= 1,
            what="eventsDelivered written by the bridge pod",
        )
        assert body["status"]["source"] == "bucket"


async def test_a_notification_trigger_through_the_operator_uses_its_generated_token(bk: Bk) -> None:
    """The operator generates <trigger>-bucket-token and runs the webhook bridge pod, which may read that Secret."""
    key = await bk.deploy_recorder()
    bk.apply(
        trigger("hooked", "recorder", enabled=True, endpoint="http://minio.example:9000", bucket="inbox")
    )
    ip = await bridge_pod_ip(bk.kube, bk.namespace, "hooked")
    found = await bk.kube.get(
        resource_path("v1", "secrets", namespace=bk.namespace, name="hooked-bucket-token")
    )
    token = base64.b64decode(found["data"]["token"]).decode()
    assert len(token) >= 16
    body = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "inbox/a%2Fb.txt",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "eventTime": iso_time(datetime.datetime.now(datetime.UTC)),
                "s3": {"bucket": {"name": "inbox"}, "object": {"key": "a%2Fb.txt", "size": 3, "eTag": "abc"}},
            }
        ],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{ip}:8080/events", json=body) as resp:
            assert resp.status == 401
        async with http.post(
            f"http://{ip}:8080/events", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
    (invocation,) = await bk.records.wait(key, 1, timeout=60)
    event = invocation["requestPayload"]["Records"][0]
    assert event["s3"]["object"]["key"] == "a/b.txt"
    assert event["s3"]["configurationId"] == "hooked"
