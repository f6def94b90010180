"""The in-memory WSGI client offers the ASGI client's methods and readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from flask import Flask, request

from watchroutes import Hub, Resource
from watchroutes.adapters.flask import WatchRoutes, watch_view
from watchroutes.testing import WatchClient, WSGIClient, WSGIStream

SSE = {"accept": "text/event-stream"}


@pytest.fixture
def app_and_orders() -> Iterator[tuple[Flask, Resource]]:
    hub = Hub()
    orders = hub.resource("orders", kind="Order")
    app = Flask(__name__)
    watch = WatchRoutes(app, hub)
    app.add_url_rule("/orders", view_func=watch_view(orders))

    @app.post("/echo")
    def echo() -> dict[str, Any]:
        return {"json": request.get_json(), "x": request.headers.get("x-a")}

    try:
        yield app, orders
    finally:
        watch.stop()


@pytest.fixture
def orders(app_and_orders: tuple[Flask, Resource]) -> Resource:
    return app_and_orders[1]


@pytest.fixture
def client(app_and_orders: tuple[Flask, Resource]) -> WSGIClient:
    return WSGIClient(app_and_orders[0], timeout=10)


def test_the_readers_match_the_asgi_client() -> None:
    public = {name for name in dir(WatchClient) if not name.startswith("_")}
    assert public - {"websocket"} <= set(dir(WSGIClient))
    readers = {"next_chunk", "next_sse", "next_line", "next_event", "chunks", "sse"}
    readers |= {"json_lines", "events", "take", "read", "disconnect"}
    assert readers <= set(dir(WSGIStream))


def test_watch_reads_n_envelopes_then_leaves(orders: Resource, client: WSGIClient) -> None:
    for i in range(3):
        orders.create({"metadata": {"name": f"o-{i}"}})
    first = client.watch("/orders", 2, headers=SSE)
    assert [e["object"]["metadata"]["name"] for e in first] == ["o-0", "o-1"]
    lines = client.watch("/orders", 4, params={"watch": "true", "allowWatchBookmarks": "1"})
    assert [e["type"] for e in lines] == ["ADDED", "ADDED", "ADDED", "BOOKMARK"]


def test_events_take_and_iterators(orders: Resource, client: WSGIClient) -> None:
    orders.create({"metadata": {"name": "o-1"}})
    with client.stream("GET", "/orders", headers=SSE) as stream:
        (retry,) = stream.sse(1)
        assert retry.retry == 2000
        (added,) = stream.take(1)
        assert added["type"] == "ADDED"
        orders.create({"metadata": {"name": "o-2"}})
        assert [e["type"] for e in stream.events(2)] == ["BOOKMARK", "ADDED"]
        assert not stream.ended
    with client.stream("GET", "/orders") as stream:  # a list: the body ends
        body = json.loads(b"".join(stream.chunks()))
        assert [item["metadata"]["name"] for item in body["items"]] == ["o-1", "o-2"]
        assert stream.ended
        assert list(stream.json_lines()) == []


def test_json_body_and_verbs(client: WSGIClient) -> None:
    echoed = client.post("/echo", json_body={"a": 1}, headers={"x-a": "b"})
    assert echoed.status == 200
    assert echoed.json() == {"json": {"a": 1}, "x": "b"}
    assert client.delete("/echo").status == 405


def test_a_repeated_header_is_one_variable_joined_with_commas() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        seen.update(environ)
        start("204 No Content", [])
        return [b""]

    client = WSGIClient(app)
    client.get("/", headers=[("Authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert seen["HTTP_AUTHORIZATION"] == "Bearer a,Bearer b"
    assert seen["HTTP_HOST"] == "testserver"
