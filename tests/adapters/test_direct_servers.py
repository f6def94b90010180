"""The direct write path on real servers: uvicorn through ``watchroutes.adapters.uvicorn``'s
protocols (httptools and h11) and aiohttp's own writer.

Each test watches over a real socket, publishes one event at a time, and checks every event
arrives once and in order, and whether the publishes wrote them themselves
(``HubStatistics.direct_writes``). A middleware that rewrites bodies, or one that carries them
through a second task, must keep the watch on the ASGI path, where nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import aiohttp
import httpx
import msgspec
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Route

from watchroutes import Hub, Resource
from watchroutes.adapters import aiohttp as aiohttp_adapter
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.adapters.uvicorn import Server

EVENTS = 200
JSON = {"Accept": "application/json"}


def make_hub() -> tuple[Hub, Resource]:
    hub = Hub(heartbeat=60)
    return hub, hub.resource("orders", kind="Order")


def order(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"o-{i}"}, "spec": {"n": i}}


class RewriteBodies:
    """A pure ASGI middleware that hands the server a copy of every body (as compression
    would hand it other bytes)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def copying(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": bytes(bytearray(message["body"]))}
            await send(message)

        await self.app(scope, receive, copying)


class PassThrough(BaseHTTPMiddleware):
    """Starlette's BaseHTTPMiddleware: bodies reach the server through another task."""

    async def dispatch(self, request: Any, call_next: Any) -> Any:
        return await call_next(request)


@contextlib.contextmanager
def uvicorn_serving(app: Any, hub: Hub, http: str, *, direct: bool = True) -> Iterator[str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=http, lifespan="off", log_level="warning"
    )
    server = Server(config, hubs=[hub], direct=direct, freeze_gc=False)  # (a test process)
    thread = threading.Thread(target=server.run, daemon=True)  # (no signals off the main thread)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        time.sleep(0.01)
    try:
        yield server.url
    finally:
        server.should_exit = True
        thread.join(10)


def watch_and_publish(
    url: str, orders: Resource, *, sse: bool = False, on_loop: bool = True
) -> list[str]:
    """Watch ``/orders`` (JSON lines, or SSE), create EVENTS orders one at a time, on the
    server's loop (each applied before the next: one event per loop turn), or from this
    thread (``on_loop=False``: applied here, the loop woken), return the names received."""
    names: list[str] = []
    headers = {"Accept": "text/event-stream"} if sse else JSON
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{url}/orders?watch=true", headers=headers) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        if sse:
            assert next(lines).startswith("retry:")  # the stream is open
        for i in range(EVENTS):
            if on_loop:
                orders.hub.call(orders.create, order(i))
            else:
                orders.create(order(i))
        for line in lines:
            if sse:
                if not line.startswith("data: "):
                    continue
                line = line.removeprefix("data: ")
            event = msgspec.json.decode(line)
            if event["type"] != "BOOKMARK":  # (SSE starts with the end of the initial events)
                names.append(event["object"]["metadata"]["name"])
            if len(names) == EVENTS:
                break
    return names


EXPECTED = [f"o-{i}" for i in range(EVENTS)]


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize("sse", [True, False], ids=["sse", "jsonlines"])
def test_uvicorn_protocols_write_each_publish_to_an_idle_watch(http: str, sse: bool) -> None:
    hub, orders = make_hub()
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    with uvicorn_serving(app, hub, http) as url:
        assert watch_and_publish(url, orders, sse=sse) == EXPECTED
    # The path opens once a non-empty body reached the server as sent: at once for SSE (its
    # retry block), after the first event for a JSON-lines watch that starts empty.
    assert hub.statistics().direct_writes == (EVENTS if sse else EVENTS - 1)


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "jsonlines"])
def test_publishes_from_a_thread_arrive_once_and_in_order(sse: bool) -> None:
    """A thread's publish is applied in the thread; the loop only gets the wake-ups, which
    take the queued frames on the direct path when the watch is idle, or wake its task."""
    hub, orders = make_hub()
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    with uvicorn_serving(app, hub, "httptools") as url:
        assert watch_and_publish(url, orders, sse=sse, on_loop=False) == EXPECTED


