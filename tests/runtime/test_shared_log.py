"""Several hubs following one shared log (the in-process reference backend): what a
multi-process deployment on Redis, NATS or PostgreSQL must do, without servers."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from watchroutes import (
    AlreadyExists,
    Conflict,
    Hub,
    NotFound,
    ServiceUnavailable,
    UsageError,
)
from watchroutes._core.backend import Appended, Batch, LogBackend, Retention, Write
from watchroutes.backends.memory import MemoryLog
from watchroutes.testing import WatchClient

pytestmark = pytest.mark.anyio


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - polls state that has no event of its own
            await anyio.sleep(0.02)


def order(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": "eu"}}, "spec": spec}


class Node:
    def __init__(self, log: LogBackend, *, retention: int = 50, **options: Any) -> None:
        from watchroutes.adapters.starlette import watch_endpoint

        self.hub = Hub(backend=log, heartbeat=1.0, **options)
        self.orders = self.hub.resource("orders", kind="Order", retention_events=retention)
        app = Starlette(
            routes=[
                Route("/orders", watch_endpoint(self.orders)),
                Route("/orders/{name}", watch_endpoint(self.orders, key="name")),
            ]
        )
        self.client = WatchClient(app)


@asynccontextmanager
async def nodes(log: MemoryLog, count: int) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        started = [Node(log) for _ in range(count)]
        for node in started:
            await stack.enter_async_context(node.hub)
        yield started


async def test_a_change_on_one_node_reaches_watchers_on_another() -> None:
    log = MemoryLog()
    async with nodes(log, 2) as (a, b):
        async with b.client.stream("GET", "/orders?watch=true&allowWatchBookmarks=true") as stream:
            first = await stream.next_line()  # the end of the (empty) initial events
            assert first["type"] == "BOOKMARK"
            stored = await a.orders.acreate(order("o-1", qty=1))
            event = await stream.next_line()
        assert event["type"] == "ADDED"
        assert event["object"] == stored
        assert stored["metadata"]["resourceVersion"] == event["resourceVersion"]


async def test_reads_on_any_node_see_every_acknowledged_write() -> None:
    """A list without an rv is served at least at the log's head (protocol.md §3.1)."""
    log = MemoryLog()
    async with nodes(log, 2) as (a, b):
        for i in range(20):
            stored = await a.orders.acreate(order(f"o-{i}"))
            listed = (await b.client.get("/orders")).json()
            assert listed["metadata"]["resourceVersion"] >= stored["metadata"]["resourceVersion"]
            assert stored in listed["items"]


class SlowFollower(MemoryLog):
    """A log whose followers see each batch ``delay`` seconds late (a lagging node)."""

    delay = 0.3

    async def follow(self, resources: Any, after: int) -> AsyncGenerator[Batch]:
        async for batch in super().follow(resources, after):
            await anyio.sleep(self.delay)
            yield batch


async def test_async_reads_see_the_log_head_and_plain_reads_this_nodes_state() -> None:
    async with nodes(SlowFollower(), 2) as (a, b):
        stored = await a.orders.acreate(order("o-1"))
        with pytest.raises(NotFound):
            b.orders.get("o-1")  # b has not applied it yet: the plain read is local
        assert await b.orders.aget("o-1") == stored
        rv, items = await b.orders.alist()
        assert items == [stored]
        assert int(rv) >= int(stored["metadata"]["resourceVersion"])


async def test_resource_version_0_sees_this_nodes_own_writes_without_asking_the_log() -> None:
    """``resourceVersion=0`` takes what a node has (another node may not have a write yet),
    but a node that acknowledged a write waits until it has applied it."""
    async with nodes(SlowFollower(), 2) as (a, b):
        stored = await a.orders.acreate(order("o-1"))
        listed = (await a.client.get("/orders", params={"resourceVersion": "0"})).json()
        assert listed["items"] == [stored]
        assert (await b.client.get("/orders")).json()["items"] == [stored]


