"""The PostgreSQL log backend (``pip install 'watchroutes[postgres]'``): psycopg 3, asyncio.

Layout, all tables in one schema (``watchroutes`` unless told otherwise):

* ``meta``: one row, ``epoch``, ``start`` (the epoch's first rv) and ``head``;
* ``events``: one row per change, ``rv`` (primary key), ``resource``, ``key``, ``type``,
  ``object`` (JSON as ``bytea``), ``prev`` (the previous object) and ``prev_rv``;
* ``state``: the object state, ``(resource, key) -> (rv, object)``;
* ``resources``: per resource, the compaction ``watermark`` (``NULL``: none evicted yet, the
  epoch's start) and the number of ``retained`` events (so trimming by count reads one row);
* channel ``<schema>_appended`` (LISTEN/NOTIFY): the rv of each append, the followers' wake-up.

Versions are not a sequence: a ``bigserial`` value is taken at insert but becomes visible at
commit, so a follower could read past an rv that commits later and lose it. Each append takes
a transaction-scoped advisory lock (one key per schema) instead, then assigns
``rv = max(head + 1, now µs)`` from the database clock (``clock_timestamp()``), checks the
write's expectation against the state, inserts the event, updates the state and the head, trims
the resource by count and age (recording the watermark) and notifies, all in the transaction:
writers serialise, so rv order is commit order. :meth:`PostgresLog.append_in` does this inside
the caller's transaction (an outbox: the app's change and the event commit together).

Loads and follower reads are one ``REPEATABLE READ`` transaction each, so a node always sees
the records, the state and the head of one instant. A missing ``meta`` row (a new or wiped
log) starts a new epoch at the current time, above every rv handed out before; missing tables
are created (under the same lock, so two nodes may open at once).

Each process follows with one dedicated ``LISTEN`` connection (never one per watcher) and
reads what is new of its resources on each wake-up and at least every ``poll_interval``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

try:
    import psycopg
    from psycopg import errors, pq, sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.rows import tuple_row
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.backends.postgres needs psycopg 3: pip install 'watchroutes[postgres]'"
    ) from exc

import anyio

from .._core.backend import (
    Appended,
    Batch,
    Loaded,
    Record,
    ResourceLoad,
    Retention,
    Write,
    check_expectation,
)
from .._core.errors import ClientError, Expired, NotFound, ServiceUnavailable, UsageError
from .._core.events import EventType

__all__ = ["PostgresLog"]

#: Seconds between follower reads when no wake-up arrives (an epoch change is seen this fast).
POLL_INTERVAL: Final = 1.0
#: Connections one instance keeps open for appends and reads (the follower has its own).
POOL_SIZE: Final = 8
#: Seconds a pooled connection may sit idle before it is checked (a restarted server, a
#: firewall or ``idle_session_timeout`` may have closed it meanwhile).
PROBE_AFTER: Final = 30.0

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,53}")  # + "_appended" stays within 63 bytes
_TABLES: Final = ("meta", "events", "state", "resources")
_NOW_US: Final = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
_EVENT_COLUMNS: Final = "rv, resource, key, type, object, prev, prev_rv"
# A dead or unreachable database (or a call that took longer than the timeout).
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)


def _in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise UsageError(
            "append_in needs a transaction: `with conn.transaction()` (Django: inside "
            "`transaction.atomic()`)"
        )


_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.meta (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  epoch text NOT NULL,
  start bigint NOT NULL,
  head bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.events (
  rv bigint PRIMARY KEY,
  resource text NOT NULL,
  key text NOT NULL,
  type text NOT NULL,
  object bytea NOT NULL,
  prev bytea,
  prev_rv bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_resource_rv ON {s}.events (resource, rv);
CREATE TABLE IF NOT EXISTS {s}.state (
  resource text NOT NULL,
  key text NOT NULL,
  rv bigint NOT NULL,
  object bytea NOT NULL,
  PRIMARY KEY (resource, key)
);
CREATE TABLE IF NOT EXISTS {s}.resources (
  resource text PRIMARY KEY,
  watermark bigint,
  retained bigint NOT NULL DEFAULT 0
);
"""

