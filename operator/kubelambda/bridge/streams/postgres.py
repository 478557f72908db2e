"""PostgreSQL change streams: logical replication (``pgoutput``) delivered as DynamoDB Streams records.

The self-hosted DynamoDB Streams. The bridge reads a logical replication slot through psycopg2's replication
protocol support, decodes ``pgoutput`` (row changes natively, :mod:`kubelambda._native`, with the records they
make; the rest of the protocol in :mod:`._pgoutput`) and hands every row change of a committed transaction, in
commit order, to the shared per-shard loop (:mod:`._core`): batching, retries, bisection,
partial failures, maximum record age, on-failure destination and ``parallelizationFactor`` (lanes by table and
primary key) all work as for the other stream sources. The slot is one shard, ``shardId-000000000000``.

The checkpoint is the slot's confirmed LSN, sent to the server only for work that is done: when the last
change of a transaction is done, its end LSN; a transaction that is only partly done is not confirmed (the
server replays a transaction whole), so a restart replays it from its first change. At start the bridge checks
``wal_level``, that each table exists and has a primary key (and ``REPLICA IDENTITY FULL`` when the records
carry old images), then creates the publication and the slot when they do not exist (and says what they
need when it may not). What it created is recorded in the Trigger's checkpoint ConfigMap; when its Trigger is deleted (the Trigger is
gone, or carries a deletion timestamp or another uid), it drops the slot and the publication it created, and never
one it found.

So that a Trigger deleted while its bridge is down does not leave them behind (a slot keeps the server's WAL
forever), the bridge puts the finalizer :data:`FINALIZER` on its Trigger before it may create anything, and takes
it off only once what it created is dropped: the Trigger (and with it the bridge's Deployment) stays until then. A
running bridge looks for its Trigger's deletion every ``DELETION_POLL_SECONDS``; one that was down when it
happened finds it when it starts, drops, and releases the Trigger (the operator starts the bridge of a disabled
Trigger being deleted for this).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from kubelambda import _native
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.streams._batch import SourceInfo, StreamRecord, shard_id
from kubelambda.bridge.streams._core import CheckpointStore, StreamBridge, StreamClient, config_key
from kubelambda.bridge.streams._pgoutput import (
    Begin,
    Commit,
    DecodeError,
    Decoder,
    Relation,
    Table,
    Truncate,
)
from kubelambda.kube import change_finalizer, resource_path
from kubelambda.resources.bridge import CLEANUP_FINALIZER as FINALIZER

log = logging.getLogger("kubelambda.bridge.streams.postgres")
WAIT_SECONDS = 1.0
MESSAGES_PER_TURN = 2000
"""Replication messages decoded before giving the event loop a turn."""
ROW_CHANGES = frozenset((b"I", b"U", b"D"))
"""The tags of Insert, Update and Delete messages: decoded and shaped natively."""
STATUS_INTERVAL_SECONDS = 10
NOTE_SECONDS = 10.0
"""The confirmed LSN is noted in the checkpoint ConfigMap at most this often (it is there for information)."""
KEEPALIVE_SECONDS = 10.0
DROP_WAIT_SECONDS = 5.0
"""How long a slot being dropped may still be in use (the walsender of the connection just closed exits)."""
OBJECT_IN_USE = "55006"
DELETION_POLL_SECONDS = 5.0
"""How often a running bridge reads its Trigger to notice a deletion (the finalizer keeps the bridge running)."""
CLEANUP_RETRY_MAX_SECONDS = 60.0


class ConfigurationError(RuntimeError):
    """The database is not set up for this Trigger; the message says what to change."""


def slot_name(namespace: str, trigger: str) -> str:
    """The default slot (and publication) name: ``kubelambda_<namespace>_<trigger>``, at most 63 characters."""
    raw = f"kubelambda_{namespace}_{trigger}".lower()
    safe = "".join(c if c.isalnum() else "_" for c in raw)
    if len(safe) <= 63:
        return safe
    return f"{safe[:50]}_{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Reader:
    """Reads the slot: decodes messages, keeps each transaction until its commit, then hands out its changes.

    A transaction's row changes are shaped as they arrive (natively, against their table's columns at the time)
    and kept in the client's :class:`kubelambda._native.Shaper` until the commit gives their sequence numbers."""

    def __init__(self, client: _PostgresClient, shard: str) -> None:
        self.client = client
        self.shard = shard
        self.decoder = Decoder()
        self.ready: deque[StreamRecord] = deque()
        self.begin: Begin | None = None
        self.last_end = 0
        """End LSN of the last transaction that had records (what its last record confirms)."""
        self.last_emitted: int | None = None
        self.confirmed = 0
        self.idle_end = 0
        """End LSN of transactions without records after the last one with records: confirmed with it."""
        self.noted = float("-inf")
        """When the confirmed LSN was last noted in the checkpoint ConfigMap."""
        self.emitted_commit = 0
        """Commit LSN of the last transaction handed out: after a reconnect the server sends again what was
        not confirmed, and what was handed out already is skipped."""

    async def read(self, max_records: int) -> list[StreamRecord]:
        try:
            await self._fill(max_records)
        except (psycopg2.Error, OSError):
            # The connection is gone: reopen on the next read, from the slot's confirmed LSN.
            self.begin = None
            self.client.native().discard()
            self.client.close_replication()
            raise
        n = min(max_records, len(self.ready))
        return [self.ready.popleft() for _ in range(n)]

    async def _fill(self, max_records: int) -> None:
        """Decodes what the server has sent, up to ``max_records`` ready changes: a read takes every committed
        transaction already received (not one per read: the shard loop's read-ahead holds a few reads, and a
        read per 100-row transaction kept batches of 1,000 at a few hundred records); it waits (up to
        ``WAIT_SECONDS``) only while nothing is ready."""
        self.client.last_read = asyncio.get_running_loop().time()
        if self.client.cur is None:
            await self.client.open_replication()
        cur = self.client.cur
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        handled = 0
        change = self.client.native().change
        while len(self.ready) < max_records:
            msg = cur.read_message()
            if msg is None:
                if self.ready:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self._readable(remaining)
                continue
            payload = msg.payload
            if payload[:1] in ROW_CHANGES:
                change(payload)  # a change of a table this Trigger does not stream is left out
            else:
                self._handle(payload)
            handled += 1
            if handled % MESSAGES_PER_TURN == 0:
                await asyncio.sleep(0)

    async def _readable(self, timeout: float) -> None:
        conn = self.client.repl
        assert conn is not None
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(fd)

    def _handle(self, payload: bytes) -> None:
        """A message other than a row change."""
        event = self.decoder.feed(payload)
        if isinstance(event, Begin):
            self.begin = event
            self.client.native().discard()
        elif isinstance(event, Relation):
            self.client.relation(event)
        elif isinstance(event, Commit):
            self._commit_txn(event)
        elif isinstance(event, Truncate):
            names = ", ".join(r.qualified for r in event.relations)
            log.warning("TRUNCATE of %s: a change stream has no record for it (rows removed unseen)", names)

    def _commit_txn(self, commit: Commit) -> None:
        begin, self.begin = self.begin, None
        shaper = self.client.native()
        if begin is not None and begin.final_lsn <= self.emitted_commit:
            shaper.discard()
            return  # sent again after a reconnect: handed out already
        if not len(shaper) or begin is None:
            shaper.discard()
            self.idle_end = commit.end_lsn
            if self.last_emitted is None or self.last_emitted == self.confirmed:
                # Nothing of ours in flight: let the server forget this transaction's WAL now.
                self._confirm(commit.end_lsn)
            return
        previous, shard, timestamp, ready = self.last_end, self.shard, commit.timestamp, self.ready
        # Each change's sequence number (sequence_number(begin.final_lsn, i)), partition key and record JSON.
        records = shaper.commit(begin.final_lsn, timestamp)
        last = len(records) - 1
        for i, (sequence, partition, data) in enumerate(records):
            # The LSN a record confirms once it is done: its transaction's end when it is the last change of
            # it, else the end of the transaction before (a partial one replays whole).
            ready.append(
                StreamRecord(
                    shard, sequence, partition, data, timestamp, commit.end_lsn if i == last else previous
                )
            )
        self.last_end = commit.end_lsn
        self.last_emitted = commit.end_lsn
        self.emitted_commit = begin.final_lsn
        self.idle_end = 0

    def _confirm(self, lsn: int) -> None:
        cur = self.client.cur
        if cur is None or lsn <= self.confirmed:
            return
        cur.send_feedback(flush_lsn=lsn, force=True)
        self.confirmed = lsn

    async def commit(self, record: StreamRecord) -> None:
        lsn = int(record.position or 0)
        if lsn and lsn == self.last_emitted and self.idle_end > lsn:
            lsn = self.idle_end
        self._confirm(lsn)
        # For information only (the slot is the checkpoint): a ConfigMap write per 0.2 s of streaming was API
        # server and etcd work taken from the function's path.
        now = time.monotonic()
        if now - self.noted >= NOTE_SECONDS:
            self.noted = now
            self.client.store.set(self.client.checkpoint_key, str(lsn))

    def lag(self) -> int | None:
        return None


