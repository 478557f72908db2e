"""The bucket bridge's pure parts: S3 record shape, key encoding, filters, the poll diff and the checkpoint codec."""

from __future__ import annotations

import base64
import datetime
import urllib.parse

import pytest

from kubelambda.bridge import _s3events as s3e

T0 = datetime.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("photo.jpg", "photo.jpg"),
        ("red flower.jpg", "red+flower.jpg"),
        ("photos/2026/a b.png", "photos/2026/a+b.png"),
        ("été/ñ.txt", "%C3%A9t%C3%A9/%C3%B1.txt"),
        ("a+b.txt", "a%2Bb.txt"),
        ("logs/10:47:07.log", "logs/10%3A47%3A07.log"),
        ("dt=2026-11-26/_SUCCESS", "dt%3D2026-11-26/_SUCCESS"),
        ("100%.txt", "100%25.txt"),
        ("日本語 キー", "%E6%97%A5%E6%9C%AC%E8%AA%9E+%E3%82%AD%E3%83%BC"),
    ],
    ids=["plain", "space", "nested", "unicode", "plus", "colon", "equals", "percent", "cjk"],
)
def test_keys_are_form_encoded_as_s3_does_and_unquote_plus_reverses_it(key: str, encoded: str) -> None:
    assert s3e.encode_key(key) == encoded
    assert urllib.parse.unquote_plus(encoded) == key
    assert s3e.decode_key(encoded) == key


def test_minio_escaped_slashes_decode_to_the_same_key() -> None:
    assert s3e.decode_key("users%2FABC+d.png") == "users/ABC d.png"


@pytest.mark.parametrize(
    ("name", "patterns", "wanted"),
    [
        ("ObjectCreated:Put", ["s3:ObjectCreated:*"], True),
        ("s3:ObjectCreated:Put", ["s3:ObjectCreated:*"], True),
        ("ObjectCreated:CompleteMultipartUpload", ["s3:ObjectCreated:*"], True),
        ("ObjectCreated:Copy", ["s3:ObjectCreated:Put"], False),
        ("ObjectRemoved:Delete", ["s3:ObjectCreated:*"], False),
        ("ObjectRemoved:Delete", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], True),
        ("ObjectRemoved:DeleteMarkerCreated", ["s3:ObjectRemoved:Delete"], False),
        ("ObjectAccessed:Get", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], False),
    ],
    ids=[
        "wildcard",
        "minio-prefix",
        "multipart",
        "exact-miss",
        "other-family",
        "both",
        "exact-removed",
        "accessed",
    ],
)
def test_event_type_filter(name: str, patterns: list[str], wanted: bool) -> None:
    assert s3e.event_matches(name, patterns) is wanted


@pytest.mark.parametrize(
    ("key", "prefix", "suffix", "wanted"),
    [
        ("uploads/a.jpg", "", "", True),
        ("uploads/a.jpg", "uploads/", ".jpg", True),
        ("uploads/a.png", "uploads/", ".jpg", False),
        ("other/a.jpg", "uploads/", ".jpg", False),
        ("uploads/a b.jpg", "uploads/a ", "", True),  # filters see the raw key, not the encoded one
    ],
    ids=["none", "both", "suffix-miss", "prefix-miss", "raw-key"],
)
def test_prefix_and_suffix_filter(key: str, prefix: str, suffix: str, wanted: bool) -> None:
    assert s3e.key_matches(key, prefix=prefix, suffix=suffix) is wanted


