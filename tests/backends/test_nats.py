"""What only the NATS JetStream backend promises: optimistic concurrency per key (one winner,
the others AlreadyExists or Conflict, exact previous objects), versions that are stream
sequences counted from the stream's creation (a recreated stream is a new epoch above the old
one), and a state bucket that may lag the stream without a late node noticing."""

from __future__ import annotations

import base64
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
import nats
import pytest

from watchroutes import AlreadyExists, Conflict, ServiceUnavailable
from watchroutes._core.backend import ABSENT, Expect, Retention, Write
from watchroutes.backends import from_url
from watchroutes.backends.nats import NatsLog

from .._services import NATS_URL, free_port
from .harness import Harness
from .harness_nats import harness

pytestmark = [pytest.mark.anyio, pytest.mark.network]

KEEP = Retention(max_events=10_000, max_age=600.0)
RES = {"orders": KEEP}


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as h:
        yield h


async def opened(h: Harness) -> NatsLog:
    log = h.node()
    assert isinstance(log, NatsLog)
    await log.open(RES)
    return log


def obj(key: str, **spec: object) -> bytes:
    return msgspec.json.encode({"metadata": {"name": key}, "spec": spec})


def write(key: str, type_: str = "ADDED", expect: Expect = None, **spec: object) -> Write:
    return Write(resource="orders", key=key, type=type_, object=obj(key, **spec), expect=expect)


def token(name: str) -> str:
    """A name as the log spells it in a subject (base64url, no padding)."""
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


async def forget_state(log: NatsLog, key: str) -> None:
    """Remove a key's state entry, as a writer that failed after its publish leaves it."""
    client = await nats.connect(NATS_URL)
    try:
        subject = f"$KV.{log.bucket}.{token('orders')}.{token(key)}"
        await client.jetstream().purge_stream(f"KV_{log.bucket}", subject=subject)
    finally:
        await client.close()


async def race(attempts: list[tuple[NatsLog, Write]]) -> list[int | Exception]:
    """Run the appends at once; each one's rv or client error."""
    results: list[int | Exception] = [0] * len(attempts)

    async def one(i: int, log: NatsLog, w: Write) -> None:
        try:
            results[i] = (await log.append(w, KEEP)).rv
        except (AlreadyExists, Conflict) as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i, (log, w) in enumerate(attempts):
            tg.start_soon(one, i, log, w)
    return results


async def test_racing_creates_have_one_winner(h: Harness) -> None:
    nodes = [await opened(h) for _ in range(4)]
    _, start = await nodes[0].head()
    results = await race(
        [(log, write("a", expect=ABSENT, by=i)) for i, log in enumerate(nodes * 3)]
    )
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, int))
    assert [r.rv for r in await nodes[1].read("orders", start)] == winners


