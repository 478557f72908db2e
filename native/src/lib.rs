//! The PostgreSQL change stream's hot path (`kubelambda._native`): pgoutput Insert/Update/Delete messages of a
//! streamed table decoded with the table's plan and written as DynamoDB Streams records (JSON bytes), byte for
//! byte what `kubelambda.bridge.streams._pgoutput.Shaper` writes (that Python code is this module's test oracle,
//! tests/unit/test_pgoutput.py).
//!
//! Python keeps the rest of the protocol (Begin, Commit, Relation, Truncate: a few per transaction) and the stream
//! semantics; per row change it makes one call, `Shaper.change(payload)`, and per transaction one,
//! `Shaper.commit(final_lsn, timestamp)`, which hands back each record's sequence number, partition key and JSON.

use std::collections::HashMap;
use std::fmt::Write as _;

use blake2::{Blake2b128, Digest};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyType};

/// PostgreSQL type OIDs (as `_pgoutput.py`).
const BOOL: u32 = 16;
const BYTEA: u32 = 17;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Number,
    Bool,
    Bytea,
    Json,
    Text,
    /// A one-dimensional array of the element kind (an element is never an array or bytea).
    Array(Elem),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Elem {
    Number,
    Bool,
    Json,
    Text,
}

fn elem_kind(type_oid: u32) -> Elem {
    match kind_of(type_oid) {
        Kind::Number => Elem::Number,
        Kind::Bool => Elem::Bool,
        Kind::Json => Elem::Json,
        _ => Elem::Text,
    }
}

fn kind_of(type_oid: u32) -> Kind {
    match type_oid {
        BOOL => Kind::Bool,
        BYTEA => Kind::Bytea,
        20 | 21 | 23 | 26 | 700 | 701 | 1700 => Kind::Number, // int8 int2 int4 oid float4 float8 numeric
        114 | 3802 => Kind::Json,                              // json jsonb
        1000 => Kind::Array(elem_kind(BOOL)),
        1005 => Kind::Array(elem_kind(21)),
        1007 => Kind::Array(elem_kind(23)),
        1016 => Kind::Array(elem_kind(20)),
        1021 => Kind::Array(elem_kind(700)),
        1022 => Kind::Array(elem_kind(701)),
        1231 => Kind::Array(elem_kind(1700)),
        1009 | 1015 | 1014 | 2951 => Kind::Array(Elem::Text), // _text _varchar _bpchar _uuid
        199 | 3807 => Kind::Array(Elem::Json),                // _json _jsonb
        _ => Kind::Text,
    }
}

const NULL: &[u8] = b"{\"NULL\":true}";

/// `s` as a JSON string, as Python's `json.encoder.encode_basestring` writes it (UTF-8 passes through; `"`, `\`
/// and the control characters are escaped).
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            let _ = write!(HexSink(out), "\\u{:04x}", b);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

struct HexSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HexSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A value's bytes as text, as Python's `bytes.decode("utf-8", "replace")`.
fn text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(value)
}

fn not_finite(s: &str) -> bool {
    matches!(s, "NaN" | "Infinity" | "-Infinity")
}

/// `{"N":"..."}`, or `{"S":"..."}` for what DynamoDB's numbers cannot hold (NaN, ±Infinity).
fn number(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(if not_finite(s) { b"{\"S\":" } else { b"{\"N\":" });
    json_string(out, s);
    out.push(b'}');
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(b"{\"S\":");
    json_string(out, s);
    out.push(b'}');
}

/// One column's text value as a DynamoDB attribute value (`_pgoutput.attribute`, encoded).
fn attribute(out: &mut Vec<u8>, kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        // A column's number is written as the server sent it (as the Python shaper does: a number's text needs
        // no escaping); in an array it is escaped like any string.
        Kind::Number => {
            out.extend_from_slice(if not_finite(value) { b"{\"S\":\"" } else { b"{\"N\":\"" });
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Kind::Bool => out.extend_from_slice(if value == "t" { b"{\"BOOL\":true}" } else { b"{\"BOOL\":false}" }),
        Kind::Bytea => match value.strip_prefix("\\x") {
            Some(hex) => {
                out.extend_from_slice(b"{\"B\":\"");
                base64(out, &from_hex(hex)?);
                out.extend_from_slice(b"\"}");
            }
            None => string(out, value),
        },
        Kind::Json => json_attribute(out, value),
        Kind::Array(elem) => match parse_array(value) {
            Some(items) => {
                out.extend_from_slice(b"{\"L\":[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match item {
                        None => out.extend_from_slice(NULL),
                        Some(s) => element(out, elem, s),
                    }
                }
                out.extend_from_slice(b"]}");
            }
            None => string(out, value),
        },
        Kind::Text => string(out, value),
    }
    Ok(())
}