def test_a_created_record_has_every_field_s3_sends_to_lambda() -> None:
    event = s3e.ObjectEvent(
        event_name="ObjectCreated:Put", key="in/red flower.jpg", event_time=T0, size=1024, etag="abc123"
    )
    record = s3e.s3_record(event, bucket="photos", region="eu-west-1", configuration_id="thumbs")
    assert record["eventVersion"] == "2.1"
    assert record["eventSource"] == "aws:s3"
    assert record["awsRegion"] == "eu-west-1"
    assert record["eventTime"] == "2026-11-26T12:00:00.123Z"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["userIdentity"] == {"principalId": "kubelambda"}
    assert record["requestParameters"] == {"sourceIPAddress": "0.0.0.0"}
    assert set(record["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    assert len(record["responseElements"]["x-amz-request-id"]) == 16
    s3 = record["s3"]
    assert s3["s3SchemaVersion"] == "1.0"
    assert s3["configurationId"] == "thumbs"
    assert s3["bucket"] == {
        "name": "photos",
        "ownerIdentity": {"principalId": "kubelambda"},
        "arn": "arn:aws:s3:::photos",
    }
    assert s3["object"] == {
        "key": "in/red+flower.jpg",
        "size": 1024,
        "eTag": "abc123",
        "sequencer": s3e.sequencer(T0),
    }
    # Deterministic: the same change delivered twice carries the same request id.
    assert s3e.s3_record(event, bucket="photos", region="eu-west-1", configuration_id="thumbs") == record


def test_a_removal_record_has_key_and_sequencer_only() -> None:
    event = s3e.ObjectEvent(event_name="ObjectRemoved:Delete", key="a.txt", event_time=T0, version_id="v1")
    obj = s3e.s3_record(event, bucket="b", region="us-east-1", configuration_id="c")["s3"]["object"]
    assert obj == {"key": "a.txt", "versionId": "v1", "sequencer": s3e.sequencer(T0)}


def test_sequencers_grow_with_time() -> None:
    later = T0 + datetime.timedelta(microseconds=1)
    assert s3e.sequencer(T0) < s3e.sequencer(later)
    assert len(s3e.sequencer(T0)) == len(s3e.sequencer(later))


MINIO_RECORD = {
    "eventVersion": "2.0",
    "eventSource": "minio:s3",
    "awsRegion": "",
    "eventTime": "2019-05-18T07:34:32.5Z",
    "eventName": "s3:ObjectCreated:Put",
    "userIdentity": {"principalId": "minio"},
    "requestParameters": {"accessKey": "minio", "region": "", "sourceIPAddress": "172.18.0.1"},
    "responseElements": {"x-amz-request-id": "159FB6B233B08AF0", "x-minio-origin-endpoint": "http://x:9000"},
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "Config",
        "bucket": {"name": "images", "ownerIdentity": {"principalId": "minio"}, "arn": "arn:aws:s3:::images"},
        "object": {
            "key": "dir%2Fred+flower.jpg",
            "size": 629648,
            "eTag": "b7ce786cd89b182bfd5ae765557bbc37",
            "contentType": "image/jpeg",
            "sequencer": "15612487A9DF732C",
        },
    },
}


def test_a_minio_record_becomes_an_s3_record() -> None:
    found = s3e.from_store_record(MINIO_RECORD, now=T0)
    assert found is not None
    bucket, event = found
    assert bucket == "images"
    assert event.key == "dir/red flower.jpg"
    record = s3e.s3_record(event, bucket=bucket, region="us-east-1", configuration_id="trig")
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["eventTime"] == "2019-05-18T07:34:32.500Z"
    assert record["userIdentity"] == {"principalId": "minio"}
    assert record["requestParameters"] == {"sourceIPAddress": "172.18.0.1"}
    assert record["responseElements"]["x-amz-request-id"] == "159FB6B233B08AF0"
    assert record["s3"]["configurationId"] == "trig"
    assert record["s3"]["object"] == {
        "key": "dir/red+flower.jpg",
        "size": 629648,
        "eTag": "b7ce786cd89b182bfd5ae765557bbc37",
        "sequencer": "15612487A9DF732C",
    }


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"eventName": "s3:ObjectAccessed:Get", "s3": MINIO_RECORD["s3"]},
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}},
        {"eventName": "s3:ObjectCreated:Put", "s3": "x"},
    ],
    ids=["empty", "accessed", "no-key", "bad-s3"],
)
def test_records_that_are_not_object_events_are_skipped(record: dict[str, object]) -> None:
    assert s3e.from_store_record(record, now=T0) is None


@pytest.mark.parametrize(
    "body",
    [[], {"Records": "x"}, {"EventName": "s3:ObjectCreated:Put"}, {"Records": [1]}],
    ids=["list", "not-a-list", "no-records", "not-objects"],
)
def test_a_notification_needs_a_records_list(body: object) -> None:
    with pytest.raises(ValueError, match="Records"):
        s3e.notification_records(body)


def listed(key: str, etag: str = "e1", size: int = 1, *, at: int = 0) -> s3e.Listed:
    return s3e.Listed(key=key, etag=f'"{etag}"', size=size, last_modified=T0 + datetime.timedelta(seconds=at))


