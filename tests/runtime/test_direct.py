"""The direct write path: a publish writes an idle watch's frame to its connection itself.

Every fallback is forced here (the connection over its high-water mark, a write in flight,
queued events, a bookmark due) and the bytes are checked for order and exactly-once on the
"wire", the one list both the task's ``send`` and the direct writer append to. The adapters'
own writers are checked against real servers in ``tests/adapters/test_direct_servers.py``.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from watchroutes import Hub
from watchroutes._core.events import EventType, Frame
from watchroutes._core.registry import Subscription
from watchroutes._core.selectors._filter import EVERYTHING
from watchroutes._runtime.hub import RequestInfo
from watchroutes._runtime.stream import WatchStream, http_chunk
from watchroutes.testing import FakeClock

pytestmark = pytest.mark.anyio


def order(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {}}


class Wire:
    """The connection as both paths see it: what reached the transport, in order."""

    def __init__(self) -> None:
        self.data: list[tuple[str, bytes]] = []
        self.open = True  # the direct writer takes bytes (under its high-water mark)
        self.gate: anyio.Event | None = None  # set: the task's send waits for it

    async def send(self, data: bytes) -> None:
        gate = self.gate
        if gate is not None:
            await gate.wait()
        self.data.append(("task", data))

    def writable(self) -> bool:
        return self.open

    def write(self, data: bytes) -> None:
        # (frames taken while it was writable; written at the end of the turn, whatever the
        # mark says by then, as a transport buffers them)
        self.data.append(("direct", data))

    def events(self) -> list[dict[str, Any]]:
        """Every JSON-lines event on the wire (not the bookmarks), in order."""
        lines = b"".join(d for _, d in self.data).splitlines()
        found = [msgspec.json.decode(line) for line in lines if line]
        return [e for e in found if e["type"] != "BOOKMARK"]

    def paths(self) -> list[str]:
        return [path for path, _ in self.data]


async def settle() -> None:
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def open_stream(hub: Hub, **extra: str) -> WatchStream:
    query = [("watch", "true"), ("allowWatchBookmarks", "true"), *extra.items()]
    reply = await hub.answer("orders", RequestInfo(query=query, accept="application/json"))
    assert reply.stream is not None
    return reply.stream


async def started(hub: Hub, wire: Wire, tg: Any, **extra: str) -> WatchStream:
    stream = await open_stream(hub, **extra)
    tg.start_soon(stream.run, wire.send, wire)
    await settle()  # the initial events are written; the task waits
    wire.data.clear()
    return stream


async def test_an_idle_watch_gets_a_publish_without_its_task() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        for i in range(5):
            orders.create(order(f"o-{i}"))
            await anyio.lowlevel.checkpoint()  # (on asyncio written at the end of the turn)
            assert wire.paths() == ["direct"] * (i + 1)
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == [
            f"o-{i}" for i in range(5)
        ]
        assert hub.statistics().direct_writes == 5
        assert stream.subscription.statistics().delivered == 5
        stream.cancel()


async def test_a_burst_in_one_turn_is_one_write_per_watch(anyio_backend: str) -> None:
    """Events published in one loop turn reach an idle watch in one write at the end of the
    turn, as the task path batches them (on asyncio; trio writes each at once)."""
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        for i in range(20):
            orders.create(order(f"o-{i}"))
        await anyio.lowlevel.checkpoint()
        expected = 1 if anyio_backend == "asyncio" else 20
        assert wire.paths() == ["direct"] * expected
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == [
            f"o-{i}" for i in range(20)
        ]
        assert hub.statistics().direct_writes == 20  # (frames, not writes)
        stream.cancel()


async def test_over_the_high_water_mark_the_task_writes() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        wire.open = False
        orders.create(order("o-1"))
        assert wire.data == []  # queued, the task woken
        await settle()
        assert wire.paths() == ["task"]
        wire.open = True
        orders.create(order("o-2"))
        await anyio.lowlevel.checkpoint()
        assert wire.paths() == ["task", "direct"]
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == ["o-1", "o-2"]
        stream.cancel()


async def test_a_write_in_flight_keeps_later_events_behind_it() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        wire.open = False
        orders.create(order("o-1"))
        wire.gate = anyio.Event()
        await settle()  # the task's send of o-1 waits on the gate
        wire.open = True
        orders.create(order("o-2"))  # must not overtake o-1
        orders.create(order("o-3"))
        assert wire.data == []
        wire.gate.set()
        wire.gate = None
        await settle()
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == ["o-1", "o-2", "o-3"]
        assert hub.statistics().direct_writes == 0
        orders.create(order("o-4"))  # idle again: direct
        await anyio.lowlevel.checkpoint()
        assert wire.paths()[-1] == "direct"
        stream.cancel()


async def test_queued_events_are_written_first() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        wire.open = False
        orders.create(order("o-1"))  # queued; the task is woken but has not run
        wire.open = True
        orders.create(order("o-2"))  # the connection takes bytes, but o-1 waits: queue o-2
        assert wire.data == []
        await settle()
        assert wire.paths() == ["task"]  # one write, both events
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == ["o-1", "o-2"]
        stream.cancel()


async def test_a_due_bookmark_sends_the_event_through_the_task() -> None:
    clock = FakeClock()
    hub = Hub(heartbeat=10, clock=clock)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        orders.create(order("o-1"))
        await anyio.lowlevel.checkpoint()
        assert wire.paths() == ["direct"]
        clock.advance_nowait(10)  # a bookmark is due (the task has not looked yet)
        orders.create(order("o-2"))
        assert wire.paths() == ["direct"]  # not written directly: the task writes it
        await settle()
        assert wire.paths() == ["direct", "task"]
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == ["o-1", "o-2"]
        assert hub.statistics().direct_writes == 1
        # The bookmark, had one been due past the event, follows it in the same write:
        # session.deliver refuses whenever the deadline passed, so step() decides.
        stream.cancel()


async def test_a_selector_watch_gets_transitions_directly() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg, labelSelector="region=eu")
        orders.create({"metadata": {"name": "a", "labels": {"region": "us"}}})
        orders.replace({"metadata": {"name": "a", "labels": {"region": "eu"}}})
        orders.replace({"metadata": {"name": "a", "labels": {"region": "us"}}})
        await anyio.lowlevel.checkpoint()
        assert [e["type"] for e in wire.events()] == ["ADDED", "DELETED"]
        assert len(wire.paths()) in (1, 2)  # (one write on asyncio: the same turn)
        assert set(wire.paths()) == {"direct"}
        stream.cancel()


async def test_a_failed_direct_write_ends_the_watch() -> None:
    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()

    def broken(data: bytes) -> None:
        raise ConnectionResetError("gone")

    async with anyio.create_task_group() as tg:
        await started(hub, wire, tg)
        wire.write = broken  # type: ignore[method-assign]
        orders.create(order("o-1"))  # the publish itself does not fail
        await settle()
        assert hub.statistics().active_watches == 0
        assert orders.get("o-1") is not None


@pytest.mark.parametrize("seed", range(12))
async def test_random_interleavings_deliver_each_event_once_in_order(seed: int) -> None:
    """Publishes one per loop turn or in groups, the connection's mark and the task's writes
    toggled at random: the wire holds every event once, in rv order."""
    rng = random.Random(seed)
    hub = Hub(heartbeat=60, buffer=10_000)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    names: list[str] = []
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        for i in range(300):
            roll = rng.random()
            if roll < 0.1:
                wire.open = not wire.open
            elif roll < 0.15 and wire.gate is None:
                wire.gate = anyio.Event()
            elif roll < 0.25 and wire.gate is not None:
                wire.gate.set()
                wire.gate = None
            names.append(f"o-{i}")
            orders.create(order(names[-1]))
            if rng.random() < 0.5:
                await anyio.lowlevel.checkpoint()
        if wire.gate is not None:
            wire.gate.set()
            wire.gate = None
        wire.open = True
        await settle()
        events = wire.events()
        assert [e["object"]["metadata"]["name"] for e in events] == names
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert rvs == sorted(set(rvs))
        assert 0 < hub.statistics().direct_writes < len(names)  # both paths were taken
        stream.cancel()


def test_a_subscription_never_offers_past_a_queued_frame() -> None:
    """The registry's half of the rule: with a frame queued, the direct path is not asked
    (it would put the new frame on the wire ahead of the queued one)."""
    sub = Subscription(1, "orders", EVERYTHING, 10)
    taken: list[Frame] = []
    accept = [False]

    def direct(frame: Frame) -> bool:
        if accept[0]:
            taken.append(frame)
        return accept[0]

    sub.direct = direct
    first = Frame(EventType.ADDED, {"n": 1}, 1)
    second = Frame(EventType.ADDED, {"n": 2}, 2)
    sub.offer(first)  # refused: queued
    accept[0] = True
    sub.offer(second)  # the path would take it, but `first` waits
    assert taken == []
    assert sub.drain() == [first, second]
    third = Frame(EventType.ADDED, {"n": 3}, 3)
    sub.offer(third)  # nothing queued now: direct
    assert taken == [third]
    assert sub.statistics().delivered == 3


def test_http_chunk_frames_once_per_event() -> None:
    data = b"id: 1\ndata: {}\n\n"
    chunk = http_chunk(data)
    assert chunk == b"10\r\n" + data + b"\r\n"
    assert http_chunk(data) is chunk  # the next watcher of the same event shares it
    assert http_chunk(b"x") == b"1\r\nx\r\n"


@pytest.mark.parametrize("direct", [True, False])
async def test_the_in_memory_client_serves_as_the_direct_protocols_do(direct: bool) -> None:
    """``WatchClient`` serves a GET as watchroutes' uvicorn protocols do (the direct write path
    and the hand-over), or, with ``direct=False``, as any other ASGI server."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from watchroutes.adapters.starlette import watch_endpoint
    from watchroutes.testing import WatchClient

    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    client = WatchClient(app, direct=direct)
    headers = {"accept": "text/event-stream"}
    async with client.stream("GET", "/orders", headers=headers) as response:
        await settle()  # the initial events are written: the watch waits
        for i in range(3):
            orders.create(order(f"o-{i}"))
            await anyio.lowlevel.checkpoint()
        got = [e for e in await response.take(4) if e["type"] != "BOOKMARK"]
    assert [e["object"]["metadata"]["name"] for e in got] == ["o-0", "o-1", "o-2"]
    assert hub.statistics().direct_writes == (3 if direct else 0)
    with anyio.fail_after(5):
        while hub.statistics().active_watches:  # the client left: released
            await anyio.lowlevel.checkpoint()


async def test_a_publish_from_another_thread_needs_no_turn_of_the_loop() -> None:
    """A WSGI request thread's publish is applied in that thread, under the lock: it returns
    while the loop is busy (here: blocked), and the watches waiting on the loop are woken
    once it runs again (their wake-ups handed over in one call)."""
    import threading

    hub = Hub(heartbeat=60)
    orders = hub.resource("orders", kind="Order")
    wire = Wire()
    async with anyio.create_task_group() as tg:
        stream = await started(hub, wire, tg)
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(orders.create(order("o-1"))))
        thread.start()
        thread.join(10)  # (blocks the loop's thread: a round trip to the loop would hang)
        assert not thread.is_alive()
        assert done[0]["metadata"]["name"] == "o-1"
        assert wire.data == []  # nothing written from the other thread
        await settle()
        assert [e["object"]["metadata"]["name"] for e in wire.events()] == ["o-1"]
        stream.cancel()
