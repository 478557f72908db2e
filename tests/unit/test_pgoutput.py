"""The pure parts of ``stream.postgres``: pgoutput messages (built here as the protocol documents them) and the
DynamoDB Streams records made of them, checked against powertools' ``DynamoDBStreamEvent``; and the bridge's native
path (``kubelambda._native``) against the Python shaper, its oracle, byte for byte."""

from __future__ import annotations

import json
import random
import struct

import pytest
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent

from kubelambda import _native
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


def tup(values: list[bytes | str | object | None]) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        else:
            data = v if isinstance(v, bytes) else str(v).encode()
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


# ---- the native path (kubelambda._native.Shaper) against its oracle, the Python decoder and shaper above -------
# The same records, byte for byte, for generated rows of every supported type (NULLs, unchanged TOASTed values,
# Unicode and bytes that are not UTF-8, arrays, JSON), every streamViewType, updates with and without old rows,
# deletes; and clear errors for malformed messages.


def native_relation(oid: int, qualified: str, identity: str, cols: list[tuple[str, int]]) -> bytes:
    schema, name = qualified.split(".")
    return relation(oid, schema, name, identity, [(c, t, False) for c, t in cols])


VIEWS = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
TYPES = {
    "bool": 16,
    "bytea": 17,
    "int8": 20,
    "int2": 21,
    "int4": 23,
    "text": 25,
    "oid": 26,
    "json": 114,
    "_json": 199,
    "float4": 700,
    "float8": 701,
    "_bool": 1000,
    "_int2": 1005,
    "_int4": 1007,
    "_bpchar": 1014,
    "_varchar": 1015,
    "_text": 1009,
    "_int8": 1016,
    "_float4": 1021,
    "_float8": 1022,
    "bpchar": 1042,
    "varchar": 1043,
    "timestamp": 1114,
    "_numeric": 1231,
    "numeric": 1700,
    "uuid": 2950,
    "_uuid": 2951,
    "jsonb": 3802,
    "_jsonb": 3807,
}
ALPHABET = ["a", "Z", " ", ",", "{", "}", '"', "\\", "\n", "\t", "\b", "\f", "\x01", "\x1f", "\x7f", "é", "ß"]
ALPHABET += ["\u2028", "😀", "/", "NULL", "\u0000"]
NOT_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
]
NOT_UTF8 += [b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe0\x80\xaf", b"a\xffb\xc3("]


def some_text(rng: random.Random, n: int = 10) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(n)))


def json_text(rng: random.Random, depth: int = 0) -> str:
    """A JSON document as a server may keep it (json keeps the text, whitespace and repeated names)."""
    ws = rng.choice(["", "", " ", "\n  ", "\t"])
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(["null", "true", "false"])
    if kind in (1, 2):
        return rng.choice(
            ["0", "-0", "12", "-7.25", "1e3", "2.5E-3", "1E+400", "123456789012345678901234567890"]
        )
    if kind in (3, 4, 5):
        body = some_text(rng).replace("\\", "\\\\").replace('"', '\\"')
        body = "".join(c if ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in body)
        return '"' + body + rng.choice(["", "\\u00e9", "\\ud83d\\ude00", "\\/", "\\n", "\\\\"]) + '"'
    if kind in (6, 7):
        items = [json_text(rng, depth + 1) for _ in range(rng.randrange(4))]
        return "[" + ws + ("," + ws).join(items) + ws + "]"
    names = [rng.choice(["a", "b", "é", 'q"', "a"]) for _ in range(rng.randrange(5))]  # "a" twice: repeated
    members = [
        f"{json.dumps(n, ensure_ascii=rng.random() < 0.5)}{ws}:{ws}{json_text(rng, depth + 1)}" for n in names
    ]
    return "{" + ws + ("," + ws).join(members) + ws + "}"