def test_uvicorns_own_protocol_keeps_the_asgi_path() -> None:
    hub, orders = make_hub()
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    with uvicorn_serving(app, hub, "httptools", direct=False) as url:
        assert watch_and_publish(url, orders) == EXPECTED
    assert hub.statistics().direct_writes == 0


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_middleware_that_rewrites_bodies_keeps_the_asgi_path(http: str) -> None:
    hub, orders = make_hub()
    app = Starlette(
        routes=[Route("/orders", watch_endpoint(orders))], middleware=[Middleware(RewriteBodies)]
    )
    with uvicorn_serving(app, hub, http) as url:
        assert watch_and_publish(url, orders) == EXPECTED
    assert hub.statistics().direct_writes == 0


def test_a_middleware_with_its_own_task_keeps_order() -> None:
    hub, orders = make_hub()
    app = Starlette(
        routes=[Route("/orders", watch_endpoint(orders))], middleware=[Middleware(PassThrough)]
    )
    with uvicorn_serving(app, hub, "httptools") as url:
        assert watch_and_publish(url, orders) == EXPECTED


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiohttp_writes_each_publish_to_an_idle_watch(anyio_backend: str) -> None:
    hub, orders = make_hub()
    app = web.Application()
    aiohttp_adapter.setup(app, hub)
    app.router.add_get("/orders", aiohttp_adapter.watch_handler(orders))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    names: list[str] = []
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/orders?watch=true"), headers=JSON) as response,
        ):
            assert response.status == 200
            await asyncio.sleep(0.05)  # the watch is open and waiting
            for i in range(EVENTS):
                orders.create(order(i))
                await asyncio.sleep(0)  # one event per loop turn
            async with asyncio.timeout(10):
                while len(names) < EVENTS:
                    line = await response.content.readline()
                    names.append(msgspec.json.decode(line)["object"]["metadata"]["name"])
    finally:
        await server.close()
    assert names == EXPECTED
    assert hub.statistics().direct_writes == EVENTS


class AfterReturn:
    """A pure ASGI middleware that notes when the app returned."""

    returned: ClassVar[list[str]] = []

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        AfterReturn.returned.append(scope["path"])


def test_a_handed_over_watch_leaves_the_middleware_and_ends_when_the_client_leaves() -> None:
    """Under the direct protocols the app returns once the watch streams (its middleware sees
    the request end), the protocol runs the watch, and a client that leaves releases it."""
    hub, orders = make_hub()
    app = Starlette(
        routes=[Route("/orders", watch_endpoint(orders))], middleware=[Middleware(AfterReturn)]
    )
    AfterReturn.returned.clear()
    with uvicorn_serving(app, hub, "httptools") as url:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("GET", f"{url}/orders", headers={"Accept": "text/event-stream"}) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("retry:")
            assert AfterReturn.returned == ["/orders"]  # handed over: the app returned
            assert hub.statistics().active_watches == 1
            orders.create(order(1))
            assert any('"o-1"' in line for line in itertools.islice(lines, 6))
        deadline = time.monotonic() + 10  # the client left: connection_lost ends the watch
        while hub.statistics().active_watches:
            assert time.monotonic() < deadline, "the watch outlived its connection"
            time.sleep(0.01)
    assert hub.statistics().direct_writes == 1


FREEZE_CHECK = """
import asyncio, gc, sys
import uvicorn
from starlette.applications import Starlette
from watchroutes import Hub
from watchroutes.adapters.uvicorn import Server

hub = Hub()
server = Server(uvicorn.Config(Starlette(), host="127.0.0.1", port=0, log_level="warning"),
                hubs=[hub], freeze_gc=sys.argv[1] == "on")

async def main():
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(gc.get_freeze_count())
    server.should_exit = True
    await task

asyncio.run(main())
"""


@pytest.mark.parametrize("freeze", ["on", "off"])
def test_the_server_freezes_the_objects_of_start_up(freeze: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK, freeze], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.split()[-1])
    assert (frozen > 1000) if freeze == "on" else (frozen == 0)
