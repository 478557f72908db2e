"""The Python runtime's event decoder (runtime-images/python/bootstrap.py): orjson from the runtime's private folder,
with json.loads' result, or json.loads' own error, for every input; and out of the handler's sight.

orjson is the one hack/python-runtime.sh installs for this Python (kubelambda.runtimes.python_runtime_dir).
"""

from __future__ import annotations

import gc
import json
import random
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kubelambda.runtimes import python_runtime_dir

Loads = Callable[[bytes], Any]


@pytest.fixture(scope="module")
def vendor() -> Path:
    folder = python_runtime_dir() / "_vendor" / "python{}.{}".format(*sys.version_info[:2])
    assert (folder / "orjson").is_dir(), f"hack/python-runtime.sh installed no orjson in {folder}"
    return folder


@pytest.fixture(scope="module")
def orjson_loads(bootstrap: ModuleType, vendor: Path) -> Loads:
    loads = bootstrap.load_orjson(str(vendor))
    assert loads is not None
    return loads  # type: ignore[no-any-return]


def outcome(decode: Loads, body: bytes) -> tuple[str, str]:
    """What a handler can see of a decode: the value (repr tells 1 from 1.0, -0.0 from 0.0, nan, lone surrogates)
    or the exception's type and message."""
    try:
        return "value", repr(decode(body))
    except Exception as e:
        return type(e).__name__, str(e)


# What json.loads accepts and orjson refuses or reads otherwise, beside ordinary input.
EDGES = {
    "integer beyond 64 bits": b"18446744073709551616",
    "2**64 - 1": b"18446744073709551615",
    "below -2**63": b"-9223372036854775809",
    "-2**63": b"-9223372036854775808",
    "long integer in an object, after a space": b'{"a": 123456789012345678901234567890}',
    "long negative integer in a list": b"[1,-123456789012345678901234567890]",
    "long integer after whitespace": b" \r\n\t123456789012345678901234567890",
    "long integer, 5000 digits (json's own limit)": b"1" * 5000,
    "long digits in a string": b'{"SequenceNumber":"000000000000000000000000001"}',
    "NaN": b"NaN",
    "Infinity": b'{"a": [Infinity, -Infinity]}',
    "beyond a double": b"[1e400, -1e400]",
    "below a double": b"[1e-400, 1e-1234567890123456789]",
    "lone surrogate escape": b'"\\ud800"',
    "lone low surrogate escape": b'["\\udc00x"]',
    "surrogate pair escape": b'"\\ud83d\\ude00"',
    "UTF-8 encoded surrogate": b'"\xed\xa0\x80"',
    "UTF-8 BOM": b'\xef\xbb\xbf{"a": 1}',
    "UTF-16": '{"a": "\u00e9"}'.encode("utf-16"),
    "UTF-16-LE without BOM": '{"a": 1}'.encode("utf-16-le"),
    "UTF-32": '["x"]'.encode("utf-32"),
    "UTF-32-BE without BOM": b"[1]".decode().encode("utf-32-be"),
    "deeper than orjson's 1024": b"[" * 1100 + b"]" * 1100,
    "deeper than json's recursion limit": b"[" * 100_000 + b"]" * 100_000,
    "duplicate keys": b'{"a": 1, "b": 2, "a": 3}',
    "-0 and -0.0": b"[-0, -0.0, 0.0, 0e0]",
    "halfway float": b"1.00000000000000011102230246251565404236316680908203125",
    "smallest subnormal": b"[5e-324, 2.2250738585072011e-308, 1.7976931348623157e308]",
    "big exponents": b"[1E+2, 1e-2, 12.5e1]",
    "non-ASCII": '{"k\u00e9": "\u4e2d\U0001f600"}'.encode(),
    "noncharacter": b'"\xef\xbf\xbe"',
    "DEL in a string": b'"a\x7fb"',
    "raw control character": b'"a\x1fb"',
    "raw NUL": b'"a\x00b"',
    "invalid UTF-8": b'"\xff"',
    "NBSP before": b"\xc2\xa01",
    "form feed before": b"\x0c1",
    "empty": b"",
    "blank": b"  ",
    "trailing comma": b"[1,]",
    "trailing data": b"123abc",
    "leading zero": b"01",
    "unfinished": b'{"a": ',
    "bad escape": b'"\\x"',
    "true false null": b"[true, false, null]",
}


