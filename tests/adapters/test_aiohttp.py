"""What the aiohttp adapter adds beyond the conformance suite: the decorator's contract, the
WebSocket on the same route, limits, and the application's lifecycle.

Each test runs a real aiohttp server on 127.0.0.1 (``aiohttp.test_utils.TestServer``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from watchroutes import Hub, Resource
from watchroutes.adapters.aiohttp import (
    is_websocket,
    list_response,
    setup,
    watch_handler,
    watchable,
)
from watchroutes.backends.memory import MemoryLog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


def make_hub(**kwargs: object) -> tuple[Hub, Resource]:
    hub = Hub(**kwargs)  # type: ignore[arg-type]
    orders = hub.resource("orders", kind="Order")
    orders.seed([{"metadata": {"name": "o-1", "labels": {"region": "eu"}}}])
    return hub, orders


def orders_app(hub: Hub, orders: Resource) -> web.Application:
    """An application serving ``GET /orders`` with ``watch_handler(orders)``."""
    app = web.Application()
    setup(app, hub)
    app.router.add_get("/orders", watch_handler(orders))
    return app


@asynccontextmanager
async def serving(
    app: web.Application, **kwargs: Any
) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    server = TestServer(app, host="127.0.0.1", **kwargs)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(str(server.make_url(""))) as session:
            yield server, session
    finally:
        await server.close()


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling the hub's statistics
            await asyncio.sleep(0.01)


async def test_plain_get_runs_the_handler_with_vary_and_a_watch_runs_it_for_its_checks() -> None:
    hub, orders = make_hub()
    calls: list[str] = []

    @watchable(orders)
    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        return web.json_response({"mine": True}, headers={"Vary": "Origin"})

    app = web.Application()
    setup(app, hub)
    app.router.add_get("/orders", handler)
    async with serving(app) as (_, client):
        async with client.get("/orders") as response:
            assert await response.json() == {"mine": True}
            assert response.headers["Vary"] == "Origin, Accept"
        async with client.get("/orders", params={"watch": "1", "timeoutSeconds": "1"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            first = json.loads(await resp.content.readline())
            assert first["type"] == "ADDED"
            assert first["object"]["metadata"]["name"] == "o-1"
    assert calls == ["GET", "GET"]  # the watch ran it first (its own checks), then streamed


async def test_a_method_handler_and_other_methods_pass_through() -> None:
    hub, orders = make_hub()

    class Orders:
        @watchable(orders)
        async def any(self, request: web.Request) -> web.StreamResponse:
            return web.json_response({"method": request.method})

    view = Orders()
    app = web.Application()
    setup(app, hub)
    app.router.add_route("*", "/orders", view.any)
    async with serving(app) as (_, client):
        async with client.post("/orders", params={"watch": "1"}) as response:
            assert await response.json() == {"method": "POST"}  # only a GET is a watch
            assert "Vary" not in response.headers
        async with client.get("/orders", params={"watch": "1", "timeoutSeconds": "1"}) as resp:
            assert json.loads(await resp.content.readline())["type"] == "ADDED"


async def test_a_class_based_view() -> None:
    hub, orders = make_hub()

    class OrdersView(web.View):
        @watchable(orders)
        async def get(self) -> web.StreamResponse:
            return await list_response(orders, self.request)

    app = web.Application()
    setup(app, hub)
    app.router.add_view("/orders", OrdersView)
    async with serving(app) as (_, client):
        async with client.get("/orders") as response:
            assert [o["metadata"]["name"] for o in (await response.json())["items"]] == ["o-1"]
            assert response.headers["Vary"] == "Accept"
        async with client.get("/orders", params={"watch": "1", "timeoutSeconds": "1"}) as resp:
            assert json.loads(await resp.content.readline())["type"] == "ADDED"
        async with client.ws_connect("/orders", protocols=("watchroutes.v1",)) as ws:
            assert json.loads(await ws.receive_str())["type"] == "ADDED"


async def test_bad_watch_parameters_get_a_status_body() -> None:
    hub, orders = make_hub()
    app = orders_app(hub, orders)
    async with serving(app) as (_, client):
        async with client.get("/orders", params={"watch": "1", "labelSelector": "a in ("}) as r:
            assert r.status == 400
            body = await r.json()
            assert body["kind"] == "Status"
            assert body["reason"] == "BadRequest"
        async with client.get("/orders", params={"watch": "1", "resourceVersion": "x"}) as r:
            assert r.status == 400
        async with client.get("/orders") as r:
            body = await r.json()
            assert [o["metadata"]["name"] for o in body["items"]] == ["o-1"]


async def test_object_route_reads_the_key_from_the_path() -> None:
    hub, orders = make_hub()

    @watchable(orders, key="name")
    async def item(request: web.Request) -> web.StreamResponse:
        return await list_response(orders, request, key="name")

    app = web.Application()
    setup(app, hub)
    app.router.add_get("/orders/{name}", item)
    async with serving(app) as (_, client):
        async with client.get("/orders/o-1") as r:
            assert (await r.json())["metadata"]["name"] == "o-1"
        async with client.get("/orders/nope") as r:
            assert r.status == 404
            assert (await r.json())["reason"] == "NotFound"
        async with client.get("/orders/o-1", params={"watch": "1", "timeoutSeconds": "1"}) as r:
            assert json.loads(await r.content.readline())["object"]["metadata"]["name"] == "o-1"


async def test_the_same_route_upgrades_to_a_websocket_unless_told_not_to() -> None:
    hub, orders = make_hub()

    @watchable(orders, websocket=False)
    async def plain(request: web.Request) -> web.StreamResponse:
        return web.json_response({"upgrade": is_websocket(request)})

    app = orders_app(hub, orders)
    app.router.add_get("/plain", plain)
    async with serving(app) as (_, client):
        async with client.ws_connect("/orders", protocols=("watchroutes.v1",)) as ws:
            assert ws.protocol == "watchroutes.v1"
            message = json.loads(await ws.receive_str())
            assert message["type"] == "ADDED"
            orders.create({"metadata": {"name": "o-2"}})
            while (message := json.loads(await ws.receive_str()))["type"] != "ADDED":
                pass
            assert message["object"]["metadata"]["name"] == "o-2"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with client.ws_connect("/plain"):
                pass


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Sec-WebSocket-Version": "99"}, "Unsupported version: 99"),
        ({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"}, "Handshake error"),
    ],
)
async def test_a_malformed_handshake_gets_a_400_status(headers: dict[str, str], says: str) -> None:
    hub, orders = make_hub()
    app = orders_app(hub, orders)
    async with serving(app) as (_, client):
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", **headers}
        async with client.get("/orders", headers=upgrade) as response:
            assert response.status == 400
            body = await response.json()
            assert body["reason"] == "BadRequest"
            assert says in body["message"]
    assert hub.statistics().active_watches == 0


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024])
async def test_an_oversized_websocket_message_closes_with_1009(size: int) -> None:
    hub, orders = make_hub()
    app = orders_app(hub, orders)
    async with serving(app) as (_, client):
        async with client.ws_connect("/orders", max_msg_size=0) as ws:
            await ws.send_str("x" * size)
            while (message := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == 1009
        await wait_for(lambda: hub.statistics().active_watches == 0)


async def test_a_closed_watch_is_released_at_the_next_heartbeat() -> None:
    hub, orders = make_hub(heartbeat=0.2)
    app = orders_app(hub, orders)
    async with serving(app) as (_, client):
        for accept in ("text/event-stream", "application/json"):
            headers = {"Accept": accept}
            async with client.get("/orders", params={"watch": "1"}, headers=headers) as r:
                await r.content.readline()
                assert hub.statistics().active_watches == 1
            await wait_for(lambda: hub.statistics().active_watches == 0, within=2.0)


async def test_a_websocket_peer_that_stops_answering_pings_is_released() -> None:
    hub, orders = make_hub(heartbeat=0.2)
    app = orders_app(hub, orders)
    async with serving(app) as (_, client), client.ws_connect("/orders", autoping=False) as ws:
        assert json.loads(await ws.receive_str())["type"] == "ADDED"
        assert hub.statistics().active_watches == 1
        assert (await ws.receive(timeout=2)).type is aiohttp.WSMsgType.PING
        await wait_for(lambda: hub.statistics().active_watches == 0, within=2.0)


async def test_with_handler_cancellation_a_closed_watch_is_released_at_once() -> None:
    hub, orders = make_hub(heartbeat=30)
    app = orders_app(hub, orders)
    async with serving(app, handler_cancellation=True) as (_, client):
        async with client.get("/orders", params={"watch": "1"}) as r:
            await r.content.readline()
            assert hub.statistics().active_watches == 1
        await wait_for(lambda: hub.statistics().active_watches == 0, within=2.0)


async def test_shutdown_ends_streams_at_the_newest_rv() -> None:
    hub, orders = make_hub(heartbeat=30)
    app = orders_app(hub, orders)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(str(server.make_url(""))) as client:
        params = {"watch": "1", "allowWatchBookmarks": "true"}
        async with client.get("/orders", params=params) as r:
            await r.content.readline()
            changed = orders.create({"metadata": {"name": "o-2"}})
            closing = asyncio.ensure_future(server.close())
            lines = [json.loads(line) async for line in r.content if line.strip()]
            await asyncio.wait_for(closing, 10)
    # the stream ended (the loop above returned) where a client resumes without a loss
    assert (
        lines[-1]["object"]["metadata"]["resourceVersion"]
        == (changed["metadata"]["resourceVersion"])
    )
    assert hub.closing
    assert hub.statistics().active_watches == 0


async def test_the_hub_runs_in_a_task_of_its_own() -> None:
    """aiohttp may start and clean up an application in different tasks: the hub's task
    group (a shared log's follower) must not care."""
    hub = Hub(backend=MemoryLog())  # a shared log: the hub runs a follower in a task group
    orders = hub.resource("orders")
    app = web.Application()
    setup(app, hub)
    app.freeze()
    await asyncio.ensure_future(app.startup())
    assert hub.available
    await orders.acreate({"metadata": {"name": "o-1"}})
    assert [o["metadata"]["name"] for o in orders.list()[1]] == ["o-1"]
    await asyncio.ensure_future(app.shutdown())
    await asyncio.ensure_future(app.cleanup())
    assert hub.closing


async def test_a_watch_runs_the_handlers_own_checks_first() -> None:
    """A check in the handler's body refuses a watch (and a WebSocket) as it refuses the GET."""
    from watchroutes.adapters.aiohttp import list_response, setup, watchable

    hub = Hub(heartbeat=1.0)
    orders = hub.resource("orders", kind="Order")
    orders.create({"metadata": {"name": "secret"}})

    @watchable(orders)
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("authorization") != "Bearer good":
            raise web.HTTPUnauthorized(text="no")
        return await list_response(orders, request)

    app = web.Application()
    app.router.add_get("/orders", guarded)
    setup(app, hub)
    async with (
        TestServer(app) as server,
        TestClient[web.Request, web.Application](server) as client,
    ):
        for params, headers in (
            ({"watch": "true"}, {}),
            ({"watch": "true", "feed": "longpoll", "timeoutSeconds": "0"}, {}),
            ({}, {"Accept": "text/event-stream"}),
        ):
            refused = await client.get("/orders", params=params, headers=headers)
            assert refused.status == 401
            assert "secret" not in await refused.text()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/orders", protocols=["watchroutes.v1"])
        allowed = await client.get(
            "/orders",
            params={"watch": "true", "timeoutSeconds": "1"},
            headers={"authorization": "Bearer good"},
        )
        assert allowed.status == 200
        assert b"secret" in await allowed.read()