async def test_shutdown_ends_streams_after_applying_this_nodes_own_writes() -> None:
    """A write acknowledged just before the exit signal is in the final bookmark (or the
    last event), even when this node's follower has not applied it yet."""
    async with nodes(SlowFollower(), 1) as (a,):
        target = "/orders?watch=true&allowWatchBookmarks=true&labelSelector=region%3Dus"
        async with a.client.stream("GET", target) as stream:
            assert (await stream.next_line())["type"] == "BOOKMARK"
            stored = await a.orders.acreate(order("o-1"))  # filtered out: only moves the head
            await a.hub.aclose()
            rest = [line async for line in stream.json_lines()]
        assert rest[-1]["type"] == "BOOKMARK"
        assert rest[-1]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_async_reads_on_an_in_memory_hub_read_its_state() -> None:
    hub = Hub()
    orders = hub.resource("orders", kind="Order")
    stored = orders.create(order("o-1"))
    assert await orders.aget("o-1") == stored
    assert (await orders.alist())[1] == [stored]


async def test_a_client_resumes_on_another_node_with_exactly_the_missed_events() -> None:
    log = MemoryLog()
    async with nodes(log, 3) as (a, b, c):
        for i in range(3):
            await a.orders.acreate(order(f"o-{i}"))
        seen: list[str] = []
        async with b.client.stream(
            "GET", "/orders?watch=true&resourceVersion=0&allowWatchBookmarks=true"
        ) as stream:
            async for event in stream.json_lines():
                if event["type"] == "BOOKMARK":
                    break
                seen.append(event["resourceVersion"])
        last = seen[-1]
        missed = [await a.orders.apatch(f"o-{i}", {"spec": {"n": i}}) for i in range(3)]
        async with c.client.stream(
            "GET", "/orders", params={"watch": "true", "resourceVersion": last}
        ) as stream:
            resumed = [await stream.next_line() for _ in range(3)]
        assert [e["object"] for e in resumed] == missed
        assert [e["type"] for e in resumed] == ["MODIFIED"] * 3


async def test_a_late_node_loads_the_state_and_the_history() -> None:
    log = MemoryLog()
    async with nodes(log, 1) as (a,):
        first = await a.orders.acreate(order("o-1"))
        await a.orders.acreate(order("o-2"))
        await a.orders.adelete("o-2")
        await a.orders.apatch("o-1", {"spec": {"qty": 5}})
        async with nodes(log, 1) as (late,):
            assert late.hub.list("orders") == a.hub.list("orders")
            async with late.client.stream(
                "GET",
                "/orders",
                params={"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"]},
            ) as stream:
                types = [(await stream.next_line())["type"] for _ in range(3)]
            assert types == ["ADDED", "DELETED", "MODIFIED"]


async def test_writes_check_their_expectations_against_the_shared_log() -> None:
    log = MemoryLog()
    async with nodes(log, 2) as (a, b):
        stored = await a.orders.acreate(order("o-1", qty=1))
        with pytest.raises(AlreadyExists):
            await b.orders.acreate(order("o-1"))
        await b.orders.apatch("o-1", {"spec": {"qty": 2}})
        with pytest.raises(Conflict):
            await a.orders.areplace(stored)  # carries the rv it read: stale now
        with pytest.raises(NotFound):
            await b.orders.adelete("nope")
        merged = await a.orders.apatch("o-1", {"status": {"phase": "paid"}})
        assert merged["spec"] == {"qty": 2}  # patched on top of b's change
        deleted = await b.orders.adelete(
            "o-1", resource_version=merged["metadata"]["resourceVersion"]
        )
        assert int(deleted["metadata"]["resourceVersion"]) > int(
            merged["metadata"]["resourceVersion"]
        )
        with pytest.raises(NotFound):
            await a.orders.aget("o-1")  # b's delete, read on a at the log's head


async def test_concurrent_writers_on_several_nodes_never_share_a_version() -> None:
    log = MemoryLog()
    async with nodes(log, 3) as trio_of_nodes:
        rvs: list[int] = []

        async def write(node: Node, n: int) -> None:
            for i in range(30):
                stored = await node.orders.apublish("ADDED", order(f"n{n}-{i}"))
                rvs.append(int(stored["metadata"]["resourceVersion"]))

        async with anyio.create_task_group() as tg:
            for n, node in enumerate(trio_of_nodes):
                tg.start_soon(write, node, n)
        assert len(set(rvs)) == 90
        heads = {node.hub.list("orders")[0] for node in trio_of_nodes}
        assert heads == {str(max(rvs))}