fn element(out: &mut Vec<u8>, elem: Elem, value: &str) {
    match elem {
        Elem::Number => number(out, value),
        Elem::Bool => out.extend_from_slice(if value == "t" { b"{\"BOOL\":true}" } else { b"{\"BOOL\":false}" }),
        Elem::Json => json_attribute(out, value),
        Elem::Text => string(out, value),
    }
}

/// Python's `bytes.fromhex`: pairs of hex digits, ASCII whitespace allowed before each pair.
fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let b = hex.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 2);
    let mut i = 0;
    let digit = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        if matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            i += 1;
            continue;
        }
        match (digit(b[i]), b.get(i + 1).and_then(|&c| digit(c))) {
            (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
            _ => return Err(format!("bytea value \\x{hex} is not hexadecimal (at position {i})")),
        }
        i += 2;
    }
    Ok(out)
}

fn base64(out: &mut Vec<u8>, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        out.push(ALPHABET[(v >> 18) as usize & 63]);
        out.push(ALPHABET[(v >> 12) as usize & 63]);
        out.push(if n > 1 { ALPHABET[(v >> 6) as usize & 63] } else { b'=' });
        out.push(if n > 2 { ALPHABET[v as usize & 63] } else { b'=' });
    }
}

/// `_pgoutput.parse_array`: a one-dimensional array literal's elements (None: NULL), None for anything else.
/// Works on bytes: every character it looks for is ASCII, so UTF-8 sequences pass through whole.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    if !(text.starts_with('{') && text.ends_with('}')) || text.starts_with("{{") || text.len() < 2 {
        return None;
    }
    let body = &text.as_bytes()[1..text.len() - 1];
    let mut out = Vec::new();
    if body.is_empty() {
        return Some(out);
    }
    let n = body.len();
    let mut i = 0;
    while i <= n {
        if i < n && body[i] == b'"' {
            i += 1;
            let mut chars = Vec::new();
            while i < n && body[i] != b'"' {
                if body[i] == b'\\' && i + 1 < n {
                    i += 1;
                }
                chars.push(body[i]);
                i += 1;
            }
            // Only ASCII was taken out: still UTF-8.
            out.push(Some(String::from_utf8(chars).ok()?));
            i += 1; // closing quote
        } else {
            let end = body[i.min(n)..].iter().position(|&c| c == b',').map_or(n, |p| p + i);
            let raw = &body[i.min(n)..end];
            out.push(if raw == b"NULL" { None } else { Some(String::from_utf8(raw.to_vec()).ok()?) });
            i = end;
        }
        if i < n && body[i] != b',' {
            return None;
        }
        i += 1;
    }
    Some(out)
}

// JSON values (json, jsonb) as DynamoDB attribute values: what Python's `json.loads` (numbers kept as their
// text) and `_pgoutput._json_attr` make; text that is not JSON is a string (`{"S": text}`).

enum Json {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    List(Vec<Json>),
    /// Members in first-appearance order; a repeated name keeps its first place and its last value (a dict).
    Map(Vec<(String, Json)>),
}

const MAX_DEPTH: usize = 900;

