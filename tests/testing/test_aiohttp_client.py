"""The in-memory aiohttp client: the WatchClient API over aiohttp's own server protocol."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import WSMsgType, web

from watchroutes import Hub, Resource
from watchroutes.adapters.aiohttp import setup, watch_handler
from watchroutes.testing import FakeClock, WebSocketClosed
from watchroutes.testing.aiohttp import AiohttpClient

pytestmark = pytest.mark.anyio
SSE = {"accept": "text/event-stream"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    return Hub(clock=clock)


@pytest.fixture
def orders(hub: Hub) -> Resource:
    return hub.resource("orders", kind="Order")


def make_app(hub: Hub, orders: Resource) -> web.Application:
    async def create(request: web.Request) -> web.Response:
        return web.json_response(orders.create(await request.json()), status=201)

    async def delete(request: web.Request) -> web.Response:
        return web.json_response(orders.delete(request.match_info["name"]))

    app = web.Application()
    setup(app, hub)
    app.router.add_get("/orders", watch_handler(orders))
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/{name}", watch_handler(orders, key="name"))
    app.router.add_delete("/orders/{name}", delete)
    return app


@pytest.fixture
async def client(hub: Hub, orders: Resource) -> AsyncIterator[AiohttpClient]:
    async with AiohttpClient(make_app(hub, orders)) as client:
        yield client


def names(events: list[dict[str, object]]) -> list[object]:
    return [e["object"]["metadata"]["name"] for e in events]  # type: ignore[index]


async def test_plain_requests_return_whole_responses(client: AiohttpClient) -> None:
    created = await client.post("/orders", json_body={"metadata": {"name": "o-1"}})
    assert created.status == 201, created.body
    got = await client.get("/orders/o-1")
    assert got.status == 200
    assert got.json()["metadata"]["name"] == "o-1"
    listed = await client.get("/orders")
    assert listed.headers["vary"] == "Accept"
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["o-1"]
    missing = await client.get("/orders/nope")
    assert missing.status == 404
    assert missing.json()["kind"] == "Status"
    deleted = await client.delete("/orders/o-1")
    assert deleted.status == 200
    head = await client.request("HEAD", "/orders")
    assert head.status == 200
    assert head.body == b""


async def test_a_watch_streams_and_resumes(client: AiohttpClient, orders: Resource) -> None:
    for i in range(3):
        orders.create({"metadata": {"name": f"o-{i}"}})
    first = await client.watch("/orders", 2, headers=SSE)
    assert names(first) == ["o-0", "o-1"]
    resumed = {**SSE, "last-event-id": first[-1]["resourceVersion"]}
    async with client.stream("GET", "/orders", headers=resumed) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        retry = await response.next_sse()
        assert retry is not None
        assert retry.retry == 2000
        start = await response.next_sse()
        assert start is not None
        assert start.id == first[-1]["resourceVersion"]
        (rest,) = await response.take(1)
        assert names([rest]) == ["o-2"]
        orders.delete("o-0")
        with anyio.fail_after(5):
            (deleted,) = await response.take(1)
        assert deleted["type"] == "DELETED"


async def test_json_lines_and_the_fake_clock(
    client: AiohttpClient, hub: Hub, clock: FakeClock
) -> None:
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
    async with client.stream("GET", "/orders", params=params) as response:
        (end,) = await response.take(1)
        assert end["type"] == "BOOKMARK"
        await clock.advance(hub.heartbeat)
        (bookmark,) = await response.take(1)
        assert bookmark["type"] == "BOOKMARK"
        await clock.advance(30 - hub.heartbeat)  # timeoutSeconds: the server ends the body
        assert await response.next_line() is None
        assert response.ended


async def test_a_disconnect_is_noticed_at_the_next_write_as_behind_a_socket(
    client: AiohttpClient, hub: Hub, clock: FakeClock
) -> None:
    async with client.stream("GET", "/orders", headers=SSE) as response:
        await response.take(1)
        response.disconnect()
    assert hub.statistics().active_watches == 1  # aiohttp's default: no handler cancellation
    await clock.advance(hub.heartbeat)  # the heartbeat's write fails
    assert hub.statistics().active_watches == 0


async def test_handler_cancellation_releases_at_once(hub: Hub, orders: Resource) -> None:
    async with AiohttpClient(make_app(hub, orders), handler_cancellation=True) as client:
        await client.watch("/orders", 1, headers=SSE)
        await anyio.wait_all_tasks_blocked()
        assert hub.statistics().active_watches == 0


async def test_shutdown_ends_open_streams(hub: Hub, orders: Resource) -> None:
    client = AiohttpClient(make_app(hub, orders))
    await client.start()
    orders.create({"metadata": {"name": "o-1"}})
    async with client.stream("GET", "/orders", params={"watch": "true"}) as response:
        await response.take(1)
        orders.create({"metadata": {"name": "o-2"}})
        await client.aclose()  # on_shutdown ends the hub's streams; the body ends
        rest = [event async for event in response.events()]
        assert names(rest) == ["o-2"]
        assert response.ended
    assert hub.statistics().active_watches == 0


async def test_not_started_is_a_clear_error(hub: Hub, orders: Resource) -> None:
    client = AiohttpClient(make_app(hub, orders))
    with pytest.raises(RuntimeError, match="not started"):
        await client.get("/orders")


async def test_chunks_arrive_as_the_app_writes_them_and_headers_repeat() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"x-seen": ",".join(request.headers.getall("x-a"))})
        await response.prepare(request)
        for chunk in (b"a", b"bc", b"\n" * 3):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    async with AiohttpClient(app) as client:
        headers = [("x-a", "1"), ("x-a", "2")]
        async with client.stream("GET", "/", headers=headers) as response:
            assert response.headers["x-seen"] == "1,2"
            assert [chunk async for chunk in response.chunks()] == [b"a", b"bc", b"\n\n\n"]
            assert response.ended


async def test_websocket_messages_and_close(client: AiohttpClient, orders: Resource) -> None:
    orders.create({"metadata": {"name": "o-1", "labels": {"region": "eu"}}})
    async with client.websocket("/orders") as socket:
        assert socket.subprotocol == "watchroutes.v1"
        (added,) = await socket.take(1)
        assert added["id"] == ""
        assert added["type"] == "ADDED"
        await socket.send_json({"op": "watch", "id": "us", "labelSelector": "region=us"})
        await anyio.wait_all_tasks_blocked()
        big = "x" * 70_000  # a frame with a 64-bit length
        orders.create({"metadata": {"name": "o-2", "labels": {"region": "us"}}, "big": big})
        events = await socket.take(2)
        assert sorted(e["id"] for e in events) == ["", "us"]
        assert all(e["object"]["big"] == big for e in events)
        await socket.send_text("not json")
        assert await socket.wait_closed() == (4400, "invalid message: not JSON")
        with pytest.raises(WebSocketClosed) as closed:
            await socket.receive()
        assert closed.value.code == 4400


async def test_websocket_closed_by_the_client(client: AiohttpClient, hub: Hub) -> None:
    async with client.websocket("/orders") as socket:
        await socket.close()
        assert await socket.wait_closed() == (1000, "")
    await anyio.wait_all_tasks_blocked()
    assert hub.statistics().active_watches == 0


async def test_websocket_refused_handshake_raises(client: AiohttpClient) -> None:
    with pytest.raises(WebSocketClosed) as refused:
        async with client.websocket("/orders", headers={"Sec-WebSocket-Version": "99"}):
            pass  # pragma: no cover
    assert refused.value.code == 1006
    assert refused.value.reason.startswith("HTTP 400")


async def test_websocket_pings_are_answered_and_binary_and_fragments_arrive() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        pong = await ws.receive()
        assert pong.type is WSMsgType.PONG
        await ws.send_bytes(pong.data)
        message = await ws.receive()
        await ws.send_str(json.dumps({"echo": message.data}))
        await ws.close(code=4000, message=b"done")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with AiohttpClient(app) as client, client.websocket("/ws", subprotocols=()) as socket:
        assert socket.subprotocol is None
        assert await socket.receive() == b"are you there"
        await socket.send_text("hi" * 100)  # a frame with a 16-bit length
        assert await socket.receive_json() == {"echo": "hi" * 100}
        assert await socket.wait_closed() == (4000, "done")
