"""The log backend contract (watchroutes._core.backend), run against every engine."""

from __future__ import annotations

import time

import anyio
import msgspec
import pytest

from watchroutes import AlreadyExists, Conflict, Expired, NotFound, ServiceUnavailable
from watchroutes._core.backend import ABSENT, PRESENT, Batch, LogBackend, Retention, Write

from .harness import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.network]

KEEP = Retention(max_events=10_000, max_age=600.0)
RES = {"orders": KEEP, "things": KEEP}


def obj(name: str, **spec: object) -> bytes:
    return msgspec.json.encode({"metadata": {"name": name}, "spec": spec})


def write(key: str, type_: str = "ADDED", expect: object = None, **spec: object) -> Write:
    body = None if type_ == "DELETED" and not spec else obj(key, **spec)
    return Write(resource="orders", key=key, type=type_, object=body, expect=expect)  # type: ignore[arg-type]


async def opened(h: Harness, resources: dict[str, Retention] = RES) -> LogBackend:
    log = h.node()
    await log.open(resources)
    return log


async def test_a_new_log_starts_at_the_current_time(harness: Harness) -> None:
    log = harness.node()
    before = time.time_ns() // 1000
    loaded = await log.open(RES)
    assert loaded.epoch
    assert before - 5_000_000 <= loaded.head <= time.time_ns() // 1000 + 5_000_000
    for name in RES:
        part = loaded.resources[name]
        assert part.records == []
        assert part.state == []
        assert part.watermark == loaded.head  # an rv from before this log is Expired
    assert await log.head() == (loaded.epoch, loaded.head)


async def test_versions_increase_and_never_run_behind_the_clock(harness: Harness) -> None:
    log = await opened(harness)
    _, start = await log.head()
    rvs = [(await log.append(write(f"o-{i}"), KEEP)).rv for i in range(20)]
    assert rvs == sorted(set(rvs))
    assert rvs[0] > start
    assert rvs[-1] >= time.time_ns() // 1000 - 5_000_000
    assert (await log.head())[1] == rvs[-1]


async def test_expectations_are_checked_with_the_append(harness: Harness) -> None:
    log = await opened(harness)
    rv1 = (await log.append(write("a", expect=ABSENT), KEEP)).rv
    with pytest.raises(AlreadyExists):
        await log.append(write("a", expect=ABSENT), KEEP)
    with pytest.raises(NotFound):
        await log.append(write("b", "MODIFIED", expect=PRESENT), KEEP)
    with pytest.raises(Conflict, match=str(rv1)):
        await log.append(write("a", "MODIFIED", expect=rv1 - 1, qty=2), KEEP)
    rv2 = (await log.append(write("a", "MODIFIED", expect=rv1, qty=2), KEEP)).rv
    with pytest.raises(NotFound):
        await log.append(write("zz", "DELETED", expect=PRESENT), KEEP)
    rv3 = (await log.append(write("a", "DELETED", expect=rv2), KEEP)).rv
    records = await log.read("orders", rv1 - 1)
    assert [(r.rv, r.type) for r in records] == [
        (rv1, "ADDED"),
        (rv2, "MODIFIED"),
        (rv3, "DELETED"),
    ]
    # failed writes appended nothing and took no version
    assert (await log.head())[1] == rv3


async def test_each_record_keeps_the_previous_object(harness: Harness) -> None:
    log = await opened(harness)
    rv1 = (await log.append(write("a", qty=1), KEEP)).rv
    rv2 = (await log.append(write("a", "MODIFIED", qty=2), KEEP)).rv
    rv3 = (await log.append(write("a", "DELETED"), KEEP)).rv  # no object: the current one
    first, second, third = await log.read("orders", rv1 - 1)
    assert (first.prev, first.prev_rv) == (None, 0)
    assert (second.prev, second.prev_rv) == (obj("a", qty=1), rv1)
    assert third.object == obj("a", qty=2)
    assert (third.prev, third.prev_rv) == (obj("a", qty=2), rv2)
    assert third.rv == rv3
    assert third.key == "a"
    assert third.resource == "orders"


