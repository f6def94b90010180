"""What only the PostgreSQL backend promises: the outbox (``append_in``), writers serialised
by the advisory lock (rv order is commit order), and tables that may be dropped under it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
import psycopg
import pytest
from psycopg import sql

from watchroutes import ServiceUnavailable, UsageError
from watchroutes._core.backend import Retention, Write
from watchroutes.backends import from_url, postgres
from watchroutes.backends.postgres import PostgresLog

from .._services import POSTGRES_URL, free_port
from .harness import Harness
from .harness_postgres import harness

pytestmark = [pytest.mark.anyio, pytest.mark.network]

KEEP = Retention(max_events=10_000, max_age=600.0)
RES = {"orders": KEEP}


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as h:
        yield h


def node(h: Harness) -> PostgresLog:
    log = h.node()
    assert isinstance(log, PostgresLog)
    return log


def write(key: str, **spec: object) -> Write:
    body = msgspec.json.encode({"metadata": {"name": key}, "spec": spec})
    return Write(resource="orders", key=key, type="ADDED", object=body)


async def follow_until(log: PostgresLog, after: int, count: int) -> list[int]:
    """The rvs a follower of ``orders`` sees after ``after``, once it has seen ``count``."""
    seen: list[int] = []
    async with contextlib.aclosing(log.follow(RES, after)) as batches:
        async for batch in batches:
            seen += [r.rv for r in batch.records]
            if len(seen) >= count:
                break
    return seen


async def app_connection(log: PostgresLog) -> psycopg.AsyncConnection[tuple[object, ...]]:
    conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    table = sql.Identifier(log.schema, "app_orders")
    await conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY)").format(table)
    )
    return conn


async def insert_app_row(
    conn: psycopg.AsyncConnection[tuple[object, ...]], log: PostgresLog, key: str
) -> None:
    table = sql.Identifier(log.schema, "app_orders")
    await conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(table), (key,))


async def app_rows(
    conn: psycopg.AsyncConnection[tuple[object, ...]], log: PostgresLog
) -> list[object]:
    table = sql.Identifier(log.schema, "app_orders")
    cur = await conn.execute(sql.SQL("SELECT key FROM {} ORDER BY key").format(table))
    return [row[0] for row in await cur.fetchall()]


class Rollback(Exception):
    pass


async def test_an_outbox_write_that_rolls_back_leaves_no_trace(h: Harness) -> None:
    log = node(h)
    loaded = await log.open(RES)
    conn = await app_connection(log)
    try:

        async def change_then_fail() -> None:
            async with conn.transaction():
                await insert_app_row(conn, log, "a")
                assert await log.append_in(conn, write("a"), KEEP) > loaded.head
                raise Rollback

        with pytest.raises(Rollback):
            await change_then_fail()
        assert await app_rows(conn, log) == []
    finally:
        await conn.close()
    assert await log.head() == (loaded.epoch, loaded.head)  # the rv was never handed out
    assert await log.read("orders", loaded.head) == []
    assert (await log.open(RES)).resources["orders"].state == []
    assert (await log.append(write("b"), KEEP)).rv > loaded.head


async def test_an_outbox_write_is_seen_when_the_app_commits(h: Harness) -> None:
    log, follower = node(h), node(h)
    start = (await log.open(RES)).head
    conn = await app_connection(log)
    seen: list[int] = []

    async def watch() -> None:
        seen.extend(await follow_until(follower, start, 1))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async with conn.transaction():
                    await insert_app_row(conn, log, "a")
                    rv = await log.append_in(conn, write("a"), KEEP)
                    await anyio.sleep(0.5)  # the follower polls meanwhile: nothing yet
                    assert seen == []
        assert seen == [rv]
        assert await app_rows(conn, log) == ["a"]
    finally:
        await conn.close()


async def test_append_in_needs_a_transaction(h: Harness) -> None:
    log = node(h)
    await log.open(RES)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        with pytest.raises(UsageError):
            await log.append_in(conn, write("a"), KEEP)


async def test_concurrent_writers_never_share_or_reorder_versions(h: Harness) -> None:
    """4 instances (as 4 processes), 2 tasks each: one history, as every follower sees it."""
    writers = [node(h) for _ in range(4)]
    follower = node(h)
    start = (await follower.open(RES)).head
    per_task = 25
    total = 4 * 2 * per_task
    appended: list[int] = []
    seen: list[int] = []

    async def publish(log: PostgresLog, name: str) -> None:
        mine = [(await log.append(write(f"{name}-{i}"), KEEP)).rv for i in range(per_task)]
        assert mine == sorted(mine)
        appended.extend(mine)

    async def watch() -> None:
        seen.extend(await follow_until(follower, start, total))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for n, log in enumerate(writers):
                tg.start_soon(publish, log, f"w{n}a")
                tg.start_soon(publish, log, f"w{n}b")
    assert len(set(appended)) == total
    assert seen == sorted(appended)
    records = await follower.read("orders", start)
    assert [r.rv for r in records] == seen


async def test_a_slow_writer_delays_the_others_instead_of_being_overtaken(h: Harness) -> None:
    """The property a sequence lacks: while a transaction holds an rv uncommitted, no other
    writer commits a later one, so a follower can never pass an rv that commits afterwards."""
    slow, fast, follower = node(h), node(h), node(h)
    start = (await follower.open(RES)).head
    conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    done: dict[str, float] = {}
    seen: list[int] = []

    async def append_fast() -> None:
        done["fast_rv"] = (await fast.append(write("fast"), KEEP)).rv
        done["fast"] = time.monotonic()

    async def watch() -> None:
        seen.extend(await follow_until(follower, start, 2))

    try:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async with conn.transaction():
                    slow_rv = await slow.append_in(conn, write("slow"), KEEP)
                    tg.start_soon(append_fast)
                    await anyio.sleep(0.5)
                    assert "fast" not in done  # waiting for the lock
                    assert seen == []
                    committed = time.monotonic()
    finally:
        await conn.close()
    assert done["fast"] >= committed
    assert done["fast_rv"] > slow_rv
    assert seen == [slow_rv, int(done["fast_rv"])]


async def test_dropped_tables_are_recreated_as_a_new_epoch(h: Harness) -> None:
    log = node(h)
    loaded = await log.open(RES)
    rv = (await log.append(write("a"), KEEP)).rv
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        for name in ("meta", "events", "state", "resources"):
            await admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(log.schema, name)))
    epoch, head = await log.head()
    assert epoch != loaded.epoch
    assert head > rv
    assert (await log.append(write("a"), KEEP)).rv > head


async def test_nodes_may_create_the_log_at_once(h: Harness) -> None:
    logs = [node(h) for _ in range(4)]
    epochs: list[str] = []

    async def open_one(log: PostgresLog) -> None:
        epochs.append((await log.open(RES)).epoch)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for log in logs:
                tg.start_soon(open_one, log)
    assert len(set(epochs)) == 1


async def test_the_url_names_the_schema_and_hides_the_password(h: Harness) -> None:
    assert h.url is not None
    log = from_url(h.url)
    h.opened.append(log)
    assert isinstance(log, PostgresLog)
    assert log.schema == node(h).schema
    assert "secret" not in PostgresLog("postgresql://me:secret@db.example:5432/app").url
    assert "secret" not in PostgresLog("host=db.example user=me password=secret").url
    assert "secret" not in PostgresLog("postgresql://db.example/app?password=secret").url
    assert PostgresLog("postgresql://[::1]:5432/app").url == "postgresql://[::1]:5432/app"
    with pytest.raises(ValueError, match="schema"):
        PostgresLog(schema='x"; DROP TABLE y; --')


async def test_a_lost_connection_is_unavailable_once_then_the_log_reconnects(h: Harness) -> None:
    schema = node(h).schema
    name = f"wr_{schema}"  # the application_name of this log's connections only
    sep = "&" if "?" in POSTGRES_URL else "?"
    log = PostgresLog(f"{POSTGRES_URL}{sep}application_name={name}", schema=schema)
    h.opened.append(log)
    start = (await log.open(RES)).head
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:

        async def follow_and_kill() -> None:
            async for _ in log.follow(RES, start):
                await admin.execute(kill, (name,))  # the follower's and the pooled connection

        with anyio.fail_after(10), pytest.raises(ServiceUnavailable, match="unavailable"):
            await follow_and_kill()
        with pytest.raises(ServiceUnavailable):
            await log.append(write("a"), KEEP)
    assert (await log.append(write("a"), KEEP)).rv > start


async def test_a_pooled_connection_closed_while_idle_is_replaced(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "PROBE_AFTER", 0.0)  # check every pooled connection
    schema = node(h).schema
    name = f"wr_{schema}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    log = PostgresLog(f"{POSTGRES_URL}{sep}application_name={name}", schema=schema)
    h.opened.append(log)
    start = (await log.open(RES)).head
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        await admin.execute(kill, (name,))
    assert (await log.append(write("a"), KEEP)).rv > start


async def test_errors_name_the_log_without_its_password() -> None:
    dead = PostgresLog(f"postgresql://me:secret@127.0.0.1:{free_port()}/test", timeout=1.0)
    with anyio.fail_after(5), pytest.raises(ServiceUnavailable) as info:
        await dead.head()
    assert dead.url in info.value.message
    assert "secret" not in info.value.message


async def test_append_in_refuses_a_snapshot_older_than_the_lock(h: Harness) -> None:
    log = node(h)
    await log.open(RES)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        with pytest.raises(UsageError, match="READ COMMITTED"):
            await log.append_in(conn, write("a"), KEEP)


async def test_a_writer_waits_for_the_lock_no_longer_than_the_timeout(h: Harness) -> None:
    log = node(h)
    start = (await log.open(RES)).head
    impatient = PostgresLog(POSTGRES_URL, schema=log.schema, timeout=0.5)
    h.opened.append(impatient)
    await impatient.head()  # connected, tables known
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as holder:
        await holder.execute("SELECT pg_advisory_xact_lock(%s)", (log.lock_key,))
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no answer within"):
            await impatient.append(write("a"), KEEP)
        assert time.monotonic() - began < 2
        await holder.rollback()
    assert (await impatient.append(write("a"), KEEP)).rv > start
    assert [r.key for r in await log.read("orders", start)] == ["a"]


def sync_app_connection(log: PostgresLog) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(POSTGRES_URL, autocommit=True)
    table = sql.Identifier(log.schema, "app_orders")
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY)").format(table))
    return conn


async def test_the_sync_outbox_commits_and_rolls_back_with_the_app(h: Harness) -> None:
    """``append_in_sync``: the same statements on a synchronous connection (Django's)."""
    log = node(h)
    loaded = await log.open(RES)
    table = sql.Identifier(log.schema, "app_orders")

    def work() -> int:
        with sync_app_connection(log) as conn:

            def change_then_fail() -> None:
                with conn.transaction():
                    conn.execute(sql.SQL("INSERT INTO {} VALUES ('a')").format(table))
                    log.append_in_sync(conn, write("a"), KEEP)
                    raise Rollback

            with pytest.raises(Rollback):
                change_then_fail()
            with pytest.raises(UsageError, match="needs a transaction"):
                log.append_in_sync(conn, write("b"), KEEP)
            with conn.transaction():
                conn.execute(sql.SQL("INSERT INTO {} VALUES ('b')").format(table))
                return log.append_in_sync(conn, write("b"), KEEP)

    rv = await anyio.to_thread.run_sync(work)
    records = await log.read("orders", loaded.head)
    assert [(r.rv, r.key) for r in records] == [(rv, "b")]  # "a" rolled back with its row


async def test_hub_publish_in_reaches_watchers_at_the_commit_only(h: Harness) -> None:
    """``hub.publish_in``: the hub's rules, the outbox's atomicity; the watchers of every node
    get the change through the follower once the app commits."""
    from watchroutes import Hub, Invalid
    from watchroutes._runtime.hub import RequestInfo

    hub = Hub(backend=node(h), heartbeat=1.0)
    orders = hub.resource("orders", kind="Order")
    table = sql.Identifier(node(h).schema, "app_orders")
    async with hub:
        reply = await hub.answer("orders", RequestInfo(query=[("watch", "true")]))
        assert reply.stream is not None
        seen: list[bytes] = []
        arrived = anyio.Event()

        async def send(data: bytes) -> None:
            seen.append(data)
            if b'"o-1"' in data:
                arrived.set()

        def work() -> int:
            with sync_app_connection(node(h)) as conn:
                bad = {"metadata": {"name": "Not_A_Name"}}
                with pytest.raises(Invalid), conn.transaction():  # the hub's object rules
                    orders.publish_in(conn, "ADDED", bad)
                with conn.transaction():
                    conn.execute(sql.SQL("INSERT INTO {} VALUES ('o-1')").format(table))
                    rv = orders.publish_in(conn, "ADDED", {"metadata": {"name": "o-1"}})
                    time.sleep(0.3)  # not visible before the commit
                    assert not any(b"o-1" in chunk for chunk in seen)
                return rv

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reply.stream.run, send)
                rv = await anyio.to_thread.run_sync(work)
                await arrived.wait()
                tg.cancel_scope.cancel()
        assert any(str(rv).encode() in chunk for chunk in seen)
        assert (await orders.aget("o-1"))["metadata"]["resourceVersion"] == str(rv)


async def test_publish_in_needs_the_postgres_log() -> None:
    from watchroutes import Hub

    orders = Hub().resource("orders")
    with pytest.raises(UsageError, match="PostgreSQL"):
        orders.publish_in(object(), "ADDED", {"metadata": {"name": "a"}})