NOT_JSON = [
    "not json",
    "",
    " ",
    "{",
    "[1,]",
    '{"a":1,}',
    "01",
    "1.",
    "1e",
    "-",
    "tru",
    '"\\x"',
    '"a\tb"',
    '"\\u12"',
]
NOT_JSON += ["[1] 2", "\ufeff1", '{"a" 1}', "[1 2]", "+1", ".5"]


def array_text(rng: random.Random, element: str) -> str:
    if rng.random() < 0.1:
        return rng.choice(
            ["{}", '{""}', "{{1,2},{3,4}}", "[0:1]={1,2}", "{a", '{"open}', '{a,b"c}', "{a,}", "{"]
        )
    items = []
    for _ in range(rng.randrange(5)):
        if rng.random() < 0.15:
            items.append("NULL")
            continue
        if element == "json":
            text = json_text(rng, 2) if rng.random() < 0.9 else rng.choice(NOT_JSON)
        elif element == "number":
            text = rng.choice(["1", "-2", "3.5", "NaN", "Infinity", "-Infinity", "1e5"])
        elif element == "bool":
            text = rng.choice(["t", "f"])
        else:
            text = some_text(rng, 6)
        if rng.random() < 0.6 or not text or any(c in text for c in ',{}"\\ ') or text == "NULL":
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        items.append(text)
    return "{" + ",".join(items) + "}"


def value(rng: random.Random, type_name: str) -> bytes | None:
    if rng.random() < 0.08:
        return None
    if type_name in ("int2", "int4", "int8", "oid"):
        return str(rng.randint(-(2**63), 2**63 - 1)).encode()
    if type_name in ("float4", "float8", "numeric"):
        return rng.choice([b"NaN", b"Infinity", b"-Infinity", b"0", b"-12.50", b"1e+300", b"3.25", b"-0"])
    if type_name == "bool":
        return rng.choice([b"t", b"f"])
    if type_name == "bytea":
        if rng.random() < 0.1:
            return some_text(rng).encode()  # bytea_output = escape: a string
        return b"\\x" + bytes(rng.randrange(256) for _ in range(rng.randrange(9))).hex().encode()
    if type_name in ("json", "jsonb"):
        return (json_text(rng) if rng.random() < 0.85 else rng.choice(NOT_JSON)).encode()
    if type_name.startswith("_"):
        element = type_name[1:]
        kind = {"json": "json", "jsonb": "json", "bool": "bool"}.get(element)
        if kind is None:
            kind = "number" if element in ("int2", "int4", "int8", "float4", "float8", "numeric") else "text"
        return array_text(rng, kind).encode()
    text = some_text(rng, 16).encode()
    return text + rng.choice(NOT_UTF8) if rng.random() < 0.1 else text


class Pair:
    """The native shaper and its oracle (decoder and shaper), fed the same messages."""

    def __init__(self, view: str, tables: dict[str, tuple[str, ...]]) -> None:
        self.native = _native.Shaper(
            view_type=view, region="eu-west-1", namespace="ns", slot="s1", error=DecodeError
        )
        self.tables = tables
        self.oracle = Shaper(
            tables={t: Table(t, key) for t, key in tables.items()},
            view_type=view,
            region="eu-west-1",
            namespace="ns",
            slot="s1",
        )
        self.decoder = Decoder()
        self.changes: list[Change] = []

    def relation(self, message: bytes) -> Relation:
        rel = self.decoder.feed(message)
        assert isinstance(rel, Relation)
        key = self.tables.get(rel.qualified)
        self.native.relation(
            rel.oid, rel.qualified, [(c.name, c.type_oid) for c in rel.columns], key and list(key)
        )
        return rel

    def change(self, message: bytes) -> None:
        change = self.decoder.feed(message)
        assert isinstance(change, Change)
        if change.relation.qualified in self.tables:
            self.changes.append(change)
        self.native.change(message)

    def commit(self, lsn: int, timestamp: float) -> list[tuple[str, str, bytes]]:
        expected = []
        for i, change in enumerate(self.changes):
            sequence = sequence_number(lsn, i)
            partition, data = self.oracle.record(change, sequence=sequence, timestamp=timestamp)
            expected.append((sequence, partition, data))
        self.changes = []
        got = self.native.commit(lsn, timestamp)
        assert len(self.native) == 0
        for g, e in zip(got, expected, strict=True):
            assert g == e
        return got


