"""The Hub and the watch driver, through the in-memory client and a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from watchroutes import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Hub,
    NotFound,
    RequestEntityTooLarge,
    RequestInfo,
    Resource,
    UsageError,
)
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.testing import FakeClock, WatchClient

pytestmark = pytest.mark.anyio
SSE = {"accept": "text/event-stream"}


def order(name: str, region: str = "eu", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": region}}, "status": status}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    return Hub(clock=clock, heartbeat=10)


@pytest.fixture
def orders(hub: Hub) -> Resource:
    return hub.resource("orders", kind="Order")


@pytest.fixture
def client(orders: Resource) -> WatchClient:
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            Route("/orders/{name}", watch_endpoint(orders, key="name")),
        ]
    )
    return WatchClient(app)


async def test_write_helpers_stamp_and_validate(orders: Resource, hub: Hub) -> None:
    created = orders.create(order("a"))
    rv = created["metadata"]["resourceVersion"]
    assert rv == str(hub.head)
    with pytest.raises(AlreadyExists, match='orders "a" already exists'):
        orders.create(order("a"))
    with pytest.raises(NotFound):
        orders.replace(order("zz"))
    with pytest.raises(BadRequest, match="does not match"):
        orders.replace(order("b"), key="a")
    stale = order("a", phase="paid")
    stale["metadata"]["resourceVersion"] = "1"
    with pytest.raises(Conflict, match="has been modified"):
        orders.replace(stale)
    fresh = order("a", phase="paid")
    fresh["metadata"]["resourceVersion"] = rv
    replaced = orders.replace(fresh)
    assert replaced["status"] == {"phase": "paid"}
    patched = orders.patch("a", {"status": {"phase": None, "note": "x"}, "spec": {"q": 1}})
    assert patched["status"] == {"note": "x"}
    assert patched["spec"] == {"q": 1}
    with pytest.raises(BadRequest, match="metadata.name"):
        orders.patch("a", {"metadata": {"name": "b"}})
    with pytest.raises(BadRequest, match="JSON object"):
        orders.patch("a", [1])
    deleted = orders.delete("a")
    assert deleted["metadata"]["resourceVersion"] == str(hub.head)
    with pytest.raises(NotFound):
        orders.get("a")
    with pytest.raises(NotFound):
        orders.delete("a")
    with pytest.raises(UsageError, match="metadata.name"):
        orders.publish("ADDED", {"no": "metadata"})
    assert orders.publish("ADDED", {"no": "metadata"}, key="k") == {"no": "metadata"}


async def test_object_size_limit(clock: FakeClock) -> None:
    hub = Hub(clock=clock, max_object_bytes=100)
    res = hub.resource("things")
    with pytest.raises(RequestEntityTooLarge, match="limit is 100"):
        res.create({"metadata": {"name": "x"}, "pad": "y" * 200})
    assert res.list()[1] == []


async def test_plain_get_list_and_object(client: WatchClient, orders: Resource) -> None:
    orders.create(order("a"))
    orders.create(order("b", region="us"))
    response = await client.get("/orders", params={"labelSelector": "region=us"})
    body = response.json()
    assert response.headers["vary"] == "Accept"
    assert body["kind"] == "OrderList"
    assert [i["metadata"]["name"] for i in body["items"]] == ["b"]
    assert (await client.get("/orders/a")).json()["metadata"]["name"] == "a"
    missing = await client.get("/orders/zz")
    assert missing.status == 404
    assert missing.json()["reason"] == "NotFound"
    bad = await client.get("/orders", params={"resourceVersion": "x"})
    assert bad.status == 400
    assert bad.json()["message"].startswith("resourceVersion: ")


async def test_sse_watch_through_the_client(client: WatchClient, orders: Resource) -> None:
    orders.create(order("a"))
    async with client.stream("GET", "/orders", headers=SSE) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        first = await response.take(2)
        assert [e["type"] for e in first] == ["ADDED", "BOOKMARK"]
        orders.patch("a", {"status": {"phase": "paid"}})
        (change,) = await response.take(1)
        assert change["type"] == "MODIFIED"


async def test_disconnect_frees_the_watch(client: WatchClient, orders: Resource, hub: Hub) -> None:
    events = await client.watch("/orders", 1, params={"watch": "1", "allowWatchBookmarks": "1"})
    assert events[0]["type"] == "BOOKMARK"
    await anyio.wait_all_tasks_blocked()
    assert hub.statistics().active_watches == 0
    assert len(hub.state.registry) == 0


async def test_heartbeat_and_timeout_on_the_fake_clock(
    client: WatchClient, hub: Hub, clock: FakeClock
) -> None:
    async with client.stream(
        "GET", "/orders", headers=SSE, params={"timeoutSeconds": "25"}
    ) as response:
        blocks = response.sse()
        assert (await anext(blocks)).retry == 2000
        assert (await anext(blocks)).data is not None  # the end bookmark
        await clock.advance(10)
        assert (await anext(blocks)).comments == ("hb",)
        await clock.advance(15)
        assert [b async for b in blocks] == []  # ended by timeoutSeconds
        assert response.ended
    await anyio.wait_all_tasks_blocked()
    assert hub.statistics().active_watches == 0


async def test_publish_from_a_plain_thread(client: WatchClient, orders: Resource) -> None:
    async with client.stream("GET", "/orders", params={"watch": "1"}) as response:
        results: list[Any] = []

        def work() -> None:
            for i in range(20):
                results.append(orders.create(order(f"t-{i}")))

        thread = threading.Thread(target=work)
        await anyio.to_thread.run_sync(thread.start)
        events = await response.take(20)
        await anyio.to_thread.run_sync(thread.join)
    assert [e["object"]["metadata"]["name"] for e in events] == [f"t-{i}" for i in range(20)]
    assert [r["metadata"]["resourceVersion"] for r in results] == [
        e["resourceVersion"] for e in events
    ]


def test_publish_without_a_loop_then_watch() -> None:
    hub = Hub()
    res = hub.resource("orders")
    res.create(order("a"))

    async def main() -> list[Any]:
        app = Starlette(routes=[Route("/orders", watch_endpoint(res))])
        return await WatchClient(app).watch("/orders", 1, params={"watch": "1"})

    assert anyio.run(main)[0]["object"]["metadata"]["name"] == "a"


async def test_snapshot_callback_semantics(clock: FakeClock) -> None:
    hub = Hub(clock=clock)
    db = {"a": order("a"), "b": order("b")}
    gate = anyio.Event()

    async def snapshot() -> list[Any]:
        await gate.wait()
        return list(db.values())

    res = hub.resource("orders", snapshot=snapshot)
    app = Starlette(routes=[Route("/orders", watch_endpoint(res))])
    client = WatchClient(app)
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            async with client.stream("GET", "/orders", headers=SSE) as response:
                blocks = response.sse()
                assert (await anext(blocks)).retry == 2000
                reset = await anext(blocks)  # a reconnect without an id must drop its state
                assert (reset.id, reset.data) == (None, '{"type":"RESET"}')
                got = [await anext(blocks) for _ in range(4)]
                assert [b.id for b in got[:2]] == [None, None]  # no id, no rv
                assert "resourceVersion" not in got[0].data  # type: ignore[operator]
                assert got[2].id == str(head)  # the end bookmark at R, read before the call
                assert '"MODIFIED"' in (got[3].data or "")  # published during the call

        tg.start_soon(watch)
        await anyio.wait_all_tasks_blocked()
        head = hub.head
        res.publish("MODIFIED", order("a", phase="paid"))  # after R: delivered live
        gate.set()


async def test_snapshot_callback_failure_is_a_500(clock: FakeClock) -> None:
    hub = Hub(clock=clock)

    def snapshot() -> list[Any]:
        raise RuntimeError("database down at 10.0.0.1")

    res = hub.resource("orders", snapshot=snapshot)
    reply = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    assert reply.status == 500
    listed = await hub.answer("orders", RequestInfo(query=[]))
    assert listed.status == 500
    assert b"10.0.0.1" not in reply.body
    assert len(hub.state.registry) == 0
    assert res.source.value == "callback"


async def test_shutdown_ends_streams_and_refuses_new_ones(
    client: WatchClient, orders: Resource, hub: Hub
) -> None:
    async with client.stream(
        "GET", "/orders", headers=SSE, params={"labelSelector": "region=eu"}
    ) as response:
        blocks = response.sse()
        await anext(blocks)
        await anext(blocks)
        orders.create(order("u", region="us"))  # filtered out: the head moves
        await hub.aclose()
        rest = [b async for b in blocks]
        assert [b.id for b in rest] == [str(hub.head)]  # the final bookmark, then the end
    refused = await client.get("/orders", params={"watch": "1"})
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["reason"] == "ServiceUnavailable"
    sse = await client.get("/orders", headers=SSE)
    assert sse.status == 200
    assert sse.body.startswith(b'retry: 1000\n\ndata: {"type":"ERROR"')


async def test_shutdown_cancels_stuck_streams_after_the_grace(clock: FakeClock) -> None:
    hub = Hub(clock=clock, shutdown_grace=0.05, write_timeout=100)
    res = hub.resource("orders")
    reply = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    assert reply.stream is not None
    stuck = anyio.Event()

    async def send(data: bytes) -> None:
        await stuck.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reply.stream.run, send)
        await anyio.wait_all_tasks_blocked()
        res.create(order("a"))  # the pump tries to write it and blocks forever
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await hub.aclose()
    assert hub.statistics().active_watches == 0


async def test_write_timeout_ends_the_watch() -> None:
    hub = Hub(write_timeout=0.05)
    res = hub.resource("orders")
    reply = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    assert reply.stream is not None

    async def send(data: bytes) -> None:
        await anyio.sleep(10)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reply.stream.run, send)
            await anyio.wait_all_tasks_blocked()
            res.create(order("a"))
    assert hub.statistics().active_watches == 0
    assert len(hub.state.registry) == 0


async def test_slow_consumer_is_disconnected_and_others_keep_going(clock: FakeClock) -> None:
    hub = Hub(clock=clock, buffer=5)
    res = hub.resource("orders")
    slow = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    fast = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    assert slow.stream is not None
    assert fast.stream is not None
    release = anyio.Event()
    got: list[bytes] = []

    async def slow_send(data: bytes) -> None:
        await release.wait()

    async def fast_send(data: bytes) -> None:
        got.append(data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow.stream.run, slow_send)
        tg.start_soon(fast.stream.run, fast_send)
        await anyio.wait_all_tasks_blocked()
        for i in range(20):
            res.create(order(f"o-{i}"))
            await anyio.wait_all_tasks_blocked()
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert slow.stream.session.close_reason is not None
        assert slow.stream.session.close_reason.value == "slow"
        await hub.aclose()
    assert sum(chunk.count(b"\n") for chunk in got) == 20


async def test_unknown_resource_is_404(hub: Hub) -> None:
    reply = await hub.answer("nope", RequestInfo(query=[("watch", "1")]))
    assert reply.status == 404


async def test_plain_list_uses_the_snapshot_callback(clock: FakeClock) -> None:
    hub = Hub(clock=clock)
    res = hub.resource("orders", snapshot=lambda: [order("a"), order("b", region="us")])
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(res)),
            Route("/orders/{name}", watch_endpoint(res, key="name")),
        ]
    )
    client = WatchClient(app)
    body = (await client.get("/orders", params={"labelSelector": "region=us"})).json()
    assert [i["metadata"]["name"] for i in body["items"]] == ["b"]
    assert body["metadata"]["resourceVersion"] == str(hub.head)
    assert (await client.get("/orders/a")).status == 200
    assert (await client.get("/orders/zz")).status == 404


async def test_without_state_a_watch_starts_at_the_head(clock: FakeClock) -> None:
    hub = Hub(clock=clock)
    res = hub.resource("orders", cache=False)
    res.create(order("a"))
    app = Starlette(routes=[Route("/orders", watch_endpoint(res))])
    client = WatchClient(app)
    async with client.stream("GET", "/orders", headers=SSE) as response:
        blocks = response.sse()
        await anext(blocks)
        start = await anext(blocks)
        assert (start.id, start.data) == (str(hub.head), None)  # no false "complete" state
    refused = await client.get("/orders", params={"watch": "1", "sendInitialEvents": "true"})
    assert refused.status == 400
    assert refused.json()["message"].startswith("sendInitialEvents: ")


def test_slow_consumer_policy_per_resource() -> None:
    hub = Hub()
    assert hub.resource("orders").slow_consumer == "disconnect"
    assert hub.resource("ticks", slow_consumer="coalesce").slow_consumer == "coalesce"
    with pytest.raises(UsageError, match="'disconnect' or 'coalesce'"):
        hub.resource("bad", slow_consumer="drop")