struct JsonParser<'a> {
    s: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.at < self.s.len() && matches!(self.s[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        let c = *self.s.get(self.at)?;
        match c {
            b'{' => {
                self.at += 1;
                let mut members: Vec<(String, Json)> = Vec::new();
                let mut index: Option<HashMap<String, usize>> = None;
                self.ws();
                if self.s.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Some(Json::Map(members));
                }
                loop {
                    self.ws();
                    if self.s.get(self.at) != Some(&b'"') {
                        return None;
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.s.get(self.at) != Some(&b':') {
                        return None;
                    }
                    self.at += 1;
                    let value = self.value(depth + 1)?;
                    if members.len() >= 16 && index.is_none() {
                        index = Some(members.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect());
                    }
                    let found = match &index {
                        Some(map) => map.get(&key).copied(),
                        None => members.iter().position(|(k, _)| *k == key),
                    };
                    match found {
                        Some(i) => members[i].1 = value,
                        None => {
                            if let Some(map) = &mut index {
                                map.insert(key.clone(), members.len());
                            }
                            members.push((key, value));
                        }
                    }
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Some(Json::Map(members));
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Some(Json::List(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Some(Json::List(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => Some(Json::Str(self.string()?)),
            b'n' => self.literal(b"null", Json::Null),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'-' | b'0'..=b'9' => self.number(),
            // NaN and ±Infinity, which Python's json accepts, are not JSON: PostgreSQL never sends them.
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], value: Json) -> Option<Json> {
        if self.s[self.at..].starts_with(word) {
            self.at += word.len();
            Some(value)
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.at < self.s.len() && self.s[self.at].is_ascii_digit() {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, kept as its text. A `.` or `e` not followed by what
    /// makes it part of the number ends the number, and then the JSON, as in Python's scanner.
    fn number(&mut self) -> Option<Json> {
        let start = self.at;
        if self.s[self.at] == b'-' {
            self.at += 1;
        }
        match self.s.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return None,
        }
        if self.s.get(self.at) == Some(&b'.') && self.s.get(self.at + 1).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
            self.digits();
        }
        if matches!(self.s.get(self.at), Some(b'e' | b'E')) {
            let save = self.at;
            self.at += 1;
            if matches!(self.s.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                self.at = save;
            }
        }
        // The input is a &str's bytes and a number is ASCII.
        Some(Json::Number(String::from_utf8(self.s[start..self.at].to_vec()).ok()?))
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.s.get(at..at + 4)?;
        let mut v = 0;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        Some(v)
    }

    /// A string (at its opening quote): escapes as Python's scanner decodes them (strict: no raw control
    /// characters). A lone surrogate, which Python keeps and cannot encode, makes the text not JSON here.
    fn string(&mut self) -> Option<String> {
        self.at += 1;
        let mut out = String::new();
        let mut start = self.at;
        loop {
            let c = *self.s.get(self.at)?;
            match c {
                b'"' => {
                    out.push_str(std::str::from_utf8(&self.s[start..self.at]).ok()?);
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(std::str::from_utf8(&self.s[start..self.at]).ok()?);
                    let e = *self.s.get(self.at + 1)?;
                    self.at += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut u = self.hex4(self.at)?;
                            self.at += 4;
                            if (0xd800..0xdc00).contains(&u) {
                                if self.s.get(self.at..self.at + 2) != Some(b"\\u") {
                                    return None;
                                }
                                let low = self.hex4(self.at + 2)?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return None;
                                }
                                u = 0x10000 + ((u - 0xd800) << 10) + (low - 0xdc00);
                                self.at += 6;
                            }
                            out.push(char::from_u32(u)?);
                        }
                        _ => return None,
                    }
                    start = self.at;
                }
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }
}

fn write_json(out: &mut Vec<u8>, value: &Json) {
    match value {
        Json::Null => out.extend_from_slice(NULL),
        Json::Bool(true) => out.extend_from_slice(b"{\"BOOL\":true}"),
        Json::Bool(false) => out.extend_from_slice(b"{\"BOOL\":false}"),
        Json::Number(n) => {
            out.extend_from_slice(b"{\"N\":");
            json_string(out, n);
            out.push(b'}');
        }
        Json::Str(s) => string(out, s),
        Json::List(items) => {
            out.extend_from_slice(b"{\"L\":[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.extend_from_slice(b"]}");
        }
        Json::Map(members) => {
            out.extend_from_slice(b"{\"M\":{");
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(out, k);
                out.push(b':');
                write_json(out, v);
            }
            out.extend_from_slice(b"}}");
        }
    }
}

fn json_attribute(out: &mut Vec<u8>, text: &str) {
    let mut p = JsonParser { s: text.as_bytes(), at: 0 };
    let parsed = p.value(0).and_then(|v| {
        p.ws();
        (p.at == p.s.len()).then_some(v)
    });
    match parsed {
        Some(v) => write_json(out, &v),
        None => string(out, text),
    }
}

// pgoutput messages.

#[derive(Clone, Copy)]
enum Val<'a> {
    Text(&'a [u8]),
    Null,
    /// A TOASTed value the change did not touch (not sent).
    Unchanged,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.data.get(self.at).ok_or("message too short")?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.at + n > self.data.len() {
            return Err("message too short".into());
        }
        self.at += n;
        Ok(&self.data[self.at - n..self.at])
    }

    fn tuple(&mut self) -> Result<Vec<Val<'a>>, String> {
        let n = i16::from_be_bytes(self.take(2)?.try_into().unwrap());
        let mut values = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n.max(0) {
            match self.byte()? {
                b't' => {
                    let size = u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as usize;
                    values.push(Val::Text(self.take(size)?));
                }
                b'n' => values.push(Val::Null),
                b'u' => values.push(Val::Unchanged),
                kind => return Err(format!("unknown tuple column kind {}", py_bytes_repr(kind))),
            }
        }
        Ok(values)
    }
}

/// A byte as Python writes `bytes([b])`'s repr (what the Python decoder's messages name).
fn py_bytes_repr(b: u8) -> String {
    match b {
        b'\'' => "b\"'\"".into(),
        b'\\' => "b'\\\\'".into(),
        b'\t' => "b'\\t'".into(),
        b'\n' => "b'\\n'".into(),
        b'\r' => "b'\\r'".into(),
        0x20..=0x7e => format!("b'{}'", b as char),
        _ => format!("b'\\x{b:02x}'"),
    }
}

struct Column {
    /// The column's name as a JSON string and `:`.
    prefix: Vec<u8>,
    kind: Kind,
}

struct Plan {
    qualified: String,
    streamed: bool,
    columns: Vec<Column>,
    /// The primary key's column positions, or why the relation has none.
    key: Result<Vec<usize>, String>,
    /// Per eventName (INSERT, MODIFY, REMOVE): from the end of `eventID` to `ApproximateCreationDateTime`'s value.
    heads: [Vec<u8>; 3],
    /// From `SizeBytes`' value to the record's end.
    tail: Vec<u8>,
}

/// A change shaped, waiting for its transaction's commit (its sequence number and time).
struct Pending {
    oid: u32,
    event: usize,
    /// `"Keys":{...}` and the images, from `,"Keys":` to the last image's end.
    body: Vec<u8>,
    size: usize,
    partition: String,
}

const INSERT: usize = 0;
const MODIFY: usize = 1;
const REMOVE: usize = 2;
const EVENT_NAMES: [&str; 3] = ["INSERT", "MODIFY", "REMOVE"];

/// DynamoDB Streams records of the row changes of one slot (the native half of `_pgoutput.Shaper`).
#[pyclass(module = "kubelambda._native")]
struct Shaper {
    error: Py<PyType>,
    view_type: String,
    new_images: bool,
    old_images: bool,
    region: String,
    namespace: String,
    slot_prefix: Vec<u8>,
    slot: String,
    plans: HashMap<u32, Plan>,
    pending: Vec<Pending>,
}

impl Shaper {
    fn shape(&self, plan: &Plan, payload: &[u8], key: &[usize]) -> Result<Pending, String> {
        let tag = payload[0];
        let mut r = Reader { data: payload, at: 5 };
        let mut marker = r.byte()?;
        let mut old: Option<Vec<Val>> = None;
        let mut full = false;
        let (event, new) = match tag {
            b'I' => {
                if marker != b'N' {
                    return Err(format!("insert without new tuple ({})", py_bytes_repr(marker)));
                }
                (INSERT, Some(r.tuple()?))
            }
            _ => {
                if marker == b'K' || marker == b'O' {
                    old = Some(r.tuple()?);
                    full = marker == b'O';
                    if tag == b'U' {
                        marker = r.byte()?;
                    }
                }
                if tag == b'D' {
                    if old.is_none() {
                        return Err(format!("delete without old tuple ({})", py_bytes_repr(marker)));
                    }
                    (REMOVE, None)
                } else {
                    if marker != b'N' {
                        return Err(format!("update without new tuple ({})", py_bytes_repr(marker)));
                    }
                    (MODIFY, Some(r.tuple()?))
                }
            }
        };
        // Unchanged TOASTed values are not in the new tuple; with REPLICA IDENTITY FULL the old one has them.
        let new = match (new, &old) {
            (Some(n), Some(o)) if full && n.iter().any(|v| matches!(v, Val::Unchanged)) => Some(
                n.iter().zip(o.iter()).map(|(n, o)| if matches!(n, Val::Unchanged) { *o } else { *n }).collect(),
            ),
            (n, _) => n,
        };
        let values = new.as_ref().or(old.as_ref()).expect("a change has a tuple");
        let key_values: Vec<Val> = key.iter().map(|&i| values.get(i).copied().unwrap_or(Val::Null)).collect();

        let mut body = Vec::with_capacity(64 + payload.len() * 2);
        body.extend_from_slice(b",\"Keys\":{");
        let mut partition = String::with_capacity(plan.qualified.len() + 16);
        partition.push_str(&plan.qualified);
        partition.push('\0');
        for (n, (&i, v)) in key.iter().zip(&key_values).enumerate() {
            if n > 0 {
                body.push(b',');
                partition.push('\0');
            }
            let column = &plan.columns[i];
            body.extend_from_slice(&column.prefix);
            match v {
                Val::Text(t) => {
                    let t = text(t);
                    attribute(&mut body, column.kind, &t)?;
                    partition.push_str(&t);
                }
                _ => body.extend_from_slice(NULL),
            }
        }
        body.push(b'}');
        let mut size = body.len() - b",\"Keys\":".len();
        if let Some(new) = new.as_ref().filter(|_| self.new_images) {
            size += image(&mut body, b",\"NewImage\":", plan, new)?;
        }
        if let Some(old) = old.as_ref().filter(|_| full && self.old_images && event != INSERT) {
            size += image(&mut body, b",\"OldImage\":", plan, old)?;
        }
        Ok(Pending { oid: 0, event, body, size, partition })
    }

    fn envelope(&self, qualified: &str) -> ([Vec<u8>; 3], Vec<u8>) {
        let mut region = Vec::new();
        json_string(&mut region, &self.region);
        let heads = EVENT_NAMES.map(|name| {
            let mut head = format!(
                "\",\"eventName\":\"{name}\",\"eventVersion\":\"1.1\",\"eventSource\":\"aws:dynamodb\",\"awsRegion\":"
            )
            .into_bytes();
            head.extend_from_slice(&region);
            head.extend_from_slice(b",\"dynamodb\":{\"ApproximateCreationDateTime\":");
            head
        });
        let mut tail = format!(",\"StreamViewType\":\"{}\"}},\"eventSourceARN\":", self.view_type).into_bytes();
        let arn = format!(
            "arn:kubelambda:postgres:{}:{}:table/{}/stream/{}",
            self.region, self.namespace, qualified, self.slot
        );
        json_string(&mut tail, &arn);
        tail.push(b'}');
        (heads, tail)
    }

    fn fail(&self, py: Python<'_>, message: String) -> PyErr {
        PyErr::from_type(self.error.bind(py).clone(), message)
    }
}

/// `,"NewImage":{...}` (or OldImage) of a tuple: unchanged TOASTed values left out; returns the image's size.
fn image(out: &mut Vec<u8>, label: &[u8], plan: &Plan, values: &[Val]) -> Result<usize, String> {
    out.extend_from_slice(label);
    let start = out.len();
    out.push(b'{');
    let mut first = true;
    for (column, v) in plan.columns.iter().zip(values) {
        if matches!(v, Val::Unchanged) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&column.prefix);
        match v {
            Val::Text(t) => attribute(out, column.kind, &text(t))?,
            _ => out.extend_from_slice(NULL),
        }
    }
    out.push(b'}');
    Ok(out.len() - start)
}

#[pymethods]
impl Shaper {
    #[new]
    #[pyo3(signature = (*, view_type, region, namespace, slot, error))]
    fn new(view_type: String, region: String, namespace: String, slot: String, error: Py<PyType>) -> Self {
        Shaper {
            error,
            new_images: matches!(view_type.as_str(), "NEW_IMAGE" | "NEW_AND_OLD_IMAGES"),
            old_images: matches!(view_type.as_str(), "OLD_IMAGE" | "NEW_AND_OLD_IMAGES"),
            view_type,
            region,
            namespace,
            slot_prefix: format!("{slot}:").into_bytes(),
            slot,
            plans: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// A Relation message's table: its columns (name, type OID) in order, and its primary key's column names
    /// (None: a table the Trigger does not stream, whose changes are skipped).
    #[pyo3(signature = (oid, qualified, columns, key))]
    fn relation(&mut self, oid: u32, qualified: String, columns: Vec<(String, u32)>, key: Option<Vec<String>>) {
        let streamed = key.is_some();
        let key = match &key {
            None => Ok(Vec::new()),
            Some(names) => {
                let missing: Vec<&str> = names
                    .iter()
                    .filter(|k| !columns.iter().any(|(c, _)| c == *k))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    Ok(names.iter().map(|k| columns.iter().position(|(c, _)| c == k).unwrap()).collect())
                } else {
                    Err(format!("table {qualified} has no column {} of its primary key", missing.join(", ")))
                }
            }
        };
        let columns = columns
            .iter()
            .map(|(name, type_oid)| {
                let mut prefix = Vec::with_capacity(name.len() + 3);
                json_string(&mut prefix, name);
                prefix.push(b':');
                Column { prefix, kind: kind_of(*type_oid) }
            })
            .collect();
        let (heads, tail) = self.envelope(&qualified);
        self.plans.insert(oid, Plan { qualified, streamed, columns, key, heads, tail });
    }

    /// One Insert, Update or Delete message (`I`, `U`, `D`), shaped now (against the table's columns as they are
    /// now) and kept until `commit`. Skipped when its table is not streamed.
    fn change(&mut self, py: Python<'_>, payload: &[u8]) -> PyResult<()> {
        if payload.len() < 5 {
            return Err(self.fail(py, "message too short".into()));
        }
        if !matches!(payload[0], b'I' | b'U' | b'D') {
            return Err(self.fail(py, format!("not a row change: message {}", py_bytes_repr(payload[0]))));
        }
        let oid = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        let Some(plan) = self.plans.get(&oid) else {
            return Err(self.fail(py, format!("change of relation {oid} before its Relation message")));
        };
        if !plan.streamed {
            return Ok(());
        }
        let key = plan.key.as_ref().map_err(|e| self.fail(py, e.clone()))?;
        let mut pending = self.shape(plan, payload, key).map_err(|e| self.fail(py, e))?;
        pending.oid = oid;
        self.pending.push(pending);
        Ok(())
    }

    /// Changes shaped since the last commit or discard.
    fn __len__(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the changes shaped since the last commit (a transaction sent again, a reconnect).
    fn discard(&mut self) {
        self.pending.clear();
    }

    /// The transaction whose commit record is at `final_lsn` is committed (at `timestamp`, Unix seconds): its
    /// changes' records, in order, as `(sequence number, partition key, record JSON)`.
    fn commit<'py>(
        &mut self,
        py: Python<'py>,
        final_lsn: u64,
        timestamp: f64,
    ) -> PyResult<Vec<(Bound<'py, PyString>, Bound<'py, PyString>, Bound<'py, PyBytes>)>> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let stamp = format!("{}", timestamp.trunc() as i64);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut record = Vec::new();
        // The sequence number: the commit's LSN (20 digits), then the change's index (8 digits, more past 10^8).
        let mut sequence = format!("{final_lsn:020}").into_bytes();
        let head = sequence.len();
        let mut prefix = Blake2b128::new();
        prefix.update(&self.slot_prefix);
        for (i, p) in self.pending.drain(..).enumerate() {
            let plan = &self.plans[&p.oid];
            sequence.truncate(head);
            if i < 100_000_000 {
                let mut digits = [b'0'; 8];
                let mut n = i;
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (n % 10) as u8;
                    n /= 10;
                }
                sequence.extend_from_slice(&digits);
            } else {
                sequence.extend_from_slice(i.to_string().as_bytes());
            }
            let hash = prefix.clone().chain_update(&sequence).finalize();
            record.clear();
            record.reserve(p.body.len() + plan.heads[p.event].len() + plan.tail.len() + 128);
            record.extend_from_slice(b"{\"eventID\":\"");
            for b in hash.iter() {
                record.push(HEX[(b >> 4) as usize]);
                record.push(HEX[(b & 15) as usize]);
            }
            record.extend_from_slice(&plan.heads[p.event]);
            record.extend_from_slice(stamp.as_bytes());
            record.extend_from_slice(&p.body);
            record.extend_from_slice(b",\"SequenceNumber\":\"");
            record.extend_from_slice(&sequence);
            record.extend_from_slice(b"\",\"SizeBytes\":");
            record.extend_from_slice(p.size.to_string().as_bytes());
            record.extend_from_slice(&plan.tail);
            // ASCII digits: a str without a check.
            let sequence = std::str::from_utf8(&sequence).expect("digits");
            out.push((PyString::new(py, sequence), PyString::new(py, &p.partition), PyBytes::new(py, &record)));
        }
        Ok(out)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Shaper>()?;
    Ok(())
}