class _PostgresClient:
    def __init__(self, ctx: BridgeContext, store: CheckpointStore) -> None:
        stream = ctx.trigger.spec.stream
        assert stream is not None
        assert stream.postgres is not None
        self.ctx = ctx
        self.spec = stream.postgres
        self.stream = stream
        self.store = store
        self.slot = self.spec.slot or slot_name(ctx.namespace, ctx.name)
        self.publication = self.spec.publication or self.slot
        self.checkpoint_key = config_key(f"postgres.{self.slot}")
        self.created_key = config_key(f"postgres.{self.slot}.created")
        self.created: set[str] = set()
        """What this Trigger's bridge created: ``slot``, ``publication`` (dropped when the Trigger is deleted)."""
        self.tables = [".".join(split_table(t)) for t in self.spec.tables]
        self.repl: Any = None
        self.cur: Any = None
        self.shaper: _native.Shaper | None = None
        self.keys: dict[str, tuple[str, ...]] = {}
        """Each streamed table's primary key columns, in key order."""
        self.kwargs: dict[str, str] = {}
        self.last_read = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self.info = SourceInfo(
            event_source="aws:dynamodb",
            event_source_arn=f"arn:kubelambda:postgres:{ctx.region}:{ctx.namespace}:slot/{self.slot}",
            invoke_identity_arn=f"arn:aws:iam::{ctx.namespace}:role/{ctx.name}",
            region=ctx.region,
            batch_info_key="DDBStreamBatchInfo",
        )

    def native(self) -> _native.Shaper:
        assert self.shaper is not None, "the client is started"
        return self.shaper

    def relation(self, rel: Relation) -> None:
        """A Relation message: the table's columns for the records of its next changes. A publication the user
        named may publish more tables than the Trigger streams: their changes are left out."""
        key = self.keys.get(rel.qualified)
        self.native().relation(
            rel.oid,
            rel.qualified,
            [(c.name, c.type_oid) for c in rel.columns],
            None if key is None else list(key),
        )

    async def _connect_kwargs(self) -> dict[str, str]:
        kwargs: dict[str, str] = {}
        if self.spec.credentials_secret:
            secret = await self.ctx.secrets.get(self.spec.credentials_secret)
            if "password" in secret:
                kwargs["password"] = secret["password"]
            if "username" in secret:
                kwargs["user"] = secret["username"]
        return kwargs

    def recorded(self) -> set[str]:
        """What the checkpoint says this Trigger's bridges created (``slot``, ``publication``)."""
        return {k for k in (self.store.get(self.created_key) or "").split(",") if k}

    async def start(self) -> None:
        if self.stream.starting_position == "AT_TIMESTAMP":
            raise ConfigurationError(
                "stream.postgres: startingPosition AT_TIMESTAMP is not supported (a slot starts where it is created)"
            )
        kwargs = await self._connect_kwargs()
        recorded = self.recorded()
        # Before anything may be created: a Trigger deleted from now on waits until the bridge dropped it.
        await self._finalizer(hold=True)
        try:
            tables, created = await asyncio.to_thread(self._prepare, kwargs)
        except BaseException:
            if not recorded:  # nothing was created (_prepare raises before or instead of creating)
                with contextlib.suppress(Exception):
                    await self._finalizer(hold=False)
            raise
        self.created = recorded | created
        if self.created != recorded:
            # Written before reading: a bridge that dies now still knows at its next start what is its own.
            self.store.set(self.created_key, ",".join(sorted(self.created)))
            await self.store.flush()
        if not self.created:
            await self._finalizer(hold=False)  # nothing of ours to drop: deleting the Trigger need not wait
        self.keys = {name: table.key for name, table in tables.items()}
        self.shaper = _native.Shaper(
            view_type=self.spec.stream_view_type,
            region=self.ctx.region,
            namespace=self.ctx.namespace,
            slot=self.slot,
            error=DecodeError,
        )
        self.kwargs = kwargs
        await self.open_replication()

    async def open_replication(self) -> None:
        self.repl, self.cur = await asyncio.to_thread(self._start_replication, self.kwargs)

    @staticmethod
    def _options(kwargs: dict[str, str]) -> dict[str, Any]:
        return {"connect_timeout": 10, "application_name": "kubelambda-bridge", **kwargs}

    def _prepare(self, kwargs: dict[str, str]) -> tuple[dict[str, Table], set[str]]:
        """Checks the database and creates the publication and slot when missing (blocking; in a thread).
        Returns the tables and what it created (``slot``, ``publication``)."""
        conn = psycopg2.connect(self.spec.url, **self._options(kwargs))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW wal_level")
                (level,) = cur.fetchone() or ("",)
                if level != "logical":
                    raise ConfigurationError(
                        f"wal_level is {level!r}: logical replication needs wal_level = logical "
                        "(postgresql.conf, then restart the server)"
                    )
                tables = {name: self._table(cur, name) for name in self.tables}
                created = {"publication"} if self._publication(cur) else set()
                if self._slot(cur):
                    created.add("slot")
            return tables, created
        finally:
            conn.close()

    def _table(self, cur: Any, name: str) -> Table:
        schema, table = split_table(name)
        cur.execute(
            """
            SELECT c.relreplident,
                   ARRAY(SELECT a.attname::text
                         FROM pg_index i
                         JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE i.indrelid = c.oid AND i.indisprimary
                         ORDER BY k.n)
            FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE s.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
            """,
            (schema, table),
        )
        row = cur.fetchone()
        if row is None:
            raise ConfigurationError(f"stream.postgres.tables: table {name} does not exist")
        identity, key = row
        if not key:
            raise ConfigurationError(
                f"stream.postgres.tables: table {name} has no primary key; its columns become dynamodb.Keys "
                f"(ALTER TABLE {name} ADD PRIMARY KEY (...))"
            )
        if self.spec.stream_view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES") and identity != "f":
            raise ConfigurationError(
                f"stream.postgres.streamViewType {self.spec.stream_view_type} needs the old rows: "
                f"ALTER TABLE {name} REPLICA IDENTITY FULL (or use NEW_IMAGE or KEYS_ONLY)"
            )
        return Table(name, tuple(key))

    def _publication(self, cur: Any) -> bool:
        """Checks the publication, creating it when missing (True: created)."""
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        if cur.fetchone() is None:
            listed = ", ".join(
                f"{quote_ident(s)}.{quote_ident(t)}" for s, t in (split_table(n) for n in self.tables)
            )
            try:
                cur.execute(f"CREATE PUBLICATION {quote_ident(self.publication)} FOR TABLE {listed}")
            except psycopg2.Error as e:
                raise ConfigurationError(
                    f"could not create publication {self.publication} ({e.pgerror or e}): create it as the "
                    f"tables' owner (CREATE PUBLICATION {self.publication} FOR TABLE {listed}) "
                    "or name an existing one in stream.postgres.publication"
                ) from e
            log.info("Created publication %s for %s", self.publication, listed)
            return True
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (self.publication,),
        )
        published = {r[0] for r in cur.fetchall()}
        missing = [t for t in self.tables if t not in published]
        if missing:
            raise ConfigurationError(
                f"publication {self.publication} does not publish {', '.join(missing)} "
                f"(ALTER PUBLICATION {self.publication} ADD TABLE ...)"
            )
        return False

    def _slot(self, cur: Any) -> bool:
        """Checks the slot, creating it when missing (True: created)."""
        cur.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        row = cur.fetchone()
        if row is not None:
            if row[0] != "pgoutput":
                raise ConfigurationError(f"replication slot {self.slot} uses plugin {row[0]}, not pgoutput")
            return False
        try:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
        except psycopg2.Error as e:
            raise ConfigurationError(
                f"could not create replication slot {self.slot} ({e.pgerror or e}): the user needs the "
                "REPLICATION attribute (ALTER ROLE ... REPLICATION), and the server free slots "
                "(max_replication_slots)"
            ) from e
        log.info("Created replication slot %s", self.slot)
        return True

    def _start_replication(self, kwargs: dict[str, str]) -> tuple[Any, Any]:
        conn = psycopg2.connect(
            self.spec.url,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            **self._options(kwargs),
        )
        cur = conn.cursor()
        cur.start_replication(
            slot_name=self.slot,
            decode=False,
            status_interval=STATUS_INTERVAL_SECONDS,
            options={"proto_version": "1", "publication_names": self.publication},
        )
        return conn, cur

    async def shards(self) -> list[str]:
        return [shard_id(0)]

    async def _keepalive(self) -> None:
        """While the shard does not read (a failing batch blocks it, the read-ahead buffer is full), answers the
        server anyway: a walsender that hears nothing for ``wal_sender_timeout`` (60 s) drops the connection."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            if self.cur is not None and loop.time() - self.last_read >= KEEPALIVE_SECONDS:
                with contextlib.suppress(Exception):
                    self.cur.send_feedback(force=True)

    async def reader(self, shard: str) -> _Reader:
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keepalive(), name="postgres keepalive")
        return _Reader(self, shard)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        self.close_replication()
        if await self.trigger_deleted():
            await self.clean_up()

    async def clean_up(self) -> bool:
        """The Trigger is being deleted: drops what its bridges created (the checkpoint's record), then takes the
        finalizer off. False when the drop failed (the Trigger stays, with its finalizer, for another try)."""
        self.close_replication()
        if (
            not self.created
        ):  # not started in this process (a disabled Trigger, deleted while its bridge was down)
            if not self.store.data:
                await self.store.load()
            self.created = self.recorded()
        if self.created:
            if not self.kwargs:
                self.kwargs = await self._connect_kwargs()
            if not await asyncio.to_thread(self._drop, self.kwargs):
                return False
        await self._finalizer(hold=False)
        return True

    async def wait_deleted(self) -> None:
        """Returns once the Trigger is being deleted (read every ``DELETION_POLL_SECONDS``, the first time
        that long after the start: :meth:`PostgresStream.run` has just read it)."""
        while True:
            await asyncio.sleep(DELETION_POLL_SECONDS)
            if await self.trigger_deleted():
                return

    def _trigger_path(self) -> str:
        return resource_path(
            f"{GROUP}/{VERSION}", "triggers", namespace=self.ctx.namespace, name=self.ctx.name
        )

    async def _finalizer(self, *, hold: bool) -> None:
        """Puts :data:`FINALIZER` on the Trigger (``hold``) or takes it off, never losing another party's
        (kubelambda.kube.change_finalizer); another Trigger of the same name is left alone."""
        if await change_finalizer(
            self.ctx.kube, self._trigger_path(), FINALIZER, hold=hold, uid=self.ctx.trigger_meta.get("uid")
        ):
            log.info("%s finalizer %s on Trigger %s", "Put" if hold else "Took", FINALIZER, self.ctx.name)

    async def trigger_deleted(self) -> bool:
        """The Trigger this bridge runs for is gone (or going): not found, a deletion timestamp, another uid.
        An API server that does not answer means no (nothing is dropped on a doubt)."""
        try:
            found = await self.ctx.kube.get_or_none(self._trigger_path())
        except Exception as e:
            log.warning(
                "Could not tell whether Trigger %s was deleted (%s): dropping nothing", self.ctx.name, e
            )
            return False
        if found is None:
            return True
        meta = found.get("metadata") or {}
        uid = self.ctx.trigger_meta.get("uid")
        return bool(meta.get("deletionTimestamp")) or (uid is not None and meta.get("uid") != uid)

    def _drop(self, kwargs: dict[str, str]) -> bool:
        """Drops the slot and the publication this Trigger's bridge created (blocking; in a thread); False when
        it could not."""
        conn = None
        try:
            conn = psycopg2.connect(self.spec.url, **self._options(kwargs))
            conn.autocommit = True
            with conn.cursor() as cur:
                if "slot" in self.created:
                    deadline = time.monotonic() + DROP_WAIT_SECONDS
                    while True:
                        try:
                            cur.execute(
                                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                "WHERE slot_name = %s",
                                (self.slot,),
                            )
                            break
                        except psycopg2.Error as e:
                            # Still active: the walsender of the connection just closed has not exited yet.
                            if e.pgcode != OBJECT_IN_USE or time.monotonic() >= deadline:
                                raise
                            time.sleep(0.1)
                    log.info("Dropped replication slot %s (its Trigger was deleted)", self.slot)
                if "publication" in self.created:
                    cur.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(self.publication)}")
                    log.info("Dropped publication %s (its Trigger was deleted)", self.publication)
            return True
        except psycopg2.Error as e:
            log.warning(
                "Could not drop what the bridge of Trigger %s created (%s): drop it by hand "
                "(SELECT pg_drop_replication_slot('%s'); DROP PUBLICATION %s)",
                self.ctx.name,
                e.pgerror or e,
                self.slot,
                self.publication,
            )
            return False
        finally:
            if conn is not None:
                conn.close()

    def close_replication(self) -> None:
        if self.repl is not None:
            with contextlib.suppress(Exception):
                self.repl.close()
            self.repl = None
            self.cur = None


class PostgresStream(StreamBridge):
    """``spec.stream.postgres``: a database's row changes, in commit order, as DynamoDB Streams records."""

    client: _PostgresClient
    connect_bounded = False
    """libpq bounds each connect (``connect_timeout``); a start then creates the slot in a thread, which waits for
    the transactions open at that moment and cannot be abandoned half-way (the slot would be made, not recorded)."""

    def client_for(self, ctx: BridgeContext) -> StreamClient:
        return _PostgresClient(ctx, self.store)

    async def run(self) -> None:
        """Streams until the Trigger is being deleted, then drops what its bridges created (retrying until that
        works) and releases the Trigger; a bridge started for a Trigger being deleted only does the latter."""
        if not await self.client.trigger_deleted():
            streaming = asyncio.create_task(super().run(), name="stream")
            watching = asyncio.create_task(self.client.wait_deleted(), name="deletion")
            try:
                await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
                if streaming.done():
                    streaming.result()
                    return
            finally:
                watching.cancel()
                streaming.cancel()
                # Its stop closes the client, which already drops what it created when it can.
                await asyncio.wait({streaming, watching})
        delay = 1.0
        while not await self.client.clean_up():
            self.ctx.status.source_reachable(False, "dropping the slot of a deleted Trigger failed; retrying")
            await asyncio.sleep(delay)
            delay = min(2 * delay, CLEANUP_RETRY_MAX_SECONDS)
        log.info(
            "Trigger %s/%s is deleted and cleaned up: waiting to be stopped",
            self.ctx.namespace,
            self.ctx.name,
        )
        await asyncio.Event().wait()

    def encode(self, batch: Sequence[StreamRecord]) -> bytes:
        # Each record's data is its finished JSON: the event is their list.
        return b'{"Records":[' + b",".join([r.data for r in batch]) + b"]}"


BRIDGE = PostgresStream
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