async def test_an_outage_ends_watches_resumably_and_refuses_new_ones() -> None:
    log = MemoryLog()
    async with nodes(log, 2) as (a, b):
        await a.orders.acreate(order("o-1"))
        async with b.client.stream(
            "GET", "/orders?watch=true&resourceVersion=0&allowWatchBookmarks=true"
        ) as stream:
            added = await stream.next_line()
            await stream.next_line()  # the initial events' end bookmark
            log.available = False
            with anyio.fail_after(5):
                rest = await stream.read()
        assert rest == b""  # ended, without a bookmark: the client resumes from its last rv
        refused = await b.client.get("/orders?watch=true&allowWatchBookmarks=true")
        assert refused.status == 503
        assert refused.json()["reason"] == "ServiceUnavailable"
        with pytest.raises(ServiceUnavailable):
            await a.orders.acreate(order("o-2"))
        log.available = True
        await until(lambda: b.hub.available)
        missed = await a.orders.acreate(order("o-2"))
        async with b.client.stream(
            "GET", "/orders", params={"watch": "true", "resourceVersion": added["resourceVersion"]}
        ) as stream:
            assert (await stream.next_line())["object"] == missed


async def test_a_wiped_log_makes_clients_start_over() -> None:
    log = MemoryLog()
    async with nodes(log, 1) as (a,):
        stored = await a.orders.acreate(order("o-1"))
        rv = stored["metadata"]["resourceVersion"]
        async with a.client.stream("GET", "/orders?watch=true&allowWatchBookmarks=true") as stream:
            await stream.next_line()
            await stream.next_line()
            log.wipe()
            with anyio.fail_after(5):
                assert await stream.read() == b""
        await until(lambda: not a.hub.list("orders")[1])
        gone = await a.client.get("/orders", params={"watch": "true", "resourceVersion": rv})
        assert gone.status == 200
        assert b'"code":410' in gone.body
        async with a.client.stream(
            "GET",
            "/orders",
            params={"resourceVersion": rv},
            headers={"accept": "text/event-stream"},
        ) as stream:
            reset = await stream.next_event()
        assert reset["type"] == "RESET"


async def test_a_version_ahead_of_the_log_is_expired() -> None:
    log = MemoryLog()
    async with nodes(log, 1) as (a,):
        head = int(a.hub.list("orders")[0])
        reply = await a.client.get("/orders", params={"resourceVersion": str(head + 10**9)})
        assert reply.status == 410


async def test_plain_writes_need_another_thread_with_a_shared_log() -> None:
    log = MemoryLog()
    async with nodes(log, 1) as (a,):
        with pytest.raises(UsageError, match="await"):
            a.orders.create(order("o-1"))
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(a.orders.create(order("o-2"))))
        thread.start()
        await until(lambda: not thread.is_alive())
        assert result[0]["metadata"]["name"] == "o-2"
        assert a.hub.get("orders", "o-2") == result[0]