# A new epoch (under the lock, when the meta row is missing): above any rv left behind, and
# starting from nothing.
_NEW_EPOCH: Final = f"""
WITH fresh AS (
  INSERT INTO {{s}}.meta (epoch, start, head)
  SELECT %(epoch)s, t.start, t.start
  FROM (SELECT greatest({_NOW_US}, coalesce(max(rv), 0) + 1) AS start FROM {{s}}.events) t
  ON CONFLICT (id) DO NOTHING
  RETURNING start
), events AS (
  DELETE FROM {{s}}.events WHERE EXISTS (SELECT FROM fresh)
), state AS (
  DELETE FROM {{s}}.state WHERE EXISTS (SELECT FROM fresh)
)
DELETE FROM {{s}}.resources WHERE EXISTS (SELECT FROM fresh)
"""

_CURRENT: Final = f"""
SELECT m.epoch, m.head, {_NOW_US}, s.rv, s.object, coalesce(r.retained, 0),
  current_setting('transaction_isolation')
FROM {{s}}.meta m
LEFT JOIN {{s}}.state s ON s.resource = %(res)s AND s.key = %(key)s
LEFT JOIN {{s}}.resources r ON r.resource = %(res)s
"""

_UPSERT_STATE: Final = """
INSERT INTO {s}.state (resource, key, rv, object) VALUES (%(res)s, %(key)s, %(rv)s, %(obj)s)
ON CONFLICT (resource, key) DO UPDATE SET rv = excluded.rv, object = excluded.object
"""
_DELETE_STATE: Final = "DELETE FROM {s}.state WHERE resource = %(res)s AND key = %(key)s"

# The event, the state, the head, the trim (the statement's snapshot does not see the new
# event: the oldest ``over`` of the others go, and every one older than ``cut``) and the
# wake-up, in one statement.
_APPEND: Final = """
WITH event AS (
  INSERT INTO {s}.events (rv, resource, key, type, object, prev, prev_rv)
  VALUES (%(rv)s, %(res)s, %(key)s, %(type)s, %(obj)s, %(prev)s, %(prev_rv)s)
), state AS (
  {state}
), head AS (
  UPDATE {s}.meta SET head = %(rv)s
), gone AS (
  DELETE FROM {s}.events WHERE resource = %(res)s AND rv <= greatest(
    (SELECT rv FROM {s}.events WHERE resource = %(res)s
     ORDER BY rv OFFSET %(skip)s LIMIT %(take)s),
    (SELECT max(rv) FROM {s}.events WHERE resource = %(res)s AND rv < %(cut)s)
  )
  RETURNING rv
), counted AS (
  INSERT INTO {s}.resources AS r (resource, watermark, retained)
  SELECT %(res)s, max(rv), %(retained)s - count(*) FROM gone
  ON CONFLICT (resource) DO UPDATE
  SET watermark = coalesce(excluded.watermark, r.watermark), retained = excluded.retained
)
SELECT pg_notify(%(channel)s, %(rv)s::text)
"""

_READ_ONLY: Final = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_META: Final = "SELECT epoch, start, head FROM {s}.meta"
_WATERMARKS: Final = """
SELECT resource, watermark FROM {s}.resources
WHERE resource = ANY(%(names)s) AND watermark IS NOT NULL
"""
_EVENTS_AFTER: Final = f"""
SELECT {_EVENT_COLUMNS} FROM {{s}}.events
WHERE resource = ANY(%(names)s) AND rv > %(after)s ORDER BY rv
"""
_STATE: Final = """
SELECT rv, resource, key, object FROM {s}.state WHERE resource = ANY(%(names)s) ORDER BY rv
"""


class _NoEpoch(Exception):
    """The meta row is missing (a new or wiped log): create the epoch, then read again."""


def _redacted(url: str) -> str:
    if "://" not in url:  # a libpq "key=value" string
        params = conninfo_to_dict(url)
        if "password" in params:
            params["password"] = "***"
        return make_conninfo("", **params)
    parts = urlsplit(url)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    parts = parts._replace(query=query)
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _record(row: Sequence[Any]) -> Record:
    rv, resource, key, type_, obj, prev, prev_rv = row
    return Record(
        rv, resource, key, type_, bytes(obj), None if prev is None else bytes(prev), prev_rv
    )