async def test_updates_from_a_stale_version_conflict(h: Harness) -> None:
    nodes = [await opened(h) for _ in range(4)]
    rv1 = (await nodes[0].append(write("a", qty=1), KEEP)).rv
    attempts = [(log, write("a", "MODIFIED", expect=rv1, qty=i)) for i, log in enumerate(nodes * 2)]
    results = await race(attempts)
    (winner,) = [r for r in results if isinstance(r, int)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == len(attempts) - 1
    assert all(str(winner) in c.message for c in conflicts)  # names the current version


async def test_concurrent_writers_keep_the_previous_objects_exact(h: Harness) -> None:
    nodes = [await opened(h) for _ in range(4)]
    first = (await nodes[0].append(write("a", n=-1), KEEP)).rv
    attempts = [(log, write("a", "MODIFIED", n=i)) for i, log in enumerate(nodes * 5)]
    results = await race(attempts)
    assert all(isinstance(r, int) for r in results)  # unconditional: all land, in some order
    records = await nodes[1].read("orders", first - 1)
    assert len(records) == 1 + len(attempts)
    for before, after in itertools.pairwise(records):
        assert (after.prev_rv, after.prev) == (before.rv, before.object)


async def test_versions_are_stream_sequences_from_its_creation(h: Harness) -> None:
    log = h.node()
    before = time.time_ns() // 1000
    loaded = await log.open(RES)
    assert before - 1_000_000 < int(loaded.epoch) == loaded.head  # the creation time, in µs
    rvs = [(await log.append(write(f"o-{i}"), KEEP)).rv for i in range(3)]
    assert rvs == [loaded.head + 1, loaded.head + 2, loaded.head + 3]


async def test_a_recreated_stream_is_a_new_epoch_above_the_old_versions(h: Harness) -> None:
    log = await opened(h)
    epoch, _ = await log.head()
    old = [(await log.append(write(k), KEEP)).rv for k in ("a", "b")]
    client = await nats.connect(NATS_URL)
    try:  # only the stream: the state bucket still holds the old epoch's objects
        await client.jetstream().delete_stream(log.stream)
    finally:
        await client.close()
    with anyio.fail_after(10):
        async with contextlib.aclosing(log.follow(RES, old[-1])) as batches:
            batch = await anext(batches)
    assert batch.epoch != epoch
    assert batch.head > old[-1]
    fresh = await log.open(RES)
    assert fresh.epoch == batch.epoch
    assert fresh.resources["orders"].state == []  # no object of the old epoch comes back
    assert (await log.append(write("a", expect=ABSENT), KEEP)).rv == int(fresh.epoch) + 1


async def test_a_late_node_corrects_a_lagging_state_bucket(h: Harness) -> None:
    log = await opened(h)
    await log.append(write("a", qty=1), KEEP)
    rv = (await log.append(write("a", "MODIFIED", qty=2), KEEP)).rv
    await log.append(write("b", qty=1), KEEP)
    await forget_state(log, "a")
    loaded = await h.node().open(RES)
    state = {r.key: (r.rv, r.object) for r in loaded.resources["orders"].state}
    assert state["a"] == (rv, obj("a", qty=2))


async def test_retention_settles_the_state_before_it_evicts(h: Harness) -> None:
    log = await opened(h)
    small = Retention(max_events=2, max_age=600.0)
    rv = (await log.append(write("a", qty=1), small)).rv
    await forget_state(log, "a")  # its writer failed before the state bucket
    for key in ("b", "c", "d"):
        await log.append(write(key), small)
    loaded = await h.node().open(RES)
    part = loaded.resources["orders"]
    assert [r.key for r in part.records] == ["c", "d"]  # "a" has left the stream
    assert {r.key: r.rv for r in part.state}["a"] == rv  # but not the state
    assert (await log.append(write("a", "MODIFIED", expect=rv, qty=2), small)).rv > rv


async def test_a_deleted_object_stays_deleted_after_its_record_is_evicted(h: Harness) -> None:
    log = await opened(h)
    small = Retention(max_events=1, max_age=600.0)
    await log.append(write("a"), small)
    await log.append(Write(resource="orders", key="a", type="DELETED", object=None), small)
    await log.append(write("b"), small)
    loaded = await h.node().open(RES)
    assert [r.key for r in loaded.resources["orders"].state] == ["b"]
    assert (await log.append(write("a", expect=ABSENT), small)).rv > 0


async def test_any_string_is_a_resource_or_a_key(h: Harness) -> None:
    log = h.node()
    names = {"": KEEP, "orders.v1 *>": KEEP, "ünï/cødé": KEEP}
    await log.open(names)
    for name in names:
        for key in ("", "a.b", "*", "> x", "k\u00e9y/1"):
            await log.append(Write(resource=name, key=key, type="ADDED", object=obj(key)), KEEP)
    loaded = await h.node().open(names)
    for name, part in loaded.resources.items():
        assert sorted(r.key for r in part.state) == ["", "*", "> x", "a.b", "k\u00e9y/1"]
        assert {r.resource for r in part.records} == {name}


async def test_the_url_names_the_stream_and_hides_the_password(h: Harness) -> None:
    assert h.url is not None
    log = from_url(h.url)
    assert isinstance(log, NatsLog)
    h.opened.append(log)
    assert log.stream == h.url.rsplit("=", 1)[1]
    assert (await log.open(RES)).head > 0
    assert NatsLog("nats://me:secret@nats.example:4222").url == "nats://me:***@nats.example:4222"
    assert "s3cret" not in NatsLog("nats://s3cret@nats.example:4222").url
    with pytest.raises(ValueError, match="stream"):
        NatsLog(stream="a.b")


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    dead = NatsLog(f"nats://me:secret@127.0.0.1:{free_port()}", timeout=1.0)
    with anyio.fail_after(5), pytest.raises(ServiceUnavailable) as info:
        await dead.append(write("a"), KEEP)
    assert "me:***@127.0.0.1" in info.value.message
    assert "secret" not in info.value.message
    await dead.close()