class PausableNode:
    """One node's connection to a shared :class:`MemoryLog` whose follower can be paused, as
    SIGSTOP, a debugger or a long GC pause stops a process: while paused it reads nothing."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.url = log.url
        self.running = anyio.Event()
        self.running.set()

    def pause(self) -> None:
        self.running = anyio.Event()

    def resume(self) -> None:
        self.running.set()

    async def open(self, retention: Any) -> Any:
        return await self.log.open(retention)

    async def append(self, write: Write, retention: Retention) -> Appended:
        return await self.log.append(write, retention)

    async def head(self) -> tuple[str, int]:
        return await self.log.head()

    async def read(self, resource: str, after: int) -> Any:
        return await self.log.read(resource, after)

    async def follow(self, resources: Any, after: int) -> AsyncGenerator[Batch]:
        batches = self.log.follow(resources, after)
        try:
            while True:
                await self.running.wait()
                yield await anext(batches)  # read when running: what the log holds by then
        finally:
            await batches.aclose()

    async def close(self) -> None:
        await self.log.close()


def rv_of(obj: Any) -> int:
    return int(obj["metadata"]["resourceVersion"])


async def test_a_node_behind_retention_reloads_instead_of_skipping_evicted_events() -> None:
    """A node paused while another acknowledges more writes than the log retains must not
    apply the rest over a hole: its lists hold every acknowledged object, its open watches end
    (they resume into 410 or RESET), and a resume from before the gap is Expired."""
    shared = MemoryLog()
    paused = PausableNode(shared)
    a, b = Node(paused, retention=3), Node(shared, retention=3)
    async with a.hub, b.hub:
        first = await b.orders.acreate(order("o-0"))
        await until(lambda: a.hub.head >= rv_of(first))
        query = {"watch": "true", "resourceVersion": str(rv_of(first))}
        async with a.client.stream("GET", "/orders", params=query) as stream:
            paused.pause()
            created = [await b.orders.acreate(order(f"o-{i}")) for i in range(1, 7)]
            paused.resume()
            with anyio.fail_after(5):
                received = [event async for event in stream.json_lines()]
        # the watch ended without skipping: what it got is a prefix of what was written
        got = [int(event["resourceVersion"]) for event in received]
        assert got == [rv_of(obj) for obj in created[: len(got)]]
        _, items = await a.orders.alist()
        assert sorted(item["metadata"]["name"] for item in items) == [f"o-{i}" for i in range(7)]
        assert a.hub.statistics().follower_reloads >= 1
        resumed = await a.client.get(
            "/orders",
            params={
                "watch": "true",
                "feed": "longpoll",
                "resourceVersion": query["resourceVersion"],
            },
        )
        assert resumed.status == 410


async def test_delete_answers_the_object_the_log_removed_even_on_a_stalled_node() -> None:
    """The deleted object comes from the log's answer, not from this node's cache, so a node
    whose follower is stalled still answers it (stamped with the deletion's rv), at once."""
    shared = MemoryLog()
    paused = PausableNode(shared)
    a, b = Node(paused), Node(shared)
    async with a.hub, b.hub:
        stored = await b.orders.acreate(order("o-1", qty=1))
        await until(lambda: a.hub.head >= rv_of(stored))
        paused.pause()
        changed = await b.orders.apatch("o-1", {"spec": {"qty": 2}})  # a does not see this
        with anyio.fail_after(1):  # no wait for this node's follower
            deleted = await a.orders.adelete("o-1")
        assert rv_of(deleted) > rv_of(changed)
        assert deleted["spec"] == {"qty": 2}  # what the log removed, not a's stale copy
        assert {**deleted, "metadata": changed["metadata"]} == changed
        paused.resume()


class LostAnswers(MemoryLog):
    """A log whose connection fails after an append reached it: the outcome is unknown."""

    async def append(self, write: Write, retention: Retention) -> Appended:
        await super().append(write, retention)
        raise ServiceUnavailable("the event log at memory://secret-host is unavailable")


async def test_a_write_whose_outcome_is_unknown_says_so_without_naming_the_backend() -> None:
    node = Node(LostAnswers())
    async with node.hub:
        with pytest.raises(ServiceUnavailable) as info:
            await node.orders.acreate(order("o-1"))
    status = info.value.status()
    assert status.code == 503
    assert "may or may not" in status.message
    assert "secret-host" not in status.message
    assert status.details is not None
    assert status.details.retryAfterSeconds == 1


async def test_a_resume_from_beyond_the_head_is_answered_as_on_one_node() -> None:
    """An rv above the log's head: SSE starts over with RESET (the resource has a state), JSON
    lines gets its 410 in-stream, a list its 410: the same answers as an in-memory hub."""
    too_new = "9" * 18
    single = Hub()
    single_orders = single.resource("orders", kind="Order")
    single_app = Starlette(routes=[Route("/orders", watch_endpoint_for(single_orders))])
    log = MemoryLog()
    async with nodes(log, 1) as (node,), single:
        await node.orders.acreate(order("o-1"))
        single_orders.create(order("o-1"))
        for client in (node.client, WatchClient(single_app)):
            headers = {"accept": "text/event-stream", "last-event-id": too_new}
            async with client.stream("GET", "/orders", headers=headers) as stream:
                assert stream.status == 200
                first = await stream.next_sse()
                while first is not None and not first.data:  # (the retry: block)
                    first = await stream.next_sse()
                assert first is not None
                assert first.event == "RESET" or '"RESET"' in (first.data or "")
            listed = await client.get("/orders", params={"resourceVersion": too_new})
            assert listed.status == 410
            async with client.stream(
                "GET", "/orders", params={"watch": "true", "resourceVersion": too_new}
            ) as stream:
                assert stream.status == 200
                assert (await stream.next_line())["object"]["code"] == 410


def watch_endpoint_for(resource: Any) -> Any:
    from watchroutes.adapters.starlette import watch_endpoint

    return watch_endpoint(resource)
