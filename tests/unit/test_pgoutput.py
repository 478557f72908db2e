"""The pure parts of ``stream.postgres``: pgoutput messages (built here as the protocol documents them) and the
DynamoDB Streams records made of them, checked against powertools' ``DynamoDBStreamEvent``."""

from __future__ import annotations

import json
import struct

import pytest
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent

from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge.streams._pgoutput import (
    PG_EPOCH,
    UNCHANGED_TOAST,
    Begin,
    Change,
    Commit,
    DecodeError,
    Decoder,
    Relation,
    Shaper,
    Table,
    Truncate,
    attribute,
    parse_array,
    sequence_number,
)
from kubelambda.bridge.streams.postgres import slot_name

TEXT, INT4, NUMERIC, JSONB, BYTEA, BOOL, TEXT_ARRAY = 25, 23, 1700, 3802, 17, 16, 1009


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def relation(oid: int, schema: str, name: str, identity: str, cols: list[tuple[str, int, bool]]) -> bytes:
    out = b"R" + struct.pack("!I", oid) + cstr(schema) + cstr(name) + identity.encode()
    out += struct.pack("!h", len(cols))
    for col, type_oid, key in cols:
        out += struct.pack("!b", 1 if key else 0) + cstr(col) + struct.pack("!Ii", type_oid, -1)
    return out


def tup(values: list[str | object | None]) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        else:
            data = str(v).encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


COLS = [("id", INT4, True), ("name", TEXT, False), ("big", TEXT, False)]


@pytest.fixture
def decoder() -> Decoder:
    d = Decoder()
    rel = d.feed(relation(16400, "public", "orders", "f", COLS))
    assert isinstance(rel, Relation)
    assert rel.qualified == "public.orders"
    return d


def test_begin_commit_and_times() -> None:
    d = Decoder()
    begin = d.feed(b"B" + struct.pack("!QqI", 500, 1_000_000, 42))
    assert begin == Begin(500, PG_EPOCH + 1.0, 42)
    commit = d.feed(b"C" + struct.pack("!bQQq", 0, 500, 560, 2_500_000))
    assert commit == Commit(500, 560, PG_EPOCH + 2.5)


def test_insert_update_delete(decoder: Decoder) -> None:
    ins = decoder.feed(b"I" + struct.pack("!I", 16400) + b"N" + tup(["1", "ann", None]))
    assert isinstance(ins, Change)
    assert (ins.kind, ins.new, ins.old) == ("INSERT", ["1", "ann", None], None)
    upd = decoder.feed(
        b"U"
        + struct.pack("!I", 16400)
        + b"O"
        + tup(["1", "ann", "x"])
        + b"N"
        + tup(["1", "bob", UNCHANGED_TOAST])
    )
    assert isinstance(upd, Change)
    assert upd.kind == "MODIFY"
    assert upd.old_is_full
    assert upd.new == ["1", "bob", UNCHANGED_TOAST]
    plain = decoder.feed(b"U" + struct.pack("!I", 16400) + b"N" + tup(["1", "bob", "x"]))
    assert isinstance(plain, Change)
    assert plain.old is None
    dele = decoder.feed(b"D" + struct.pack("!I", 16400) + b"K" + tup(["1", None, None]))
    assert isinstance(dele, Change)
    assert (dele.kind, dele.new, dele.old, dele.old_is_full) == ("REMOVE", None, ["1", None, None], False)
    trunc = decoder.feed(b"T" + struct.pack("!ibI", 1, 0, 16400))
    assert isinstance(trunc, Truncate)
    assert trunc.relations[0].name == "orders"
    assert decoder.feed(b"Y" + struct.pack("!I", 1) + cstr("public") + cstr("mood")) is None


def test_a_change_before_its_relation_or_a_short_message_is_an_error() -> None:
    with pytest.raises(DecodeError, match="relation 7"):
        Decoder().feed(b"I" + struct.pack("!I", 7) + b"N" + tup(["1"]))
    with pytest.raises(DecodeError, match="too short"):
        Decoder().feed(b"B" + b"\0\0")


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (INT4, "42", {"N": "42"}),
        (NUMERIC, "12.50", {"N": "12.50"}),
        (NUMERIC, "NaN", {"S": "NaN"}),
        (701, "-Infinity", {"S": "-Infinity"}),
        (BOOL, "t", {"BOOL": True}),
        (BOOL, "f", {"BOOL": False}),
        (TEXT, "héllo", {"S": "héllo"}),
        (TEXT, None, {"NULL": True}),
        (BYTEA, "\\x00ff", {"B": "AP8="}),
        (
            JSONB,
            '{"a": [1, 2.5e3, "x", null, false]}',
            {"M": {"a": {"L": [{"N": "1"}, {"N": "2.5e3"}, {"S": "x"}, {"NULL": True}, {"BOOL": False}]}}},
        ),
        (
            TEXT_ARRAY,
            '{a,"b,c","d\\"e",NULL}',
            {"L": [{"S": "a"}, {"S": "b,c"}, {"S": 'd"e'}, {"NULL": True}]},
        ),
        (1007, "{1,2}", {"L": [{"N": "1"}, {"N": "2"}]}),
        (1007, "{{1,2},{3,4}}", {"S": "{{1,2},{3,4}}"}),
        (1114, "2026-12-05 07:00:00", {"S": "2026-12-05 07:00:00"}),
    ],
)
def test_attribute_values(type_oid: int, text: str | None, expected: dict[str, object]) -> None:
    assert attribute(type_oid, text) == expected