@pytest.mark.parametrize("body", EDGES.values(), ids=EDGES.keys())
def test_decode_is_json_loads(bootstrap: ModuleType, orjson_loads: Loads, body: bytes) -> None:
    assert outcome(lambda b: bootstrap.decode(b, orjson_loads), body) == outcome(json.loads, body)


@pytest.mark.parametrize(
    "body",
    [
        EDGES["integer beyond 64 bits"],
        EDGES["below -2**63"],
        EDGES["long integer in an object, after a space"],
    ],
)
def test_orjson_alone_reads_long_integers_as_floats(orjson_loads: Loads, body: bytes) -> None:
    """Why long integers never reach orjson: it would give the handler a float."""
    assert isinstance(orjson_loads(body.lstrip(b'{"a": ').rstrip(b"}")), float)
    assert outcome(orjson_loads, body) != outcome(json.loads, body)


def stream_event(records: int) -> bytes:
    """DynamoDB stream records as the PostgreSQL bridge sends them (bench/agent_bench.py's shape)."""
    return json.dumps(
        {
            "Records": [
                {
                    "eventID": f"{i:032x}",
                    "eventName": "INSERT",
                    "dynamodb": {
                        "ApproximateCreationDateTime": 1796510000.5,
                        "Keys": {"id": {"N": str(i)}},
                        "NewImage": {"id": {"N": str(i)}, "body": {"S": "payload \u00e9"}},
                        "SequenceNumber": f"{i:021d}",
                        "SizeBytes": 100 + i,
                    },
                }
                for i in range(records)
            ]
        }
    ).encode()


def test_ordinary_events_are_decoded_by_orjson_with_the_gc_paused(
    bootstrap: ModuleType, orjson_loads: Loads
) -> None:
    seen: list[bool] = []

    def native(body: bytes) -> Any:
        seen.append(gc.isenabled())
        return orjson_loads(body)

    body = stream_event(200)
    assert gc.isenabled()
    assert bootstrap.decode(body, native) == json.loads(body)
    assert seen == [False]  # orjson ran, with the cyclic GC paused
    assert gc.isenabled()  # and on again
    gc.disable()
    try:
        bootstrap.decode(body, native)
        assert not gc.isenabled()  # a handler's gc.disable() is its own
    finally:
        gc.enable()
    seen.clear()
    bootstrap.decode(EDGES["long integer in an object, after a space"], native)
    assert seen == []  # straight to json.loads


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:  # integers around every boundary orjson has
        edge = rng.choice([0, 2**31, 2**53, 2**63, 2**64, 10**30])
        return rng.choice([1, -1]) * (edge + rng.randint(-3, 3))
    if kind == 2:
        return rng.randint(-(10**6), 10**6)
    if kind == 3:  # any finite double, from its bits
        value = struct.unpack("<d", rng.randbytes(8))[0]
        return value if value == value and abs(value) != float("inf") else rng.random()
    if kind == 4:
        return rng.random() * 10 ** rng.randint(-30, 30)
    if kind == 5:
        alphabet = [
            "a",
            "\u00e9",
            "\u4e2d",
            "\U0001f600",
            '"',
            "\\",
            "\n",
            "\x00",
            "\x1f",
            "\ud800",
            "\udfff",
            "/",
        ]
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["a", "b", "\u00e9", "", "\ud800"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_document(rng: random.Random) -> bytes:
    """A random value as json.dumps writes it, in some way json.loads reads."""
    text = json.dumps(
        random_value(rng),
        ensure_ascii=rng.random() < 0.5,
        indent=rng.choice([None, 0, 2]),
        separators=rng.choice([None, (",", ":"), (" , ", " : ")]),
    )
    encoding = rng.choice(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32-le"])
    return text.encode(encoding, "surrogatepass")


def test_random_documents_decode_as_json_loads(bootstrap: ModuleType, orjson_loads: Loads) -> None:
    rng = random.Random(1796510000)
    native = 0

    def counted(body: bytes) -> Any:
        nonlocal native
        native += 1
        return orjson_loads(body)

    for _ in range(3000):
        body = random_document(rng)
        assert outcome(lambda b: bootstrap.decode(b, counted), body) == outcome(json.loads, body), body
    assert native > 1000  # most of them reached orjson


def mutations(rng: random.Random, count: int) -> Iterator[bytes]:
    """Valid documents with a few bytes replaced, inserted or removed: mostly invalid, some oddly valid."""
    pieces = [b"-", b"0", b"9", b"e", b"E", b".", b"+", b",", b":", b"[", b"]", b"{", b"}", b'"', b"\\", b"u"]
    pieces += [b" ", b"\t", b"\x0b", b"\x00", b"\xff", b"\xc3", b"\xa9", b"d8", b"NaN", b"1" * 20, b"true"]
    for _ in range(count):
        body = bytearray(random_document(rng))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body) + 1)
            op = rng.randrange(3)
            if op == 0:
                body[at:at] = rng.choice(pieces)
            elif op == 1:
                body[at : at + 1] = rng.choice(pieces)
            else:
                del body[at : at + rng.randint(1, 3)]
        yield bytes(body)


