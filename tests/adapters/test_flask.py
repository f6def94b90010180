"""The Flask adapter in memory (``WSGIClient``): lists and watches on one route, streams that
run outside the request context, a departed client released within a heartbeat, the watch cap
that leaves threads to plain requests, and writes from any thread. The example app on gunicorn
runs the whole conformance suite (tests/conformance)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify

from watchroutes import Hub, Resource
from watchroutes.adapters.flask import WatchRoutes, list_response, watch_view, watchable
from watchroutes.testing import WSGIClient

HEARTBEAT = 0.2
SSE = {"accept": "text/event-stream"}


def order(name: str, region: str = "eu") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": region}}, "spec": {"qty": 1}}


def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class App:
    def __init__(self, max_watches: int | None = None) -> None:
        self.hub = Hub(heartbeat=HEARTBEAT, shutdown_grace=2.0, max_watches=max_watches)
        self.orders: Resource = self.hub.resource("orders", kind="Order")
        self.flask = Flask(__name__)
        self.ext = WatchRoutes(self.flask, self.hub)
        self.torn_down = threading.Event()
        self.flask.teardown_request(lambda exc: self.torn_down.set())
        orders = self.orders

        @self.flask.get("/orders")
        @watchable(orders)
        def list_orders() -> Any:
            return list_response(orders)

        @self.flask.get("/mine")
        @watchable(orders)
        def mine() -> Any:
            return jsonify(own=True)

        self.flask.add_url_rule("/orders/<name>", view_func=watch_view(orders, key="name"))
        self.client = WSGIClient(self.flask)


@pytest.fixture
def app() -> Iterator[App]:
    made = App()
    yield made
    made.ext.stop()


def test_list_object_and_the_apps_own_view(app: App) -> None:
    stored = app.orders.create(order("o-1"))
    listed = app.client.get("/orders")
    assert listed.status == 200
    assert listed.headers["vary"] == "Accept"
    assert listed.json()["items"] == [stored]
    assert app.client.get("/orders/o-1").json() == stored
    assert app.client.get("/orders/o-2").json()["reason"] == "NotFound"
    own = app.client.get("/mine")
    assert own.json() == {"own": True}
    assert "Accept" in own.headers["vary"]
    bad = app.client.get("/orders", params={"watch": "1", "resourceVersion": "x"})
    assert bad.status == 400
    assert "resourceVersion" in bad.json()["message"]


def test_sse_runs_outside_the_request_context(app: App) -> None:
    first = app.orders.create(order("o-1"))
    with app.client.stream("GET", "/orders", headers=SSE) as s:
        assert s.status == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
        retry = s.next_sse()
        assert retry is not None
        assert retry.retry == 2000
        added = s.next_sse()
        assert added is not None
        assert added.id == first["metadata"]["resourceVersion"]
        # The request context (and whatever the app tears down with it) ended before the
        # stream's first event: the watch holds the thread, nothing else.
        assert app.torn_down.is_set()
        second: list[Any] = []
        writer = threading.Thread(target=lambda: second.append(app.orders.create(order("o-2"))))
        writer.start()  # a write from another thread reaches the watch
        writer.join(5)
        live = s.next_sse()
        while live is not None and (live.data is None or '"BOOKMARK"' in live.data):
            live = s.next_sse()
        assert live is not None
        assert live.id == second[0]["metadata"]["resourceVersion"]


def test_json_lines_headers_go_out_before_any_event(app: App) -> None:
    app.orders.create(order("o-1"))
    params = {"watch": "true", "resourceVersion": "0", "sendInitialEvents": "false"}
    body = app.flask.test_client().get("/orders", query_string=params, buffered=False)
    try:
        assert body.status_code == 200
        assert next(iter(body.response)) == b""  # the first chunk: gunicorn sends the headers
    finally:
        body.close()


def test_a_client_that_left_is_released_within_a_heartbeat(app: App) -> None:
    with app.client.stream("GET", "/orders", params={"watch": "1"}, headers=SSE) as s:
        until(lambda: app.hub.statistics().active_watches == 1)
        s.disconnect()  # the next heartbeat's write fails
        assert s.wait_closed(HEARTBEAT * 5 + 2)
    until(lambda: app.hub.statistics().active_watches == 0)


def test_at_the_watch_cap_plain_gets_still_answer() -> None:
    app = App(max_watches=1)
    try:
        with app.client.stream("GET", "/orders", params={"watch": "1"}) as held:
            assert held.status == 200
            refused = app.client.get("/orders", params={"watch": "1"})
            assert refused.status == 503
            assert refused.headers["retry-after"]
            assert refused.json()["reason"] == "ServiceUnavailable"
            sse = app.client.get("/orders", headers=SSE)  # EventSource: 200, retry, ERROR
            assert sse.status == 200
            assert b"retry:" in sse.body
            assert b'"ERROR"' in sse.body
            assert app.client.get("/orders").status == 200
    finally:
        app.ext.stop()


def test_stop_ends_watches_with_a_final_bookmark(app: App) -> None:
    app.orders.create(order("o-1"))
    params = {"watch": "1", "allowWatchBookmarks": "true"}
    with app.client.stream("GET", "/orders", params=params) as s:
        assert s.next_line()["type"] == "ADDED"
        assert s.next_line()["type"] == "BOOKMARK"
        app.orders.create(order("o-2"))
        assert s.next_line()["type"] == "ADDED"
        app.ext.stop()
        rest = []
        while (line := s.next_line()) is not None:
            rest.append(line)
        assert all(line["type"] == "BOOKMARK" for line in rest)


def test_websocket_upgrade_without_a_server_socket_is_refused(app: App) -> None:
    headers = {"upgrade": "websocket", "connection": "Upgrade"}
    answer = app.client.get("/orders", headers=headers)  # werkzeug routes it to no rule
    assert 400 <= answer.status < 500


def test_a_watch_runs_the_views_own_checks_first() -> None:
    """A check in the view's body refuses a watch as it refuses the GET (no bypass)."""
    from flask import abort, redirect, request

    hub = Hub(heartbeat=HEARTBEAT, shutdown_grace=2.0)
    orders = hub.resource("orders", kind="Order")
    flask = Flask(__name__)
    ext = WatchRoutes(flask, hub)

    @flask.get("/guarded")
    @watchable(orders)
    def guarded() -> Any:
        if request.headers.get("authorization") != "Bearer good":
            abort(401)
        return list_response(orders)

    @flask.get("/login-first")
    @watchable(orders)
    def login_first() -> Any:
        return redirect("/login")

    try:
        orders.create(order("secret"))
        client = WSGIClient(flask)
        for params, headers in (
            ({"watch": "true"}, {}),
            ({"watch": "true", "feed": "longpoll", "timeoutSeconds": "0"}, {}),
            ({}, SSE),
        ):
            refused = client.get("/guarded", params=params, headers=headers)
            assert refused.status == 401
            assert b"secret" not in refused.body
            assert client.get("/login-first", params=params, headers=headers).status == 302
        good = {"authorization": "Bearer good"}
        with client.stream("GET", "/guarded", params={"watch": "true"}, headers=good) as s:
            assert s.next_line()["object"]["metadata"]["name"] == "secret"
    finally:
        ext.stop()