async def test_count_retention_moves_the_watermark(harness: Harness) -> None:
    log = await opened(harness)
    small = Retention(max_events=3, max_age=600.0)
    rvs = [(await log.append(write(f"o-{i}"), small)).rv for i in range(7)]
    assert [r.rv for r in await log.read("orders", rvs[3])] == rvs[4:]  # r == watermark is fine
    with pytest.raises(Expired, match=str(rvs[3])):
        await log.read("orders", rvs[2])
    loaded = await log.open(RES)
    assert loaded.resources["orders"].watermark == rvs[3]
    assert [r.rv for r in loaded.resources["orders"].records] == rvs[4:]
    assert len(loaded.resources["orders"].state) == 7  # the state keeps every live object


async def test_age_retention(harness: Harness) -> None:
    log = await opened(harness)
    short = Retention(max_events=1000, max_age=0.2)
    old = (await log.append(write("a"), short)).rv
    await anyio.sleep(0.4)
    new = (await log.append(write("b"), short)).rv
    assert [r.rv for r in await log.read("orders", old)] == [new]
    with pytest.raises(Expired):
        await log.read("orders", old - 1)


async def test_retention_is_per_resource(harness: Harness) -> None:
    log = await opened(harness)
    small = Retention(max_events=1, max_age=600.0)
    thing = Write(resource="things", key="t", type="ADDED", object=obj("t"))
    kept = (await log.append(thing, KEEP)).rv
    for i in range(3):
        await log.append(write(f"o-{i}"), small)
    assert [r.rv for r in await log.read("things", kept - 1)] == [kept]


async def test_a_late_node_loads_state_and_history_of_one_instant(harness: Harness) -> None:
    log = await opened(harness)
    small = Retention(max_events=4, max_age=600.0)
    truth: dict[str, bytes] = {}
    for i in range(12):
        key = f"o-{i % 5}"
        if i % 4 == 3 and key in truth:
            await log.append(write(key, "DELETED"), small)
            truth.pop(key)
        else:
            body = obj(key, n=i)
            kind = "MODIFIED" if key in truth else "ADDED"
            await log.append(Write(resource="orders", key=key, type=kind, object=body), small)
            truth[key] = body
    late = harness.node()
    loaded = await late.open(RES)
    part = loaded.resources["orders"]
    assert {r.key: r.object for r in part.state} == truth
    assert loaded.head == (await log.head())[1]
    assert all(part.watermark < r.rv <= loaded.head for r in part.records)
    assert len(part.records) == 4


async def test_followers_see_every_append_once_in_order(harness: Harness) -> None:
    """Several nodes append concurrently; two followers see one strictly increasing history."""
    nodes = [await opened(harness) for _ in range(3)]
    epoch, start = await nodes[0].head()
    per_node = 40
    seen: list[list[int]] = [[], []]
    appended: list[int] = []

    async def follow(index: int) -> None:
        async for batch in nodes[index].follow(RES, start):
            assert isinstance(batch, Batch)
            assert batch.epoch == epoch
            assert all(r.rv <= batch.head for r in batch.records)
            seen[index] += [r.rv for r in batch.records]
            if len(seen[index]) >= 3 * per_node:
                return

    async def publish(node: LogBackend, name: str) -> None:
        for i in range(per_node):
            resource = "things" if i % 3 == 0 else "orders"
            w = Write(resource=resource, key=f"{name}-{i}", type="ADDED", object=obj(name))
            appended.append((await node.append(w, KEEP)).rv)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, 0)
            tg.start_soon(follow, 1)
            await anyio.sleep(0.05)
            for n, node in enumerate(nodes):
                tg.start_soon(publish, node, f"n{n}")
    assert len(set(appended)) == 3 * per_node
    assert seen[0] == seen[1] == sorted(appended)


async def test_a_follower_reports_progress_without_records_of_its_resources(
    harness: Harness,
) -> None:
    log = await opened(harness)
    _, start = await log.head()
    only = {"things": KEEP}
    rv = (await log.append(write("a"), KEEP)).rv  # an orders change moves the head
    with anyio.fail_after(10):
        async for batch in log.follow(only, start):
            assert batch.head == rv
            assert batch.records == []
            break