def names(changes: list[s3e.Change]) -> list[tuple[str, str]]:
    return [(c.event.event_name, c.key) for c in changes]


@pytest.mark.parametrize(
    ("state_of", "listing", "expected"),
    [
        ([], [], []),
        (
            [],
            [listed("b", at=2), listed("a", at=1)],
            [("ObjectCreated:Put", "a"), ("ObjectCreated:Put", "b")],
        ),
        ([listed("a")], [listed("a")], []),
        ([listed("a")], [listed("a", "e2")], [("ObjectCreated:Put", "a")]),
        ([listed("a")], [listed("a", size=2)], [("ObjectCreated:Put", "a")]),
        ([listed("a")], [listed("a", at=5)], [("ObjectCreated:Put", "a")]),  # same bytes uploaded again
        ([listed("a"), listed("b")], [listed("b")], [("ObjectRemoved:Delete", "a")]),
        (
            [listed("z"), listed("a")],
            [listed("n", at=3)],
            [("ObjectCreated:Put", "n"), ("ObjectRemoved:Delete", "a"), ("ObjectRemoved:Delete", "z")],
        ),
    ],
    ids=["empty", "new-in-time-order", "unchanged", "etag", "size", "reupload", "deleted", "mixed"],
)
def test_diff(state_of: list[s3e.Listed], listing: list[s3e.Listed], expected: list[tuple[str, str]]) -> None:
    state = {o.key: o.fingerprint for o in state_of}
    changes = s3e.diff(state, listing, now=T0)
    assert names(changes) == expected
    # Applying every change gives exactly the listing's state.
    assert s3e.apply_changes(state, changes) == {o.key: o.fingerprint for o in listing}


def test_a_changed_object_event_carries_the_listed_size_etag_and_time() -> None:
    (change,) = s3e.diff({}, [listed("k", "abc", 7, at=3)], now=T0)
    assert change.event.size == 7
    assert change.event.etag == "abc"
    assert change.event.event_time == T0 + datetime.timedelta(seconds=3)


def test_batches_cut_in_order() -> None:
    changes = s3e.diff({}, [listed(f"k{i:03d}", at=i) for i in range(250)], now=T0)
    runs = s3e.batches(changes, 100)
    assert [len(r) for r in runs] == [100, 100, 50]
    assert [c.key for r in runs for c in r] == [c.key for c in changes]


def test_the_checkpoint_round_trips_and_an_empty_configmap_means_never_listed() -> None:
    state = {"a b/é.txt": "AAAAAAAA", "x": "BBBBBBBB"}
    data = s3e.encode_state(state)
    assert s3e.decode_state(data) == state
    assert s3e.decode_state(s3e.encode_state({})) == {}
    assert s3e.decode_state({}) is None
    with pytest.raises(ValueError, match="format"):
        s3e.decode_state({"format": "other", "objects": ""})


def test_a_checkpoint_of_another_bucket_or_filter_counts_as_never_listed() -> None:
    scope = s3e.listing_scope(endpoint="http://s3:9000/", bucket="a", prefix="in/", suffix="")
    assert scope == s3e.listing_scope(endpoint="http://s3:9000", bucket="a", prefix="in/", suffix="")
    data = s3e.encode_state({"in/k": "AAAAAAAA"}, scope=scope)
    assert s3e.decode_state(data, scope=scope) == {"in/k": "AAAAAAAA"}
    for other in (
        s3e.listing_scope(endpoint="http://s3:9000", bucket="b", prefix="in/", suffix=""),
        s3e.listing_scope(endpoint="http://s3:9000", bucket="a", prefix="", suffix=""),
        s3e.listing_scope(endpoint="http://other:9000", bucket="a", prefix="in/", suffix=""),
    ):
        assert s3e.decode_state(data, scope=other) is None


def test_the_checkpoint_holds_70000_typical_keys_under_the_configmap_limit() -> None:
    objects = [
        listed(f"uploads/2026/11/{i % 28 + 1:02d}/photo-{i:06d}.jpg", f"{i:032x}") for i in range(70_000)
    ]
    data = s3e.encode_state({o.key: o.fingerprint for o in objects})
    assert len(data["objects"]) < s3e.MAX_CHECKPOINT_BYTES
    print(f"70,000 objects: {len(data['objects'])} bytes, {len(data['objects']) / 70_000:.1f} per object")