def test_mutated_documents_decode_or_fail_as_json_loads(bootstrap: ModuleType, orjson_loads: Loads) -> None:
    for body in mutations(random.Random(20261206), 5000):
        assert outcome(lambda b: bootstrap.decode(b, orjson_loads), body) == outcome(json.loads, body), body


def test_random_number_tokens(bootstrap: ModuleType, orjson_loads: Loads) -> None:
    """Decimal numbers of up to 40 digits and any exponent, rounded as json.loads (float()) rounds them."""
    rng = random.Random(7)
    for _ in range(5000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
        token = rng.choice(["", "-"]) + (digits.lstrip("0") or "0")
        if rng.random() < 0.7:
            token += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
        if rng.random() < 0.5:
            token += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 400))
        body = f'{{"n": [{token}, {token}]}}'.encode()
        assert outcome(lambda b: bootstrap.decode(b, orjson_loads), body) == outcome(json.loads, body), body


def test_event_decoder_uses_orjson_only_for_large_events(bootstrap: ModuleType, vendor: Path) -> None:
    decoder = bootstrap.EventDecoder(str(vendor), min_bytes=1000)
    small, large = stream_event(1), stream_event(100)
    assert decoder(small) == json.loads(small)
    assert decoder._native is None  # not even loaded: a cold start does not pay for its import
    assert decoder(large) == json.loads(large)
    assert decoder._native is not None
    assert "orjson" not in sys.modules


def test_without_orjson_events_are_decoded_by_json_silently(
    bootstrap: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decoder = bootstrap.EventDecoder(str(tmp_path / "none"), min_bytes=0)
    body = stream_event(3)
    assert decoder(body) == json.loads(body)
    assert capsys.readouterr().out == ""


def test_a_broken_orjson_is_logged_and_json_decodes(
    bootstrap: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "orjson").mkdir()
    (tmp_path / "orjson" / "__init__.py").write_text("raise ImportError('built for another Python')\n")
    assert bootstrap.load_orjson(str(tmp_path)) is None
    assert "orjson in" in capsys.readouterr().out
    assert "orjson" not in sys.modules
    assert str(tmp_path) not in sys.path


def test_loading_orjson_leaves_no_trace_for_handlers(bootstrap: ModuleType, vendor: Path) -> None:
    path, importers = sys.path[:], set(sys.path_importer_cache)
    handlers_own = ModuleType("orjson")  # a handler's orjson, imported before ours was
    sys.modules["orjson"] = handlers_own
    try:
        loads = bootstrap.load_orjson(str(vendor))
        assert loads is not None
        assert loads(b'{"a": [1]}') == {"a": [1]}
        assert sys.modules["orjson"] is handlers_own
    finally:
        del sys.modules["orjson"]
    assert sys.path == path
    assert not [k for k in set(sys.path_importer_cache) - importers if str(vendor) in k]
    assert not [name for name in sys.modules if name.startswith("orjson")]
    with pytest.raises(ImportError):
        import orjson  # type: ignore[import-not-found]  # noqa: F401
