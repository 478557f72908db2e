"""Pure parts of the PostgreSQL change stream: ``pgoutput`` messages and DynamoDB Streams records.

``pgoutput`` (protocol version 1, text values) is PostgreSQL's own logical decoding output, documented in
"Logical Replication Message Formats". Nothing here talks to a server: :class:`Decoder` turns the payload of
each replication message into events, :class:`Shaper` turns the row changes of a committed transaction into
DynamoDB Streams records (``eventName`` INSERT / MODIFY / REMOVE, ``dynamodb.Keys``, ``NewImage``,
``OldImage`` as typed attribute values).

The bridge decodes and shapes row changes natively (:class:`kubelambda._native.Shaper`, native/src/lib.rs: a
few µs of Python per change were most of its CPU); it uses :class:`Decoder` for the other messages (Begin,
Commit, Relation, Truncate). :class:`Shaper` is the native code's test oracle (tests/unit/test_pgoutput.py:
the same bytes for the same messages): a change of the records' shape is made in both.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from json.encoder import encode_basestring
from typing import Any

from kubelambda.jsonobj import JSON

PG_EPOCH = 946684800.0
"""2000-01-01T00:00:00Z in Unix seconds: PostgreSQL's timestamps count microseconds from there."""

UNCHANGED_TOAST = object()
"""A column value pgoutput leaves out: a TOASTed value an UPDATE did not change (without REPLICA IDENTITY FULL
the server does not send it)."""

BOOL = 16
BYTEA = 17
NUMBERS = {20, 21, 23, 26, 700, 701, 1700}  # int8 int2 int4 oid float4 float8 numeric
JSONS = {114, 3802}  # json jsonb
ARRAYS: dict[int, int] = {
    1000: BOOL,  # _bool
    1005: 21,  # _int2
    1007: 23,  # _int4
    1016: 20,  # _int8
    1021: 700,  # _float4
    1022: 701,  # _float8
    1231: 1700,  # _numeric
    1009: 25,  # _text
    1015: 1043,  # _varchar
    1014: 1042,  # _bpchar
    2951: 2950,  # _uuid
    199: 114,  # _json
    3807: 3802,  # _jsonb
}


class DecodeError(ValueError):
    """A replication message this decoder does not understand."""


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str
    """``d`` default (primary key), ``f`` full, ``i`` an index, ``n`` nothing."""
    columns: tuple[Column, ...]

    @functools.cached_property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @functools.cached_property
    def types(self) -> dict[str, int]:
        """Column name → type OID."""
        return {c.name: c.type_oid for c in self.columns}


Tuple = list[Any]
"""Column values in the relation's order: ``str`` (text format), ``None`` (NULL) or :data:`UNCHANGED_TOAST`."""


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    """The LSN of the transaction's commit record."""
    timestamp: float
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    """Where the transaction ends: confirming this LSN tells the server the transaction is done."""
    timestamp: float


@dataclass(frozen=True)
class Change:
    kind: str
    """``INSERT``, ``MODIFY`` or ``REMOVE``."""
    relation: Relation
    new: Tuple | None
    old: Tuple | None
    old_is_full: bool
    """The old tuple has every column (REPLICA IDENTITY FULL), not only the key."""


@dataclass(frozen=True)
class Truncate:
    relations: tuple[Relation, ...]


Event = Begin | Commit | Change | Truncate | Relation | None


_STRUCTS: dict[str, struct.Struct] = {}
_SIZE = struct.Struct("!I")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        compiled = _STRUCTS.get(fmt)
        if compiled is None:
            compiled = _STRUCTS[fmt] = struct.Struct(fmt)
        if self.at + compiled.size > len(self.data):
            raise DecodeError("message too short")
        (value,) = compiled.unpack_from(self.data, self.at)
        self.at += compiled.size
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise DecodeError("unterminated string")
        text = self.data[self.at : end].decode("utf-8", errors="replace")
        self.at = end + 1
        return text

    def tuple(self) -> Tuple:
        n = self.take("!h")
        data, at, end = self.data, self.at, len(self.data)
        values: Tuple = []
        for _ in range(n):
            if at >= end:
                raise DecodeError("message too short")
            kind = data[at]
            at += 1
            if kind == 0x74:  # t: text
                if at + 4 > end:
                    raise DecodeError("message too short")
                (size,) = _SIZE.unpack_from(data, at)
                at += 4
                if at + size > end:
                    raise DecodeError("message too short")
                values.append(data[at : at + size].decode("utf-8", "replace"))
                at += size
            elif kind == 0x6E:  # n: NULL
                values.append(None)
            elif kind == 0x75:  # u: unchanged TOAST
                values.append(UNCHANGED_TOAST)
            else:
                raise DecodeError(f"unknown tuple column kind {bytes([kind])!r}")
        self.at = at
        return values