def test_a_checkpoint_too_large_is_refused_with_advice() -> None:
    state = {f"{i:x}-{'q' * 200}-{i * 7919 % 1000003}": f"{i:08x}"[:8] for i in range(200_000)}
    with pytest.raises(s3e.CheckpointTooLarge, match="filter"):
        s3e.encode_state(state)


@pytest.mark.parametrize(
    ("attempt", "seconds"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (50, 30.0)]
)
def test_backoff_doubles_up_to_the_cap(attempt: int, seconds: float) -> None:
    assert s3e.backoff_seconds(attempt) == seconds


@pytest.mark.parametrize(
    ("spec", "secret"),
    [({}, "thumbs-bucket-token"), ({"tokenSecret": "my-token"}, "my-token")],
    ids=["generated", "named"],
)
def test_the_webhook_token_secret_is_named_or_generated(spec: dict[str, str], secret: str) -> None:
    from kubelambda.api.v1alpha1.trigger import BucketSource
    from kubelambda.resources.bridge import webhook_token_secret

    source = BucketSource.model_validate({"endpoint": "http://s3:9000", "bucket": "photos", **spec})
    assert webhook_token_secret("thumbs", source) == secret


# VersityGW v1.8.0's webhook record (s3event/event.go, as it posted it): eventVersion 2.2, "PrincipalId"
# capitalised, the raw key (not encoded), a quoted eTag, eventTime to the second.
VERSITYGW_RECORD = {
    "eventVersion": "2.2",
    "eventSource": "aws:s3",
    "awsRegion": "us-east-1",
    "eventTime": "2026-12-05T09:00:01Z",
    "eventName": "s3:ObjectCreated:Put",
    "userIdentity": {"PrincipalId": "kubelambda"},
    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
    "responseElements": {"x-amz-request-id": "", "x-amz-id-2": ""},
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "webhook-global",
        "bucket": {"name": "photos", "ownerIdentity": {"PrincipalId": "kubelambda"}, "arn": "arn:aws:s3:::/photos/in/a b+100% é.jpg"},
        "object": {"key": "in/a b+100% é.jpg", "size": 4, "eTag": '"d41d8cd98f00b204e9800998ecf8427e"', "versionId": None, "sequencer": "188E3A1B2C3D4E5F"},
    },
    "glacierEventData": {"restoreEventData": {"lifecycleRestorationExpiryTime": "", "lifecycleRestoreStorageClass": ""}},
}  # fmt: skip


def test_a_versitygw_record_becomes_an_s3_record() -> None:
    found = s3e.from_store_record(VERSITYGW_RECORD, now=T0)
    assert found is not None
    bucket, event = found
    assert (bucket, event.key, event.principal_id, event.owner_id) == (
        "photos",
        "in/a b+100% é.jpg",
        "kubelambda",
        "kubelambda",
    )
    record = s3e.s3_record(event, bucket=bucket, region="us-east-1", configuration_id="trig")
    assert record["eventVersion"] == "2.1"
    assert record["eventTime"] == "2026-12-05T09:00:01.000Z"
    assert record["userIdentity"] == {"principalId": "kubelambda"}
    assert record["s3"]["bucket"]["arn"] == "arn:aws:s3:::photos"
    assert record["s3"]["object"] == {
        "key": "in/a+b%2B100%25+%C3%A9.jpg",
        "size": 4,
        "eTag": "d41d8cd98f00b204e9800998ecf8427e",
        "sequencer": "188E3A1B2C3D4E5F",
    }
    # The store gave no request ids: derived from the change, as in poll mode.
    assert len(record["responseElements"]["x-amz-request-id"]) == 16


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer s3cr3t", "s3cr3t"),
        ("bearer   s3cr3t ", "s3cr3t"),
        (basic("kubelambda:s3cr3t"), "s3cr3t"),
        (basic(":s3:cr3t"), "s3:cr3t"),  # the password is everything after the first colon
        ("", None),
        ("Bearer", None),
        ("Bearer  ", None),
        (basic("s3cr3t"), None),  # no user:password
        (basic("kubelambda:"), None),
        ("Basic not*base64", None),
        ("Basic " + base64.b64encode(b"u:\xff").decode(), None),
        ("Token s3cr3t", None),
    ],
)
def test_the_webhook_token_is_a_bearer_or_a_basic_password(header: str, token: str | None) -> None:
    from kubelambda.bridge.bucket import presented_token

    assert presented_token(header) == token