async def _drain(notifies: AsyncGenerator[psycopg.Notify]) -> None:
    async with contextlib.aclosing(notifies):
        async for _ in notifies:
            pass


class PostgresLog:
    """A hub log in PostgreSQL. ``url`` as libpq takes it (``postgresql://user@host/db``);
    ``schema`` separates several hubs' logs in one database. Calls that take longer than
    ``timeout`` seconds (connecting included) raise ``ServiceUnavailable``."""

    def __init__(
        self,
        url: str = "postgresql://postgres@127.0.0.1:5432/test",
        *,
        schema: str = "watchroutes",
        poll_interval: float = POLL_INTERVAL,
        timeout: float = 5.0,
    ) -> None:
        if not _SCHEMA.fullmatch(schema):
            raise ValueError("schema must be a plain SQL identifier ([a-z_][a-z0-9_]*, ≤ 54)")
        self.url = _redacted(url)
        self.schema = schema
        self.channel = f"{schema}_appended"
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._dsn = url
        digest = hashlib.blake2b(f"watchroutes:{schema}".encode(), digest_size=8).digest()
        #: The advisory lock every writer of this log takes (``pg_advisory_xact_lock``).
        self.lock_key = int.from_bytes(digest, "big", signed=True)
        self._idle: list[tuple[Conn, float]] = []  # and since when
        self._slots = anyio.Semaphore(POOL_SIZE)
        self._ready = False  # the tables are known to exist

        def q(text: str, **parts: sql.Composable) -> sql.Composed:
            return sql.SQL(text).format(s=sql.Identifier(schema), **parts)

        self._q_ddl = q(_DDL)
        self._q_new_epoch = q(_NEW_EPOCH)
        self._q_current = q(_CURRENT)
        self._q_append = {
            deleted: q(_APPEND, state=q(_DELETE_STATE if deleted else _UPSERT_STATE))
            for deleted in (False, True)
        }
        self._q_meta = q(_META)
        self._q_watermarks = q(_WATERMARKS)
        self._q_events_after = q(_EVENTS_AFTER)
        self._q_state = q(_STATE)
        self._q_listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))

    # -- connections ---------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        reason = f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError) else exc
        return ServiceUnavailable(f"the event log at {self.url} is unavailable: {reason}")

    async def _connect(self) -> Conn:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(2, math.ceil(self.timeout))
        )
        # Whatever the server's default_transaction_isolation: appends must see the
        # newest head once they hold the lock (reads set REPEATABLE READ themselves).
        await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)
        return conn

    async def _acquire(self) -> Conn:
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < PROBE_AFTER:
                return conn
            try:
                await conn.execute("")
                return conn
            except psycopg.Error:
                await conn.close()
        return await self._connect()

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` on a pooled connection, within the timeout, creating the tables and the
        epoch first where they are missing."""
        try:
            with anyio.fail_after(self.timeout):
                async with self._slots:
                    conn = await self._acquire()
                    reuse = False
                    try:
                        result = await self._attempt(conn, work)
                        reuse = True
                        return result
                    except (ClientError, ValueError):
                        reuse = True  # an answer, not a failure of the connection
                        raise
                    finally:
                        if reuse and conn.info.transaction_status == pq.TransactionStatus.IDLE:
                            self._idle.append((conn, time.monotonic()))
                        else:
                            await conn.close()
        except _UNAVAILABLE as exc:
            await self.close()  # the idle connections are likely dead too
            raise self._unavailable(exc) from exc

    async def _attempt(self, conn: Conn, work: Callable[[Conn], Awaitable[T]]) -> T:
        for _ in range(3):
            try:
                if not self._ready:
                    await self._prepare(conn, tables=True)
                return await work(conn)
            except _NoEpoch:
                await self._prepare(conn, tables=False)
            except (errors.UndefinedTable, errors.InvalidSchemaName):
                self._ready = False  # dropped under us: create them again
        raise ServiceUnavailable(f"the event log at {self.url} keeps disappearing")

    async def _prepare(self, conn: Conn, *, tables: bool) -> None:
        """Create what is missing: the tables (when ``tables``) and the epoch."""
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            if tables:
                names = [f"{self.schema}.{name}" for name in _TABLES]
                await cur.execute(
                    "SELECT count(to_regclass(n)) FROM unnest(%s::text[]) n", (names,)
                )
                row = await cur.fetchone()
                if row is None or row[0] != len(_TABLES):
                    await cur.execute(self._q_ddl)
            await cur.execute(self._q_new_epoch, {"epoch": uuid.uuid4().hex})
        self._ready = True

    async def _snapshot(self, cur: Cursor) -> tuple[str, int, int]:
        """Begin a read of one instant (in ``conn.transaction()``): epoch, start, head."""
        await cur.execute(_READ_ONLY)
        await cur.execute(self._q_meta)
        row = await cur.fetchone()
        if row is None:
            raise _NoEpoch
        epoch, start, head = row
        return epoch, start, head

    # -- the log -------------------------------------------------------------------------------

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        names = list(retention)

        async def load(conn: Conn) -> Loaded:
            async with conn.transaction(), conn.cursor(binary=True) as cur:
                epoch, start, head = await self._snapshot(cur)
                await cur.execute(self._q_watermarks, {"names": names})
                marks = dict(await cur.fetchall())
                await cur.execute(self._q_events_after, {"names": names, "after": 0})
                events = [_record(row) for row in await cur.fetchall()]
                await cur.execute(self._q_state, {"names": names})
                states = await cur.fetchall()
            resources = {name: ResourceLoad(marks.get(name, start), [], []) for name in names}
            for record in events:
                resources[record.resource].records.append(record)
            for rv, resource, key, obj in states:
                resources[resource].state.append(Record(rv, resource, key, "ADDED", bytes(obj)))
            return Loaded(epoch, head, resources)

        return await self._run(load)

    async def append(self, write: Write, retention: Retention) -> Appended:
        async def append(conn: Conn) -> Appended:
            async with conn.transaction():
                return await self._append(conn, write, retention)

        return await self._run(append)

    async def append_in(
        self, conn: psycopg.AsyncConnection[Any], write: Write, retention: Retention
    ) -> int:
        """Append inside the caller's open transaction on ``conn`` (an outbox: the app's own
        change and the event commit or roll back together); returns the rv.

        The tables must exist (:meth:`open` creates them). From this call to the caller's
        commit every other writer of the log waits (the advisory lock), so commit soon; the
        followers' wake-up (``NOTIFY``) is delivered at that commit. The transaction must be
        ``READ COMMITTED`` (the default; a stricter one is a ``UsageError``: its snapshot may
        predate the lock, and with it the head).
        """
        _in_transaction(conn)
        try:
            return (await self._append(conn, write, retention)).rv
        except (*_UNAVAILABLE, errors.UndefinedTable, errors.InvalidSchemaName) as exc:
            raise self._unavailable(exc) from exc

    def append_in_sync(
        self, conn: psycopg.Connection[Any], write: Write, retention: Retention
    ) -> int:
        """:meth:`append_in` on a synchronous connection, in the caller's thread (Django's
        ORM connection inside ``transaction.atomic()``, a WSGI request's connection)."""
        _in_transaction(conn)
        steps = self._append_steps(write, retention)
        try:
            with conn.cursor(row_factory=tuple_row) as cur:
                row: Any = None
                while True:
                    query, params, fetch = steps.send(row)
                    cur.execute(query, params)
                    row = cur.fetchone() if fetch else None
        except StopIteration as done:
            appended: Appended = done.value
            return appended.rv
        except (*_UNAVAILABLE, errors.UndefinedTable, errors.InvalidSchemaName) as exc:
            raise self._unavailable(exc) from exc

    async def _append(self, conn: Conn, write: Write, retention: Retention) -> Appended:
        steps = self._append_steps(write, retention)
        async with conn.cursor(row_factory=tuple_row) as cur:
            row: Any = None
            try:
                while True:
                    query, params, fetch = steps.send(row)
                    await cur.execute(query, params)
                    row = await cur.fetchone() if fetch else None
            except StopIteration as done:
                appended: Appended = done.value
                return appended

    def _append_steps(
        self, write: Write, retention: Retention
    ) -> Generator[tuple[str | sql.SQL | sql.Composed, Any, bool], Any, Appended]:
        """The statements of one append, whatever drives them: each step yields ``(query,
        params, fetch)`` and receives the row fetched (``fetch``) or ``None``."""
        yield "SELECT pg_advisory_xact_lock(%s)", (self.lock_key,), False
        key = {"res": write.resource, "key": write.key}
        row = yield self._q_current, key, True
        if row is None:  # a new or wiped log: we hold the lock, start the epoch here
            yield self._q_new_epoch, {"epoch": uuid.uuid4().hex}, False
            row = yield self._q_current, key, True
            assert row is not None
        _, head, now, current_rv, current, retained, isolation = row
        if isolation != "read committed":  # its snapshot may predate the lock
            raise UsageError(f"append_in needs a READ COMMITTED transaction, not {isolation}")
        check_expectation(write, current_rv)
        obj = write.object
        if obj is None:
            if current is None:
                raise NotFound(f'{write.resource} "{write.key[:100]}" not found')
            obj = current
        rv: int = max(head + 1, now)
        over = retained + 1 - retention.max_events
        yield (
            self._q_append[write.type == EventType.DELETED],
            {
                **key,
                "rv": rv,
                "type": write.type,
                "obj": obj,
                "prev": current,
                "prev_rv": current_rv or 0,
                "skip": max(over - 1, 0),
                "take": 1 if over > 0 else 0,
                "cut": now - int(retention.max_age * 1_000_000),
                "retained": retained + 1,
                "channel": self.channel,
            },
            False,
        )
        return Appended(rv, bytes(obj))

    async def head(self) -> tuple[str, int]:
        async def head(conn: Conn) -> tuple[str, int]:
            async with conn.cursor() as cur:
                await cur.execute(self._q_meta)
                row = await cur.fetchone()
            if row is None:
                raise _NoEpoch
            return row[0], row[2]

        return await self._run(head)

    async def read(self, resource: str, after: int) -> list[Record]:
        async def read(conn: Conn) -> list[Record]:
            async with conn.transaction(), conn.cursor(binary=True) as cur:
                _, start, _ = await self._snapshot(cur)
                await cur.execute(self._q_watermarks, {"names": [resource]})
                row = await cur.fetchone()
                watermark = start if row is None else row[1]
                if after < watermark:
                    raise Expired(f"too old resource version: {after} ({watermark})")
                await cur.execute(self._q_events_after, {"names": [resource], "after": after})
                return [_record(row) for row in await cur.fetchall()]

        return await self._run(read)

    async def _pull(self, conn: Conn, names: list[str], after: int) -> Batch:
        async with conn.transaction(), conn.cursor(binary=True) as cur:
            epoch, start, head = await self._snapshot(cur)
            records: list[Record] = []
            watermark = 0
            if head > after:
                # the watermarks of the same instant: above ``after``, records were evicted
                # before this follower read them (it must reload, not skip them)
                await cur.execute(self._q_watermarks, {"names": names})
                watermark = max([start, *(mark for _, mark in await cur.fetchall())])
                await cur.execute(self._q_events_after, {"names": names, "after": after})
                records = [_record(row) for row in await cur.fetchall()]
        return Batch(epoch, head, records, watermark=watermark)

    async def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        names = list(resources)
        epoch = None
        conn: Conn | None = None
        try:
            with anyio.fail_after(self.timeout):
                conn = await self._connect()
                await conn.execute(self._q_listen)  # before the first read: no wake-up is missed
            while True:
                with anyio.fail_after(self.timeout):
                    batch = await self._attempt(conn, partial(self._pull, names=names, after=after))
                if batch.head != after or batch.epoch != epoch:
                    epoch, after = batch.epoch, batch.head
                    yield batch
                # Wait for a wake-up (or the poll interval), then drain the others queued:
                # one read serves them all. Those that come during a read wait in psycopg.
                await _drain(conn.notifies(timeout=self.poll_interval, stop_after=1))
                await _drain(conn.notifies(timeout=0))
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()