def columns_of(rng: random.Random) -> list[tuple[str, int]]:
    names = ["id", "k2", *rng.sample(sorted(TYPES), 12), 'we"ird\\na\nme', "名前"]
    return [(name, TYPES.get(name, TYPES[rng.choice(["int4", "text", "uuid", "numeric"])])) for name in names]


@pytest.mark.parametrize("view", VIEWS)
def test_native_records_are_the_oracles_byte_for_byte(view: str) -> None:
    rng = random.Random(f"pg8-{view}")
    pair = Pair(view, {"public.kinds": ("id", "k2"), "app.one": ("名前",)})
    tables = {"public.kinds": (16500, "d"), "app.one": (16501, "f"), "public.other": (16502, "f")}
    cols = {}
    for name, (oid, identity) in tables.items():
        cols[name] = columns_of(rng)
        pair.relation(native_relation(oid, name, identity, cols[name]))
    shaped: list[bytes] = []
    for txn in range(400):
        for _ in range(rng.randrange(1, 12)):
            name = rng.choice(sorted(tables))
            oid, _ = tables[name]
            if (
                rng.random() < 0.02
            ):  # the table altered mid-transaction: its later changes have its new columns
                cols[name] = columns_of(rng)
                pair.relation(native_relation(oid, name, "f", cols[name]))
            row = [
                value(rng, next((t for t, o in TYPES.items() if o == type_oid), "text"))
                for _, type_oid in cols[name]
            ]
            old = [
                value(rng, "text") if v is None else v for v in row
            ]  # old rows: NULLs made values now and then
            if rng.random() < 0.05:
                row = row[: rng.randrange(len(row))]  # fewer columns than the relation has
            new: list[bytes | object | None] = [UNCHANGED_TOAST if rng.random() < 0.1 else v for v in row]
            key_only: list[bytes | object | None] = [
                v if c in ("id", "k2", "名前") else None for (c, _), v in zip(cols[name], old, strict=False)
            ]
            head = struct.pack("!I", oid)
            message = rng.choice(
                [
                    b"I" + head + b"N" + tup(list(row)),
                    b"U" + head + b"N" + tup(new),
                    b"U" + head + b"K" + tup(key_only) + b"N" + tup(new),
                    b"U" + head + b"O" + tup(list(old)) + b"N" + tup(new),
                    b"D" + head + b"K" + tup(key_only),
                    b"D" + head + b"O" + tup(list(old)),
                ]
            )
            pair.change(message)
        records = pair.commit((txn + 1) << 24 | rng.randrange(1 << 24), 1800000000 + rng.random() * 1e6)
        shaped += [data for _, _, data in records]
    assert len(shaped) > 1000
    # What the generated rows covered (a test that shapes only the easy cases would pass as well).
    every = b"\n".join(shaped)
    seen = [b'"eventName":"INSERT"', b'"eventName":"MODIFY"', b'"eventName":"REMOVE"', b'{"NULL":true}']
    if view != "KEYS_ONLY":
        seen += [b'{"M":{', b'{"L":[', b'{"B":"', b'{"BOOL":', b'{"S":"NaN"}', "\ufffd".encode(), b"\\u0001"]
    if view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        seen.append(b'"OldImage":')
    assert [s for s in seen if s not in every] == []
    records = pair.commit(1 << 40, 0.0)
    assert records == []