async def test_a_batch_tells_when_its_newest_record_was_appended(harness: Harness) -> None:
    """The follower-lag metric reads ``batch.time`` (or the rv, where versions follow the
    clock): either way it must be the append's time, not, say, the age of a NATS stream."""
    log = await opened(harness)
    _, start = await log.head()
    await anyio.sleep(0.1)  # a clock that stopped at the log's creation would show
    before = time.time_ns() // 1000
    await log.append(write("a"), KEEP)
    with anyio.fail_after(10):
        async for batch in log.follow(RES, start):
            if batch.records:
                appended = batch.time or batch.records[-1].rv
                assert before - 10_000 <= appended <= time.time_ns() // 1000 + 10_000
                break


async def test_a_wiped_log_is_a_new_epoch_above_the_old_versions(harness: Harness) -> None:
    log = await opened(harness)
    loaded = await log.open(RES)
    rv = (await log.append(write("a"), KEEP)).rv
    await harness.wipe()
    with anyio.fail_after(10):
        async for batch in log.follow(RES, rv):
            if batch.epoch != loaded.epoch:
                assert batch.head > rv
                break
    fresh = await log.open(RES)
    assert fresh.epoch != loaded.epoch
    assert fresh.head > rv
    assert fresh.resources["orders"].state == []
    with pytest.raises(Expired):
        await log.read("orders", rv)
    assert (await log.append(write("a", expect=ABSENT), KEEP)).rv > rv


async def test_an_unreachable_log_is_service_unavailable(harness: Harness) -> None:
    dead = harness.dead()
    harness.opened.append(dead)
    with anyio.fail_after(10):
        with pytest.raises(ServiceUnavailable):
            await dead.open(RES)
        with pytest.raises(ServiceUnavailable):
            await dead.append(write("a"), KEEP)
        with pytest.raises(ServiceUnavailable):
            await dead.head()
        with pytest.raises(ServiceUnavailable):
            async for _ in dead.follow(RES, 0):
                pass  # pragma: no cover


async def test_a_follower_behind_retention_is_told_of_the_gap(harness: Harness) -> None:
    """A follower that falls behind retention (a paused process, a long GC pause, a burst
    larger than the retention between two reads) must learn that records it never read were
    evicted (``Batch.watermark`` above its previous head), never receive a silent hole."""
    log = await opened(harness)
    _, start = await log.head()
    small = Retention(max_events=3, max_age=600.0)
    follower = log.follow(RES, start)  # created, not read yet: a paused node
    rvs = [(await log.append(write(f"o-{i}"), small)).rv for i in range(7)]
    try:
        with anyio.fail_after(10):
            batch = await anext(follower)
    finally:
        await follower.aclose()
    assert batch.watermark >= rvs[3] > start  # the node must reload: o-0..o-3 are gone
    assert [r.rv for r in batch.records] == rvs[4:]


async def test_a_follower_paused_between_reads_gets_every_record_or_is_told(
    harness: Harness,
) -> None:
    """The same, for a follower that already read a batch: each later batch either continues
    exactly (an engine may have delivered the records before they were evicted) or reports
    the gap; it never skips silently."""
    log = await opened(harness)
    _, start = await log.head()
    small = Retention(max_events=2, max_age=600.0)
    first = (await log.append(write("o-0"), small)).rv
    follower = log.follow(RES, start)
    seen: list[int] = []
    told = False
    try:
        with anyio.fail_after(10):
            batch = await anext(follower)
            seen += [r.rv for r in batch.records]
            after = batch.head
            assert seen == [first]
            rvs = [(await log.append(write(f"o-{i}"), small)).rv for i in range(1, 8)]
            while after < rvs[-1]:
                batch = await anext(follower)
                told = told or batch.watermark > after
                seen += [r.rv for r in batch.records]
                after = batch.head
    finally:
        await follower.aclose()
    assert told or seen == [first, *rvs]
    if told:
        assert seen[-2:] == rvs[-2:]
