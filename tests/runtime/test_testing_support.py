"""The test support itself: the in-memory client and the streaming httpx transports."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from watchroutes import Hub, Resource
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.testing import FakeClock, WatchClient
from watchroutes.testing.httpx import AsyncStreamingASGITransport, StreamingASGITransport


def make_app() -> tuple[Starlette, Resource]:
    hub = Hub()
    orders = hub.resource("orders")
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    app.state.hub = hub
    return app, orders


def test_sync_transport_streams_and_disconnects() -> None:
    app, orders = make_app()
    with httpx.Client(transport=StreamingASGITransport(app), base_url="http://t") as client:
        with client.stream("GET", "/orders", params={"watch": "1"}) as response:
            chunks = response.iter_raw()
            orders.create({"metadata": {"name": "a"}})
            line = next(chunks)
            assert json.loads(line)["object"]["metadata"]["name"] == "a"
            assert app.state.hub.statistics().active_watches == 1
        stats = client.get("/orders").json()
        assert [i["metadata"]["name"] for i in stats["items"]] == ["a"]
        assert app.state.hub.statistics().active_watches == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # httpx's own async generators
async def test_async_transport_streams_and_disconnects() -> None:  # warn when left on trio
    app, orders = make_app()
    async with anyio.create_task_group() as tg:
        transport = AsyncStreamingASGITransport(app, tg)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            async with client.stream("GET", "/orders", params={"watch": "1"}) as response:
                orders.create({"metadata": {"name": "a"}})
                async for chunk in response.aiter_raw():
                    assert b'"name":"a"' in chunk
                    break
            await anyio.wait_all_tasks_blocked()
            assert app.state.hub.statistics().active_watches == 0


@pytest.mark.anyio
async def test_watch_client_disconnects_after_n_events() -> None:
    app, orders = make_app()
    for i in range(5):
        orders.create({"metadata": {"name": f"o-{i}"}})
    client = WatchClient(app)
    events = await client.watch("/orders", 3, params={"watch": "1"})
    assert [e["object"]["metadata"]["name"] for e in events] == ["o-0", "o-1", "o-2"]
    await anyio.wait_all_tasks_blocked()
    assert app.state.hub.statistics().active_watches == 0


@pytest.mark.anyio
async def test_watch_client_reads_sse_blocks_and_raw_chunks() -> None:
    app, _ = make_app()
    client = WatchClient(app)
    async with client.stream("GET", "/orders", headers={"accept": "text/event-stream"}) as r:
        assert (await r.next_chunk()) == b"retry: 2000\n\n"
        block = await r.next_sse()
        assert block is not None
        assert block.id is not None
        r.disconnect()
        assert [c async for c in r.chunks()] == []
        assert r.ended


@pytest.mark.anyio
async def test_fake_clock_wakes_only_past_deadlines() -> None:
    clock = FakeClock()
    early, late = anyio.Event(), anyio.Event()
    done: list[str] = []

    async def wait(name: str, event: anyio.Event, deadline: float) -> None:
        await clock.wait(event, deadline)
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "early", early, 5.0)
        tg.start_soon(wait, "late", late, 50.0)
        await anyio.wait_all_tasks_blocked()
        await clock.advance(10)
        assert done == ["early"]
        assert clock.time_us() == 1_700_000_000_000_000 + 10_000_000
        await clock.advance(40)
    assert done == ["early", "late"]
    with pytest.raises(ValueError, match="forward"):
        clock.advance_nowait(-1)
