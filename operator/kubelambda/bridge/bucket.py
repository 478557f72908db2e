"""The bucket bridge: object events of an S3-compatible bucket, delivered as Lambda's S3 event.

Two modes (``spec.bucket.mode``):

- ``notification``: the store pushes. ``POST /events`` accepts S3-format notifications as MinIO's webhook
  target or VersityGW's webhook sends them, authenticated by ``Authorization: Bearer <token>`` or Basic with the
  token as password (:func:`presented_token`; the ``token`` key of Secret
  ``spec.bucket.tokenSecret``, or of ``<trigger>-bucket-token`` which the operator generates when unset).
  The store is answered 200 only once every record was accepted by the gateway, so it retries otherwise.
  A record is delivered at most once: one seen in the last ``REPLAY_WINDOW_SECONDS`` (same bucket, key, event,
  sequencer, eTag and event time) is a replay, and one whose event time is further than that from now is stale;
  both are answered 200 and not delivered (a captured notification cannot be replayed).
- ``poll``: the bridge lists the bucket (ListObjectsV2) every ``pollIntervalSeconds`` and diffs the listing
  against its checkpoint (key → fingerprint of eTag/size/LastModified, in the Trigger's checkpoint ConfigMap).

Either way each record is one Event invocation with ``{"Records": [record]}``, as S3 invokes Lambda.
docs/triggers-bucket.md describes the settings, guarantees and limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from kubelambda import metrics
from kubelambda.api.v1alpha1.trigger import BucketSource
from kubelambda.bridge import _s3events as s3e
from kubelambda.bridge._context import BridgeContext
from kubelambda.kube import ApiError
from kubelambda.resources.bridge import webhook_token_secret

log = logging.getLogger("kubelambda.bridge.bucket")

WEBHOOK_PATH = "/events"
# Poll mode writes the checkpoint after every run of this many changes; a SIGKILL between the gateway
# accepting a run's invocations and the checkpoint write repeats at most this many events after the restart.
CHECKPOINT_EVERY = 100
# Invocations in flight at once (each is a quick 202 from the gateway's durable queue).
INVOKE_CONCURRENCY = 16
# How long a rejected token keeps the Secret from being read again (rotation is picked up after this).
TOKEN_REFRESH_SECONDS = 2.0
# Notification mode: a record whose event time is further than this from now is stale, and one seen within it a
# replay; neither is delivered. Stores send within seconds (MinIO retries a failed target for longer: such
# events are dropped, and logged).
REPLAY_WINDOW_SECONDS = 900.0
# Records remembered at most (the oldest are forgotten first: a replay of one of them then goes through).
REPLAY_MEMORY = 100_000


def presented_token(header: str) -> str | None:
    """The token an ``Authorization`` header presents, None when it presents none.

    ``Bearer <token>`` (MinIO's ``auth_token``), or ``Basic`` with the token as the password and any user name:
    what a store that cannot set headers sends for a webhook URL ``http://<user>:<token>@host/events``
    (VersityGW's ``--event-webhook-url``; Go's HTTP client turns the URL's user information into Basic).
    """
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            user_pass = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = user_pass.partition(":")
        return password if colon and password else None
    return None


class ReplayGuard:
    """At most one delivery per record within the window (notification mode)."""

    def __init__(
        self,
        window: float = REPLAY_WINDOW_SECONDS,
        memory: int = REPLAY_MEMORY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.memory = memory
        self.clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # record digest -> when it was claimed

    @staticmethod
    def digest(bucket: str, event: s3e.ObjectEvent) -> bytes:
        parts = (
            bucket,
            event.key,
            event.event_name,
            event.sequencer,
            event.etag,
            s3e.iso_time(event.event_time),
        )
        return hashlib.sha256("\0".join(parts).encode()).digest()

    def stale(self, event: s3e.ObjectEvent) -> bool:
        return abs(self.clock() - event.event_time.timestamp()) > self.window

    def claim(self, digest: bytes) -> bool:
        """True (and remembered) the first time within the window; False for a replay."""
        now = self.clock()
        while self._seen and (
            len(self._seen) >= self.memory or next(iter(self._seen.values())) < now - self.window
        ):
            self._seen.popitem(last=False)
        if digest in self._seen:
            return False
        self._seen[digest] = now
        return True

    def release(self, digest: bytes) -> None:
        """Forgets a claimed record that was not delivered (the store's retry delivers it)."""
        self._seen.pop(digest, None)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1000] or type(error).__name__


class BucketBridge:
    """Source ``bucket`` of the bridge framework (``kubelambda.bridge._main.load_source``)."""

    def __init__(self, ctx: BridgeContext) -> None:
        if ctx.trigger.spec.bucket is None:
            raise ValueError("BucketBridge needs a Trigger with spec.bucket")
        self.ctx = ctx
        self.source: BucketSource = ctx.trigger.spec.bucket
        self._token: str | None = None
        self._token_read_at = -1e9
        self._token_lock = asyncio.Lock()
        self._invoke_slots = asyncio.Semaphore(INVOKE_CONCURRENCY)
        self.replays = ReplayGuard()
        self._scope = s3e.listing_scope(
            endpoint=self.source.endpoint,
            bucket=self.source.bucket,
            prefix=self.source.filter.prefix,
            suffix=self.source.filter.suffix,
        )

    # ---- shared

    def _wanted(self, bucket: str, event: s3e.ObjectEvent) -> bool:
        return (
            bucket == self.source.bucket
            and s3e.event_matches(event.event_name, self.source.events)
            and s3e.key_matches(event.key, prefix=self.source.filter.prefix, suffix=self.source.filter.suffix)
        )

    def _record(self, event: s3e.ObjectEvent) -> dict[str, Any]:
        return s3e.s3_record(
            event, bucket=self.source.bucket, region=self.source.region, configuration_id=self.ctx.name
        )

    async def _invoke_once(self, record: dict[str, Any], *, idempotency_key: str | None = None) -> bool:
        async with self._invoke_slots:
            result = await self.ctx.invoker.invoke(
                {"Records": [record]}, asynchronous=True, idempotency_key=idempotency_key
            )
        if not result.ok:
            log.warning(
                "Gateway refused an event of Trigger %s/%s: %s %s",
                self.ctx.namespace,
                self.ctx.name,
                result.status,
                result.payload[:300].decode(errors="replace"),
            )
        return result.ok

    async def _invoke_all(self, records: Sequence[dict[str, Any]]) -> list[bool]:
        """One Event invocation per record, concurrently; which were accepted."""
        return list(await asyncio.gather(*(self._invoke_once(r) for r in records)))

    def routes(self) -> list[web.RouteDef]:
        if self.source.mode != "notification":
            return []
        return [
            web.post(WEBHOOK_PATH, self._webhook),
            # MinIO checks that a webhook target is up before it uses it.
            web.get(WEBHOOK_PATH, self._probe, allow_head=True),
        ]

    async def run(self) -> None:
        if self.source.mode == "notification":
            self.ctx.status.source_reachable(True, f"webhook ready at POST {WEBHOOK_PATH}")
            await asyncio.Event().wait()  # requests are served by the framework's HTTP server
        else:
            await self._poll_forever()

    # ---- notification mode

    async def _read_token(self, *, refresh: bool) -> str | None:
        async with self._token_lock:
            fresh = time.monotonic() - self._token_read_at < TOKEN_REFRESH_SECONDS
            # A missing Secret or a rejected token reads it again, but at most every TOKEN_REFRESH_SECONDS.
            if (self._token is None or refresh) and not fresh:
                name = webhook_token_secret(self.ctx.name, self.source)
                try:
                    self._token = (await self.ctx.secrets.get(name)).get("token") or None
                except KeyError:
                    self._token = None
                except ApiError as e:
                    log.warning("Could not read Secret %s/%s: %s", self.ctx.namespace, name, e)
                self._token_read_at = time.monotonic()
            return self._token

    async def _authorized(self, request: web.Request) -> web.Response | None:
        """None when the request carries the token; else the answer to give."""
        given = presented_token(request.headers.get("Authorization", ""))
        if given is None:
            return web.json_response(
                {"message": "missing Authorization: Bearer <token> (or Basic with the token as password)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="kubelambda-bucket"'},
            )
        expected = await self._read_token(refresh=False)
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            expected = await self._read_token(refresh=True)  # the Secret may have been rotated
        if expected is None:
            name = webhook_token_secret(self.ctx.name, self.source)
            # 503: the store keeps the notification and retries until the Secret exists.
            return web.json_response({"message": f"Secret {name} with key token not found"}, status=503)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"message": "wrong token"}, status=403)
        return None

    async def _probe(self, request: web.Request) -> web.Response:
        return web.Response(text="kubelambda bucket webhook: POST S3 event notifications here\n")

    async def _webhook(self, request: web.Request) -> web.Response:
        refused = await self._authorized(request)
        if refused is not None:
            return refused
        try:
            records = s3e.notification_records(await request.json())
        except (ValueError, json.JSONDecodeError, RecursionError) as e:
            return web.json_response({"message": f"not an S3 event notification: {e}"}, status=400)
        metrics.BRIDGE_RECORDS_RECEIVED.inc(len(records))
        received = now()
        events = [found for r in records if (found := s3e.from_store_record(r, now=received)) is not None]
        wanted: list[tuple[bytes, dict[str, Any]]] = []
        stale = replayed = 0
        for bucket, event in events:
            if not self._wanted(bucket, event):
                continue
            digest = self.replays.digest(bucket, event)
            if self.replays.stale(event):
                stale += 1
            elif not self.replays.claim(digest):
                replayed += 1
            else:
                wanted.append((digest, self._record(event)))
        if stale or replayed:
            log.warning(
                "Trigger %s/%s: %d stale and %d replayed record(s) of a notification not delivered "
                "(event times more than %g s from now, or seen within that)",
                self.ctx.namespace,
                self.ctx.name,
                stale,
                replayed,
                self.replays.window,
            )
        # The key makes a copy that reaches the gateway twice anyway (after a bridge restart) one event.
        accepted = list(
            await asyncio.gather(
                *(self._invoke_once(r, idempotency_key=f"bucket:{d.hex()}") for d, r in wanted)
            )
        )
        for (digest, _), ok in zip(wanted, accepted, strict=True):
            if not ok:
                self.replays.release(digest)
        delivered = sum(accepted)
        if delivered:
            self.ctx.status.delivered(delivered)
        if not all(accepted):
            metrics.BRIDGE_FAILURES.inc(len(accepted) - delivered)
            # Not 2xx: the store retries the whole notification (the accepted records are then repeated).
            return web.json_response(
                {
                    "message": "the gateway did not accept every event",
                    "accepted": delivered,
                    "of": len(wanted),
                },
                status=503,
            )
        return web.json_response(
            {
                "accepted": delivered,
                "ignored": len(records) - len(wanted) - stale - replayed,
                "stale": stale,
                "replayed": replayed,
            }
        )

    # ---- poll mode

    async def _client_kwargs(self) -> dict[str, Any]:
        from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
        from botocore import UNSIGNED  # type: ignore[import-untyped]

        config: dict[str, Any] = {
            "s3": {"addressing_style": "path" if self.source.path_style else "virtual"},
            "retries": {"max_attempts": 1, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        kwargs: dict[str, Any] = {"endpoint_url": self.source.endpoint, "region_name": self.source.region}
        if self.source.credentials_secret:
            secret = await self.ctx.secrets.get(self.source.credentials_secret)
            kwargs["aws_access_key_id"] = secret.get("AWS_ACCESS_KEY_ID", "")
            kwargs["aws_secret_access_key"] = secret.get("AWS_SECRET_ACCESS_KEY", "")
            if secret.get("AWS_SESSION_TOKEN"):
                kwargs["aws_session_token"] = secret["AWS_SESSION_TOKEN"]
        else:
            config["signature_version"] = UNSIGNED
        kwargs["config"] = AioConfig(**config)
        return kwargs

    async def _list(self, client: Any) -> list[s3e.Listed]:
        listed: list[s3e.Listed] = []
        paginator = client.get_paginator("list_objects_v2")
        params: dict[str, Any] = {"Bucket": self.source.bucket}
        if self.source.filter.prefix:
            params["Prefix"] = self.source.filter.prefix
        async for page in paginator.paginate(**params):
            for item in page.get("Contents") or []:
                key = item["Key"]
                if s3e.key_matches(key, prefix=self.source.filter.prefix, suffix=self.source.filter.suffix):
                    listed.append(
                        s3e.Listed(
                            key=key,
                            etag=item.get("ETag", ""),
                            size=int(item.get("Size", 0)),
                            last_modified=item["LastModified"],
                        )
                    )
        return listed

    async def _save(self, state: dict[str, str]) -> None:
        """Writes the checkpoint, retrying until the API server takes it (the repeat bound depends on it)."""
        try:
            data = s3e.encode_state(state, scope=self._scope)
        except s3e.CheckpointTooLarge as e:
            log.error("Could not checkpoint Trigger %s/%s: %s", self.ctx.namespace, self.ctx.name, e)
            return
        attempt = 0
        while True:
            try:
                await self.ctx.checkpoint.save(data)
                return
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                attempt += 1
                log.warning(
                    "Could not save the checkpoint of %s/%s: %s", self.ctx.namespace, self.ctx.name, e
                )
                await asyncio.sleep(s3e.backoff_seconds(attempt, base=0.5, cap=10))

    async def _deliver(self, state: dict[str, str], changes: list[s3e.Change]) -> dict[str, str]:
        """Invokes for ``changes`` run by run, checkpointing after each run; returns the final state."""
        pending = len(changes)
        for run in s3e.batches(changes, CHECKPOINT_EVERY):
            records = [self._record(c.event) for c in run if self._wanted(self.source.bucket, c.event)]
            todo = records
            attempt = 0
            while todo:
                accepted = await self._invoke_all(todo)
                done = sum(accepted)
                if done:
                    self.ctx.status.delivered(done)
                todo = [r for r, ok in zip(todo, accepted, strict=True) if not ok]
                if todo:
                    attempt += 1
                    metrics.BRIDGE_FAILURES.inc(len(todo))
                    await asyncio.sleep(s3e.backoff_seconds(attempt, base=0.5, cap=30))
            state = s3e.apply_changes(state, run)
            await self._save(state)
            pending -= len(run)
            self.ctx.status.set_lag(pending)
        return state

    async def _poll_forever(self) -> None:
        from aiobotocore.session import get_session  # type: ignore[import-untyped]

        session = get_session()
        loaded = s3e.decode_state(await self.ctx.checkpoint.load(), scope=self._scope)
        state: dict[str, str] | None = loaded
        attempt = 0
        while True:
            try:
                kwargs = await self._client_kwargs()
            except (
                KeyError,
                ApiError,
            ) as e:  # the credentials Secret does not exist (yet), or is not readable
                attempt += 1
                self.ctx.status.source_reachable(False, str(e).strip("'\""))
                await asyncio.sleep(s3e.backoff_seconds(attempt))
                continue
            async with session.create_client("s3", **kwargs) as client:
                while True:
                    started = time.monotonic()
                    try:
                        listing = await self._list(client)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # botocore, aiohttp and socket errors alike mean "unreachable"
                        attempt += 1
                        self.ctx.status.source_reachable(False, _error_text(e))
                        await asyncio.sleep(s3e.backoff_seconds(attempt))
                        break  # a new client, with the Secret read again
                    attempt = 0
                    self.ctx.status.source_reachable(
                        True,
                        f"listing bucket {self.source.bucket} every {self.source.poll_interval_seconds} s",
                    )
                    if state is None:
                        # First listing ever: what is already there is not an event (S3 notifies only changes
                        # made after the notification is configured).
                        state = {obj.key: obj.fingerprint for obj in listing}
                        await self._save(state)
                        log.info(
                            "Took %d existing object(s) of bucket %s as the starting point of Trigger %s/%s",
                            len(state),
                            self.source.bucket,
                            self.ctx.namespace,
                            self.ctx.name,
                        )
                    else:
                        changes = s3e.diff(state, listing, now=now())
                        metrics.BRIDGE_RECORDS_RECEIVED.inc(len(changes))
                        self.ctx.status.set_lag(len(changes))
                        if changes:
                            state = await self._deliver(state, changes)
                    elapsed = time.monotonic() - started
                    await asyncio.sleep(max(0.0, self.source.poll_interval_seconds - elapsed))


BRIDGE = BucketBridge
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
