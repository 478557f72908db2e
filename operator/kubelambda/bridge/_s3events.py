"""The pure parts of the bucket bridge: S3 event records, key encoding, filters, the poll diff, the checkpoint codec.

No I/O and no clock here: times are parameters, so everything is table-tested (tests/unit/test_bucket_events.py).

Records are shaped as Amazon S3 sends them to Lambda (event message structure version 2.1), whatever the store:
``eventSource`` is ``aws:s3`` and ``eventName`` has no ``s3:`` prefix, so Lambda code written for S3 runs unchanged.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubelambda.jsonobj import JSON

EVENT_VERSION = "2.1"
S3_SCHEMA_VERSION = "1.0"
CREATED_PUT = "ObjectCreated:Put"
REMOVED_DELETE = "ObjectRemoved:Delete"
# What poll mode reports where the store would name the requester: a listing cannot know who wrote an object.
POLL_PRINCIPAL = "kubelambda"
POLL_SOURCE_IP = "0.0.0.0"

# ConfigMaps hold at most 1 MiB (data + metadata); the encoded object list must leave room for the rest.
MAX_CHECKPOINT_BYTES = 1_000_000 - 16 * 1024
CHECKPOINT_FORMAT = "bucket-v1"


# ---- keys and filters


def encode_key(key: str) -> str:
    """The object key as S3 puts it in an event: form-URL-encoded, ``/`` kept.

    ``photos/red flower.jpg`` → ``photos/red+flower.jpg``; ``é`` → ``%C3%A9``; ``a:b=c`` → ``a%3Ab%3Dc``.
    Lambda code reverses it with ``urllib.parse.unquote_plus`` (Lambda's S3 tutorial does exactly that).
    """
    return urllib.parse.quote_plus(key, safe="/")


def decode_key(encoded: str) -> str:
    """The raw key from an event's key: reverses S3's encoding and MinIO's (Go ``url.QueryEscape``, ``/`` → %2F)."""
    return urllib.parse.unquote_plus(encoded)


def event_name(name: str) -> str:
    """``s3:ObjectCreated:Put`` (MinIO, notification configurations) → ``ObjectCreated:Put`` (S3 events)."""
    return name[3:] if name.startswith("s3:") else name


def event_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether event ``ObjectCreated:Put`` is wanted by patterns like ``s3:ObjectCreated:*``."""
    name = event_name(name)
    family = name.split(":", 1)[0]
    for pattern in patterns:
        wanted = event_name(pattern)
        if wanted == name or (wanted.endswith(":*") and wanted[:-2] == family):
            return True
    return False


def key_matches(key: str, *, prefix: str = "", suffix: str = "") -> bool:
    """S3's notification filter: on the raw key, both rules must hold (an empty rule always holds)."""
    return key.startswith(prefix) and key.endswith(suffix)


# ---- records


def iso_time(when: datetime.datetime) -> str:
    """``1970-01-01T00:00:00.000Z``: S3's eventTime format (UTC, milliseconds)."""
    when = when.astimezone(datetime.UTC) if when.tzinfo else when.replace(tzinfo=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime.datetime | None:
    """An ISO-8601 time as stores write it (``2019-05-18T07:34:32Z``, ``...32.123Z``, ``...+00:00``)."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def strip_etag(etag: str) -> str:
    """ListObjects quotes ETags (``"9b2c..."``); S3 events carry them bare."""
    return etag.strip().strip('"')


def sequencer(when: datetime.datetime) -> str:
    """A hexadecimal string that grows with time, as S3's ``sequencer`` (compare equal-length values only)."""
    micros = int(when.timestamp() * 1_000_000)
    return f"{micros:016X}00"


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


@dataclass(frozen=True)
class ObjectEvent:
    """One change of one object, before it is shaped as a record."""

    event_name: str
    """``ObjectCreated:Put``, ``ObjectRemoved:Delete``, ... (no ``s3:`` prefix)."""
    key: str
    """The raw key (encoded only in the record)."""
    event_time: datetime.datetime
    size: int | None = None
    etag: str = ""
    version_id: str | None = None
    sequencer: str = ""
    principal_id: str = POLL_PRINCIPAL
    source_ip: str = POLL_SOURCE_IP
    request_id: str = ""
    host_id: str = ""
    owner_id: str = POLL_PRINCIPAL

    @property
    def created(self) -> bool:
        return self.event_name.startswith("ObjectCreated:")


def s3_record(event: ObjectEvent, *, bucket: str, region: str, configuration_id: str) -> JSON:
    """The S3 event record (message structure 2.1) that Lambda would receive for ``event``.

    Created objects carry ``size`` and ``eTag``; removals only ``key`` and ``sequencer`` (as S3 sends them).
    ``x-amz-request-id`` and ``x-amz-id-2``, when the store gave none, are derived from the change itself, so a
    change delivered twice (at-least-once) carries the same ids both times and a handler can deduplicate on them.
    """
    digest = _digest(bucket, event.key, event.event_name, event.etag, event.sequencer)
    request_id = event.request_id or digest[:8].hex().upper()
    host_id = event.host_id or base64.b64encode(digest).decode()
    obj: JSON = {"key": encode_key(event.key)}
    if event.created:
        obj["size"] = event.size or 0
        obj["eTag"] = event.etag
    if event.version_id:
        obj["versionId"] = event.version_id
    obj["sequencer"] = event.sequencer or sequencer(event.event_time)
    return {
        "eventVersion": EVENT_VERSION,
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": iso_time(event.event_time),
        "eventName": event.event_name,
        "userIdentity": {"principalId": event.principal_id},
        "requestParameters": {"sourceIPAddress": event.source_ip},
        "responseElements": {"x-amz-request-id": request_id, "x-amz-id-2": host_id},
        "s3": {
            "s3SchemaVersion": S3_SCHEMA_VERSION,
            "configurationId": configuration_id,
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": event.owner_id},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _principal(identity: Any) -> str:
    """``{"principalId": ...}``; VersityGW writes ``PrincipalId``."""
    if not isinstance(identity, Mapping):
        return ""
    return _str(identity.get("principalId")) or _str(identity.get("PrincipalId"))


def _raw_keys(identity: Any) -> bool:
    """Whether the record is VersityGW's, whose keys are raw (``a b+c.jpg``) where S3 and MinIO encode them:
    its ``userIdentity`` is ``{"PrincipalId": ...}`` (v1.8.0), AWS's and MinIO's ``{"principalId": ...}``."""
    return isinstance(identity, Mapping) and "PrincipalId" in identity and "principalId" not in identity


def from_store_record(record: Mapping[str, Any], *, now: datetime.datetime) -> tuple[str, ObjectEvent] | None:
    """(bucket, event) from a record a store pushed (MinIO's webhook, Ceph RGW, S3 itself); None when it is not
    an object event. The store's own fields (eTag, size, versionId, sequencer, time, requester, request id) are
    kept; the key is decoded whatever the store's escaping, and re-encoded the S3 way by :func:`s3_record`."""
    s3 = record.get("s3")
    if not isinstance(s3, Mapping):
        return None
    obj = s3.get("object")
    bucket = s3.get("bucket")
    name = event_name(_str(record.get("eventName")))
    if not isinstance(obj, Mapping) or not isinstance(bucket, Mapping) or not isinstance(obj.get("key"), str):
        return None
    if not name.startswith(("ObjectCreated:", "ObjectRemoved:")):
        return None
    size = obj.get("size")
    identity = record.get("userIdentity")
    request = record.get("requestParameters")
    response = record.get("responseElements")
    owner = bucket.get("ownerIdentity")
    event = ObjectEvent(
        event_name=name,
        # VersityGW (the one store that writes "PrincipalId") sends the raw key, not an encoded one.
        key=obj["key"] if _raw_keys(identity) else decode_key(obj["key"]),
        event_time=parse_time(_str(record.get("eventTime"))) or now,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        etag=strip_etag(_str(obj.get("eTag"))),
        version_id=_str(obj.get("versionId")) or None,
        sequencer=_str(obj.get("sequencer")),
        principal_id=_principal(identity),
        source_ip=_str(request.get("sourceIPAddress")) if isinstance(request, Mapping) else "",
        request_id=_str(response.get("x-amz-request-id")) if isinstance(response, Mapping) else "",
        host_id=_str(response.get("x-amz-id-2")) if isinstance(response, Mapping) else "",
        owner_id=_principal(owner),
    )
    return _str(bucket.get("name")), event


def notification_records(body: Any) -> list[Mapping[str, Any]]:
    """The records of a pushed notification: MinIO's ``{"EventName", "Key", "Records": [...]}`` or S3's
    ``{"Records": [...]}``; raises ``ValueError`` for anything else."""
    if not isinstance(body, Mapping) or not isinstance(body.get("Records"), list):
        raise ValueError('expected a JSON object with a "Records" list')
    records = body["Records"]
    if not all(isinstance(r, Mapping) for r in records):
        raise ValueError("every element of Records must be an object")
    return list(records)


# ---- poll mode: listing, diff, checkpoint


@dataclass(frozen=True)
class Listed:
    """One object of a ListObjectsV2 page."""

    key: str
    etag: str
    size: int
    last_modified: datetime.datetime

    @property
    def fingerprint(self) -> str:
        """8 characters standing for (eTag, size, LastModified): any change of them is a new ``ObjectCreated``
        (a re-upload of identical bytes changes LastModified). 48 bits: a change is missed with probability 2^-48."""
        digest = _digest(strip_etag(self.etag), str(self.size), self.last_modified.isoformat())
        return base64.urlsafe_b64encode(digest[:6]).decode()


@dataclass(frozen=True)
class Change:
    """A difference between the checkpoint and a listing; ``fingerprint`` None means the object is gone."""

    key: str
    fingerprint: str | None
    event: ObjectEvent


def diff(state: Mapping[str, str], listing: Iterable[Listed], *, now: datetime.datetime) -> list[Change]:
    """What changed since ``state`` (key → fingerprint): new or changed objects become ``ObjectCreated:Put``
    in LastModified order, then vanished ones ``ObjectRemoved:Delete`` (time ``now``) in key order."""
    created: list[tuple[Listed, str]] = []
    seen: set[str] = set()
    for obj in listing:
        seen.add(obj.key)
        fingerprint = obj.fingerprint
        if state.get(obj.key) != fingerprint:
            created.append((obj, fingerprint))
    created.sort(key=lambda pair: (pair[0].last_modified, pair[0].key))
    changes = [
        Change(
            key=obj.key,
            fingerprint=fingerprint,
            event=ObjectEvent(
                event_name=CREATED_PUT,
                key=obj.key,
                event_time=obj.last_modified,
                size=obj.size,
                etag=strip_etag(obj.etag),
                sequencer=sequencer(obj.last_modified),
            ),
        )
        for obj, fingerprint in created
    ]
    changes.extend(
        Change(
            key=key,
            fingerprint=None,
            event=ObjectEvent(event_name=REMOVED_DELETE, key=key, event_time=now, sequencer=sequencer(now)),
        )
        for key in sorted(set(state) - seen)
    )
    return changes


def apply_changes(state: Mapping[str, str], changes: Iterable[Change]) -> dict[str, str]:
    """``state`` with ``changes`` applied (a new dict)."""
    updated = dict(state)
    for change in changes:
        if change.fingerprint is None:
            updated.pop(change.key, None)
        else:
            updated[change.key] = change.fingerprint
    return updated


def batches(items: Sequence[Change], size: int) -> list[Sequence[Change]]:
    """``items`` cut into consecutive runs of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class CheckpointTooLarge(ValueError):
    """The encoded object list does not fit a ConfigMap."""


def listing_scope(*, endpoint: str, bucket: str, prefix: str, suffix: str) -> str:
    """What a poll checkpoint's object list is a list of. A Trigger edited to watch another endpoint, bucket or
    filter starts from a new first listing instead of reporting the old objects removed and the new ones created."""
    return hashlib.sha256("\0".join((endpoint.rstrip("/"), bucket, prefix, suffix)).encode()).hexdigest()[:16]


def encode_state(state: Mapping[str, str], *, scope: str = "") -> dict[str, str]:
    """The checkpoint ConfigMap's data: the sorted (key, fingerprint) pairs as gzip'd JSON, base64.

    Sorted keys share prefixes, which gzip folds: about 14 bytes per object for keys like
    ``uploads/2026/11/26/photo-000123.jpg`` (tests/unit/test_bucket_events.py measures it), so roughly
    70,000 such objects fit under the limit; long random keys fit fewer. Raises :class:`CheckpointTooLarge`.
    """
    pairs = sorted(state.items())
    packed = gzip.compress(json.dumps(pairs, separators=(",", ":")).encode(), compresslevel=9, mtime=0)
    encoded = base64.b64encode(packed).decode()
    if len(encoded) > MAX_CHECKPOINT_BYTES:
        raise CheckpointTooLarge(
            f"{len(state)} objects take {len(encoded)} bytes encoded, over the {MAX_CHECKPOINT_BYTES} "
            "a ConfigMap can hold; narrow the Trigger with filter.prefix/suffix"
        )
    return {"format": CHECKPOINT_FORMAT, "objects": encoded, "count": str(len(state)), "scope": scope}


def decode_state(data: Mapping[str, str], *, scope: str = "") -> dict[str, str] | None:
    """The state saved by :func:`encode_state`, or None when the bridge never listed this bucket (a fresh,
    empty checkpoint ConfigMap, or one saved for another :func:`listing_scope`); raises ``ValueError`` for a
    checkpoint in another format."""
    if not data.get("objects") and data.get("format") is None:
        return None
    if data.get("scope", "") != scope:
        return None
    if data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {data.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    pairs = json.loads(gzip.decompress(base64.b64decode(data.get("objects", ""))))
    return {str(key): str(fingerprint) for key, fingerprint in pairs}


def backoff_seconds(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Delay before retry ``attempt`` (1, 2, ...): ``base`` doubled each time, at most ``cap``.
    With the defaults: 1, 2, 4, 8, 16, 30, 30, ... seconds."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