def pg_time(micros: int) -> float:
    return PG_EPOCH + micros / 1e6


@dataclass
class Decoder:
    """Decodes pgoutput messages; remembers the Relation messages the server sends before a table's first change."""

    relations: dict[int, Relation] = field(default_factory=dict)

    def feed(self, payload: bytes) -> Event:
        r = _Reader(payload)
        tag = r.take("!c")
        if tag == b"B":
            final_lsn, ts, xid = r.take("!Q"), r.take("!q"), r.take("!I")
            return Begin(final_lsn, pg_time(ts), xid)
        if tag == b"C":
            r.take("!b")
            commit_lsn, end_lsn, ts = r.take("!Q"), r.take("!Q"), r.take("!q")
            return Commit(commit_lsn, end_lsn, pg_time(ts))
        if tag == b"R":
            oid = r.take("!I")
            schema, name = r.string() or "pg_catalog", r.string()
            identity = r.take("!c").decode()
            columns = []
            for _ in range(r.take("!h")):
                flags = r.take("!b")
                col = r.string()
                type_oid = r.take("!I")
                r.take("!i")  # type modifier
                columns.append(Column(col, type_oid, bool(flags & 1)))
            rel = Relation(oid, schema, name, identity, tuple(columns))
            self.relations[oid] = rel
            return rel
        if tag in (b"I", b"U", b"D"):
            rel = self._relation(r.take("!I"))
            old: Tuple | None = None
            full = False
            marker = r.take("!c")
            if tag == b"I":
                if marker != b"N":
                    raise DecodeError(f"insert without new tuple ({marker!r})")
                return Change("INSERT", rel, r.tuple(), None, False)
            if marker in (b"K", b"O"):
                old = r.tuple()
                full = marker == b"O"
                if tag == b"U":
                    marker = r.take("!c")
            if tag == b"D":
                return Change("REMOVE", rel, None, old, full)
            if marker != b"N":
                raise DecodeError(f"update without new tuple ({marker!r})")
            return Change("MODIFY", rel, r.tuple(), old, full)
        if tag == b"T":
            n = r.take("!i")
            r.take("!b")
            return Truncate(tuple(self._relation(r.take("!I")) for _ in range(n)))
        # Type, Origin, logical Message: nothing a change stream delivers.
        return None

    def _relation(self, oid: int) -> Relation:
        rel = self.relations.get(oid)
        if rel is None:
            raise DecodeError(f"change of relation {oid} before its Relation message")
        return rel


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


class _Num(str):
    """A JSON number kept as its text (DynamoDB ``N`` values are strings)."""


def _json_attr(value: Any) -> JSON:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, _Num):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [_json_attr(v) for v in value]}
    return {"M": {str(k): _json_attr(v) for k, v in value.items()}}


def _number(text: str) -> JSON:
    # DynamoDB numbers are finite: NaN and ±Infinity (float, numeric) are delivered as strings.
    if text in ("NaN", "Infinity", "-Infinity"):
        return {"S": text}
    return {"N": text}


def parse_array(text: str) -> list[str | None] | None:
    """A one-dimensional array literal (``{a,"b c",NULL}``) as its elements; None for anything else
    (several dimensions, explicit bounds)."""
    if not (text.startswith("{") and text.endswith("}")) or text.startswith("{{"):
        return None
    body = text[1:-1]
    if not body:
        return []
    out: list[str | None] = []
    i = 0
    while i <= len(body):
        if i < len(body) and body[i] == '"':
            i += 1
            chars: list[str] = []
            while i < len(body) and body[i] != '"':
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                chars.append(body[i])
                i += 1
            out.append("".join(chars))
            i += 1  # closing quote
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            raw = body[i:end]
            out.append(None if raw == "NULL" else raw)
            i = end
        if i < len(body) and body[i] != ",":
            return None
        i += 1
    return out


