"""Table tests of each stream source's pure parts: how a broker's message becomes a record, where reading starts."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubelambda.bridge.streams import kafka, kinesis, nats, redis
from kubelambda.bridge.streams._core import config_key
from kubelambda.devcluster.streamservers import (
    _api_versions_ok,
    _api_versions_request,
    kafka_cluster_id,
    kafka_properties,
)


@pytest.mark.parametrize(
    ("fields", "data", "partition_key"),
    [
        ({b"data": b"\xff\x00raw", b"partitionKey": b"user-7"}, b"\xff\x00raw", "user-7"),
        ({b"data": b"x"}, b"x", "orders"),
        ({b"a": b"1", b"b": b"two"}, b'{"a":"1","b":"two"}', "orders"),
    ],
    ids=["data-and-key", "data-only", "fields-as-json"],
)
def test_redis_entry_record(fields: dict[bytes, bytes], data: bytes, partition_key: str) -> None:
    got = redis.entry_record("shardId-000000000000", "orders", b"1700000000123-4", fields)
    assert (got.sequence, got.data, got.partition_key, got.arrival) == (
        "1700000000123-4",
        data,
        partition_key,
        1700000000.123,
    )


@pytest.mark.parametrize(
    ("position", "ts", "expected"),
    [
        ("TRIM_HORIZON", None, "0-0"),
        ("AT_TIMESTAMP", 1700000000000, f"1699999999999-{redis.MAX_SEQ}"),
        ("AT_TIMESTAMP", 0, "0-0"),
    ],
)
def test_redis_start_id(position: str, ts: int | None, expected: str) -> None:
    assert redis.start_id(position, timestamp_ms=ts) == expected


@pytest.mark.parametrize(
    ("key", "value", "partition_key", "data"),
    [
        (b"user-1", b"v", "user-1", b"v"),
        (None, None, "", b""),
        (b"\xff\xfe", b"\x00", "//4=", b"\x00"),
    ],
    ids=["utf8-key", "no-key-no-value", "binary-key"],
)
def test_kafka_message_record(
    key: bytes | None, value: bytes | None, partition_key: str, data: bytes
) -> None:
    message = SimpleNamespace(offset=41, key=key, value=value, timestamp=1700000000250)
    [got] = kafka.message_records("shardId-000000000003", [message])
    assert (got.sequence, got.partition_key, got.data, got.arrival, got.position) == (
        "41",
        partition_key,
        data,
        1700000000.25,
        41,
    )
    assert kafka.default_group("ns", "trig") == "kubelambda-ns-trig"


def test_nats_message_record_keys_by_header_or_subject() -> None:
    meta = SimpleNamespace(
        sequence=SimpleNamespace(stream=12, consumer=3),
        timestamp=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )
    plain = SimpleNamespace(metadata=meta, headers=None, subject="orders.eu", data=b"\xff")
    keyed = SimpleNamespace(
        metadata=meta, headers={nats.PARTITION_KEY_HEADER: "user-9"}, subject="orders.eu", data=None
    )
    a = nats.message_record("shardId-000000000000", plain)
    b = nats.message_record("shardId-000000000000", keyed)
    assert (a.sequence, a.partition_key, a.data) == ("12", "orders.eu", b"\xff")
    assert (b.partition_key, b.data) == ("user-9", b"")
    assert a.arrival == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()


def test_kinesis_record() -> None:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    got = kinesis.kinesis_record(
        "shardId-000000000001",
        {
            "SequenceNumber": "4960",
            "PartitionKey": "p",
            "Data": b"\x00\x01",
            "ApproximateArrivalTimestamp": when,
        },
    )
    assert (got.shard, got.sequence, got.partition_key, got.data, got.arrival) == (
        "shardId-000000000001",
        "4960",
        "p",
        b"\x00\x01",
        when.timestamp(),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("shardId-000000000000", "shardId-000000000000"),
        ("redis.orders", "redis.orders"),
        ("redis.a:b", "redis.a_b."),  # unsafe characters replaced, a hash keeps it unique
    ],
)
def test_config_key(text: str, expected: str) -> None:
    got = config_key(text)
    assert got == text if text == expected else got.startswith(expected) and len(got) == len(expected) + 16
    assert all(c.isalnum() or c in "-._" for c in got)
    assert config_key("redis.a;b") != got


def test_kafka_properties_is_one_kraft_node_on_loopback() -> None:
    text = kafka_properties(node_id=1, port=9092, controller_port=9093, log_dir=Path("/d"), partitions=2)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["num.partitions"] == "2"
    assert props["offsets.topic.replication.factor"] == "1"


def test_api_versions_probe() -> None:
    request = _api_versions_request()
    assert int.from_bytes(request[:4], "big") == len(request) - 4
    assert _api_versions_ok(b"\x00\x00\x01\x00" + b"\x00\x00\x00\x01" + b"\x00\x00")
    assert not _api_versions_ok(b"\x00\x00\x01\x00" + b"\x00\x00\x00\x01" + b"\x00\x23")
    assert not _api_versions_ok(b"")


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    """One id in 64 would, and ``kafka-storage format`` would read it as an option (CI failed so once)."""
    ids = {kafka_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cluster_id in ids:
        assert not cluster_id.startswith("-"), cluster_id
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, cluster_id