def test_parse_array_edge_cases() -> None:
    assert parse_array("{}") == []
    assert parse_array('{""}') == [""]
    assert parse_array("[0:1]={1,2}") is None


def test_sequence_numbers_sort_in_commit_order() -> None:
    a, b, c = sequence_number(0x1508888, 0), sequence_number(0x1508888, 1), sequence_number(0x1600000, 0)
    assert len(a) == 28
    assert a < b < c
    assert int(a) < int(b) < int(c)


def shaper(view: str) -> Shaper:
    return Shaper(
        tables={"public.orders": Table("public.orders", ("id",))},
        view_type=view,
        region="eu-west-1",
        namespace="shop",
        slot="s1",
    )


def test_records_parse_as_powertools_dynamodb_stream_events(decoder: Decoder) -> None:
    upd = decoder.feed(
        b"U"
        + struct.pack("!I", 16400)
        + b"O"
        + tup(["1", "ann", "x" * 10])
        + b"N"
        + tup(["1", "bob", UNCHANGED_TOAST])
    )
    assert isinstance(upd, Change)
    pk, encoded = shaper("NEW_AND_OLD_IMAGES").record(
        upd, sequence=sequence_number(9, 0), timestamp=1800000000.5
    )
    record = json.loads(encoded)
    assert pk == "public.orders\x001"
    assert record["eventSource"] == "aws:dynamodb"
    assert record["eventSourceARN"] == "arn:kubelambda:postgres:eu-west-1:shop:table/public.orders/stream/s1"
    # The unchanged TOASTed value comes from the full old row.
    assert record["dynamodb"]["NewImage"]["big"] == {"S": "x" * 10}
    event = DynamoDBStreamEvent({"Records": [record]})
    (rec,) = list(event.records)
    assert rec.event_name is not None
    assert rec.event_name.name == "MODIFY"
    assert rec.aws_region == "eu-west-1"
    assert rec.dynamodb is not None
    assert rec.dynamodb.keys == {"id": 1}
    assert rec.dynamodb.new_image == {"id": 1, "name": "bob", "big": "x" * 10}
    assert rec.dynamodb.old_image == {"id": 1, "name": "ann", "big": "x" * 10}
    assert rec.dynamodb.sequence_number == "0000000000000000000900000000"
    assert rec.dynamodb.stream_view_type is not None
    assert rec.dynamodb.stream_view_type.name == "NEW_AND_OLD_IMAGES"
    assert rec.dynamodb.approximate_creation_date_time == 1800000000
    assert rec.dynamodb.size_bytes == record["dynamodb"]["SizeBytes"] > 0


@pytest.mark.parametrize(
    ("view", "new", "old"),
    [
        ("KEYS_ONLY", False, False),
        ("NEW_IMAGE", True, False),
        ("OLD_IMAGE", False, True),
        ("NEW_AND_OLD_IMAGES", True, True),
    ],
)
def test_stream_view_types(decoder: Decoder, view: str, new: bool, old: bool) -> None:
    upd = decoder.feed(
        b"U" + struct.pack("!I", 16400) + b"O" + tup(["1", "ann", "x"]) + b"N" + tup(["1", "bob", "x"])
    )
    assert isinstance(upd, Change)
    record = json.loads(shaper(view).record(upd, sequence="1", timestamp=0)[1])
    assert ("NewImage" in record["dynamodb"]) is new
    assert ("OldImage" in record["dynamodb"]) is old
    assert record["dynamodb"]["Keys"] == {"id": {"N": "1"}}
    assert record["dynamodb"]["StreamViewType"] == view


def test_a_delete_without_full_identity_has_keys_only(decoder: Decoder) -> None:
    dele = decoder.feed(b"D" + struct.pack("!I", 16400) + b"K" + tup(["7", None, None]))
    assert isinstance(dele, Change)
    record = json.loads(shaper("NEW_AND_OLD_IMAGES").record(dele, sequence="1", timestamp=0)[1])
    assert record["eventName"] == "REMOVE"
    assert record["dynamodb"]["Keys"] == {"id": {"N": "7"}}
    assert "OldImage" not in record["dynamodb"]
    assert "NewImage" not in record["dynamodb"]


def test_slot_names_are_valid_postgres_identifiers() -> None:
    assert slot_name("shop", "orders-changes") == "kubelambda_shop_orders_changes"
    long = slot_name("n" * 63, "t" * 63)
    assert len(long) <= 63
    assert long == slot_name("n" * 63, "t" * 63)


def test_the_model_accepts_a_postgres_stream_and_names_its_kind() -> None:
    t = Trigger.model_validate(
        {
            "spec": {
                "function": "f",
                "stream": {
                    "postgres": {"url": "postgresql://app@db:5432/shop", "tables": ["orders", "sales.items"]}
                },
            }
        }
    )
    assert t.spec.source_kind == "stream.postgres"
    assert t.spec.stream is not None
    assert t.spec.stream.postgres is not None
    assert t.spec.stream.postgres.stream_view_type == "NEW_AND_OLD_IMAGES"
    with pytest.raises(ValueError, match="tables"):
        Trigger.model_validate(
            {
                "spec": {
                    "function": "f",
                    "stream": {"postgres": {"url": "postgresql://db/x", "tables": ["a b"]}},
                }
            }
        )