def attribute(type_oid: int, text: str | None) -> JSON:
    """One column's text value as a DynamoDB attribute value."""
    if text is None:
        return {"NULL": True}
    if type_oid == BOOL:
        return {"BOOL": text == "t"}
    if type_oid in NUMBERS:
        return _number(text)
    if type_oid == BYTEA and text.startswith("\\x"):
        return {"B": base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")}
    if type_oid in JSONS:
        try:
            return _json_attr(json.loads(text, parse_float=_Num, parse_int=_Num))
        except ValueError:
            return {"S": text}
    element = ARRAYS.get(type_oid)
    if element is not None:
        items = parse_array(text)
        if items is not None:
            return {"L": [attribute(element, item) for item in items]}
    return {"S": text}


@dataclass(frozen=True)
class Table:
    """What the bridge learned about a table at start: its primary key columns, in key order."""

    qualified: str
    key: tuple[str, ...]


def sequence_number(commit_lsn: int, index: int) -> str:
    """28 digits, increasing in commit order: the commit's LSN, then the change's place in its transaction."""
    return f"{commit_lsn:020d}{index:08d}"


_NULL = b'{"NULL":true}'
_TRUE, _FALSE = b'{"BOOL":true}', b'{"BOOL":false}'
_NOT_FINITE = frozenset(("NaN", "Infinity", "-Infinity"))
_NEW_VIEWS = frozenset(("NEW_IMAGE", "NEW_AND_OLD_IMAGES"))


def _json_string(text: str) -> bytes:
    """``text`` as a JSON string (what ``_encode`` writes for it: UTF-8, only what JSON must escape)."""
    return encode_basestring(text).encode()


def _number_bytes(text: str) -> bytes:
    if text in _NOT_FINITE:
        return b'{"S":"%s"}' % text.encode()
    return b'{"N":"%s"}' % text.encode()  # a number's text needs no escaping


def _string_bytes(text: str) -> bytes:
    return b'{"S":' + _json_string(text) + b"}"


def _column_encoder(type_oid: int) -> Any:
    """A column's text value → its DynamoDB attribute value as JSON bytes (the same bytes as
    ``_encode(attribute(type_oid, text))``, without building the dict for the common types)."""
    if type_oid in NUMBERS:
        return _number_bytes
    if type_oid == BOOL:
        return lambda text: _TRUE if text == "t" else _FALSE
    if type_oid in JSONS or type_oid in ARRAYS or type_oid == BYTEA:
        return lambda text: _encode(attribute(type_oid, text))
    return _string_bytes


class _Plan:
    """How one relation's tuples become JSON: each column's ``"name":`` prefix and value encoder, the key's
    column positions (built once per Relation message)."""

    def __init__(self, rel: Relation, table: Table) -> None:
        self.qualified = rel.qualified
        position = {c.name: i for i, c in enumerate(rel.columns)}
        missing = [k for k in table.key if k not in position]
        if missing:
            raise DecodeError(f"table {rel.qualified} has no column {', '.join(missing)} of its primary key")
        self.key_indexes = [position[k] for k in table.key]
        self.key_columns = [
            (_json_string(k) + b":", _column_encoder(rel.columns[position[k]].type_oid)) for k in table.key
        ]
        self.columns = [(_json_string(c.name) + b":", _column_encoder(c.type_oid)) for c in rel.columns]

    def keys(self, values: Sequence[Any]) -> bytes:
        return (
            b"{"
            + b",".join(
                prefix + (encode(v) if isinstance(v, str) else _NULL)
                for (prefix, encode), v in zip(self.key_columns, values, strict=True)
            )
            + b"}"
        )

    def image(self, values: Sequence[Any]) -> bytes:
        """The typed image of a tuple; unchanged TOASTed values are left out (as the column were not there)."""
        return (
            b"{"
            + b",".join(
                prefix + (_NULL if v is None else encode(v))
                for (prefix, encode), v in zip(self.columns, values, strict=False)
                if v is not UNCHANGED_TOAST
            )
            + b"}"
        )


@dataclass
class Shaper:
    """Turns row changes into DynamoDB Streams records (the ``Records[]`` elements of the Lambda event)."""

    tables: dict[str, Table]
    view_type: str
    region: str
    namespace: str
    slot: str
    warned_toast: set[str] = field(default_factory=set)
    _envelopes: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)
    _plans: dict[int, tuple[Relation, _Plan]] = field(default_factory=dict)
    """Relation OID → the Relation a plan was built for, and the plan."""

    def __post_init__(self) -> None:
        self._slot_prefix = f"{self.slot}:".encode()
        """What each record's ``eventID`` hashes before its sequence number."""
        self._stamp: tuple[float, bytes] = (float("nan"), b"")
        """The last ``ApproximateCreationDateTime`` written, and its JSON."""

    def arn(self, table: str) -> str:
        return f"arn:kubelambda:postgres:{self.region}:{self.namespace}:table/{table}/stream/{self.slot}"

    def record(self, change: Change, *, sequence: str, timestamp: float) -> tuple[str, bytes]:
        """``(partition key, the record as JSON)`` of one change; the partition key is the table and its key
        values. The record is written as JSON bytes directly, column by column (:class:`_Plan`), and measured
        (``SizeBytes``) on the way."""
        rel = change.relation
        cached = self._plans.get(rel.oid)
        if cached is not None and cached[0] is rel:
            plan = cached[1]
        else:  # a table's first change, or its first after a new Relation message (its columns changed)
            table = self.tables.get(rel.qualified)
            if table is None:
                raise DecodeError(f"a change of table {rel.qualified}, which this Trigger does not stream")
            plan = _Plan(rel, table)
            self._plans[rel.oid] = (rel, plan)
        new, old = change.new, change.old
        if new is not None and old is not None and change.old_is_full and UNCHANGED_TOAST in new:
            # Unchanged TOASTed values are not in the new tuple; with REPLICA IDENTITY FULL the old one has them.
            new = [o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=False)]
        values = new if new is not None else old
        assert values is not None
        n = len(values)
        key_values = [values[i] if i < n else None for i in plan.key_indexes]
        keys_json = plan.keys(key_values)
        images = []
        if new is not None and self.view_type in _NEW_VIEWS:
            images += [b',"NewImage":', self._typed(plan, new)]
        if (
            old is not None
            and change.old_is_full
            and self.view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES")
            and change.kind != "INSERT"
        ):
            images += [b',"OldImage":', self._typed(plan, old)]
        partition = rel.qualified + "\x00" + "\x00".join(v if isinstance(v, str) else "" for v in key_values)
        return partition, self._finish(rel, change.kind, keys_json, images, sequence, timestamp)

    def _finish(
        self, rel: Relation, kind: str, keys_json: bytes, images: list[bytes], sequence: str, timestamp: float
    ) -> bytes:
        """The record around its ``Keys`` and images (``images``: each image's ``,"NewImage":`` and its JSON)."""
        size = len(keys_json)
        for image in images[1::2]:
            size += len(image)
        seq = sequence.encode()
        head, tail = self._envelope(rel.qualified, kind)
        if timestamp != self._stamp[0]:  # the same for every change of a transaction
            self._stamp = (timestamp, b"%d" % int(timestamp))
        return b"".join(
            [
                b'{"eventID":"',
                blake2b(self._slot_prefix + seq, digest_size=16).hexdigest().encode(),
                head,
                self._stamp[1],
                b',"Keys":',
                keys_json,
                *images,
                b',"SequenceNumber":"',
                seq,
                b'","SizeBytes":',
                b"%d" % size,
                tail,
            ]
        )

    def _typed(self, plan: _Plan, values: Sequence[Any]) -> bytes:
        if UNCHANGED_TOAST in values:
            self.warned_toast.add(plan.qualified)
        return plan.image(values)

    def _envelope(self, table: str, kind: str) -> tuple[bytes, bytes]:
        """The parts of a record that are the same for every change of a kind of a table (JSON-escaped once):
        from the end of ``eventID`` to ``ApproximateCreationDateTime``'s value, and from ``SizeBytes``' value
        to the end."""
        cached = self._envelopes.get((table, kind))
        if cached is None:
            head = (
                b'","eventName":"%s","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":%s,'
                b'"dynamodb":{"ApproximateCreationDateTime":' % (kind.encode(), _encode(self.region))
            )
            tail = b',"StreamViewType":"%s"},"eventSourceARN":%s}' % (
                self.view_type.encode(),
                _encode(self.arn(table)),
            )
            cached = self._envelopes[(table, kind)] = (head, tail)
        return cached


__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "Change",
    "Commit",
    "DecodeError",
    "Decoder",
    "Relation",
    "Shaper",
    "Table",
    "Truncate",
    "attribute",
    "parse_array",
    "sequence_number",
]