def test_records_are_json_and_the_partition_is_the_table_and_its_key() -> None:
    pair = Pair("NEW_AND_OLD_IMAGES", {"public.t": ("id", "name")})
    pair.relation(
        native_relation(7, "public.t", "f", [("id", 23), ("name", 25), ("doc", 3802), ("tags", 1009)])
    )
    pair.change(b"I" + struct.pack("!I", 7) + b"N" + tup([b"1", b"ann", b'{"a": [1, 2.5]}', b'{x,"y z"}']))
    pair.change(b"D" + struct.pack("!I", 7) + b"O" + tup([b"1", b"ann", None, b"{}"]))
    (sequence, partition, data), (_, _, removed) = pair.commit(0x1508888, 1800000000.75)
    assert (sequence, partition) == ("0000000000002205504800000000", "public.t\x001\x00ann")
    record = json.loads(data)
    assert record["dynamodb"]["NewImage"] == {
        "id": {"N": "1"},
        "name": {"S": "ann"},
        "doc": {"M": {"a": {"L": [{"N": "1"}, {"N": "2.5"}]}}},
        "tags": {"L": [{"S": "x"}, {"S": "y z"}]},
    }
    assert record["dynamodb"]["ApproximateCreationDateTime"] == 1800000000
    assert json.loads(removed)["dynamodb"]["OldImage"]["doc"] == {"NULL": True}


def test_changes_of_tables_not_streamed_are_left_out_and_a_discard_forgets() -> None:
    native = _native.Shaper(view_type="KEYS_ONLY", region="r", namespace="n", slot="s", error=DecodeError)
    native.relation(1, "public.a", [("id", 23)], ["id"])
    native.relation(2, "public.b", [("id", 23)], None)
    native.change(b"I" + struct.pack("!I", 2) + b"N" + tup([b"1"]))
    assert len(native) == 0
    native.change(b"I" + struct.pack("!I", 1) + b"N" + tup([b"1"]))
    assert len(native) == 1
    native.discard()
    assert native.commit(1, 0.0) == []


def test_values_the_oracle_cannot_encode() -> None:
    """Where the Python oracle raises (PostgreSQL never sends these): a lone surrogate in JSON is a string, a
    bytea value that is not hexadecimal an error naming it."""
    native = _native.Shaper(view_type="NEW_IMAGE", region="r", namespace="n", slot="s", error=DecodeError)
    native.relation(1, "public.a", [("id", 23), ("j", 3802), ("b", 17)], ["id"])
    native.change(b"I" + struct.pack("!I", 1) + b"N" + tup([b"1", b'"\\ud800"', b"\\x00"]))
    ((_, _, data),) = native.commit(1, 0.0)
    assert json.loads(data)["dynamodb"]["NewImage"]["j"] == {"S": '"\\ud800"'}
    with pytest.raises(DecodeError, match=r"bytea value \\xzz is not hexadecimal"):
        native.change(b"I" + struct.pack("!I", 1) + b"N" + tup([b"1", None, b"\\xzz"]))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"I\0\0", "message too short"),
        (
            b"I" + struct.pack("!I", 9) + b"N" + tup([b"1"]),
            "change of relation 9 before its Relation message",
        ),
        (b"I" + struct.pack("!I", 1) + b"X" + tup([b"1"]), "insert without new tuple \\(b'X'\\)"),
        (
            b"U" + struct.pack("!I", 1) + b"K" + tup([b"1"]) + b"Q",
            "update without new tuple \\(b'Q'\\)",
        ),
        (b"D" + struct.pack("!I", 1) + b"N" + tup([b"1"]), "delete without old tuple \\(b'N'\\)"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"z", "unknown tuple column kind b'z'"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 2) + b"t\0\0\0\x05ab", "message too short"),
        (
            b"I" + struct.pack("!I", 2) + b"N" + tup([b"1"]),
            "table public.b has no column id of its primary key",
        ),
        (b"B" + bytes(20), "not a row change: message b'B'"),
    ],
)
def test_malformed_messages_are_clear_errors(message: bytes, error: str) -> None:
    native = _native.Shaper(view_type="NEW_IMAGE", region="r", namespace="n", slot="s", error=DecodeError)
    native.relation(1, "public.a", [("id", 23)], ["id"])
    native.relation(2, "public.b", [("other", 23)], ["id"])
    with pytest.raises(DecodeError, match=error):
        native.change(message)
    assert len(native) == 0
