"""The blocking driver (WSGI): a tiny WSGI app over ``HubThread`` and ``wsgi_body``, driven by
the in-memory ``WSGIClient``. The same session rules as the async adapters: SSE, JSON lines and
long poll, a disconnect noticed by a failed write, shutdown with final bookmarks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import pytest

from watchroutes import Hub
from watchroutes._runtime.blocking import HubThread, wsgi_body
from watchroutes._runtime.hub import RequestInfo
from watchroutes.backends.memory import MemoryLog
from watchroutes.testing import WSGIClient

HEARTBEAT = 0.2


def order(name: str, region: str = "eu") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": region}}, "spec": {"qty": 1}}


def make_app(runner: HubThread) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        key = path.removeprefix("/orders/") if path.startswith("/orders/") else None
        info = RequestInfo(
            query=parse_qsl(environ["QUERY_STRING"], keep_blank_values=True),
            accept=environ.get("HTTP_ACCEPT"),
            last_event_id=environ.get("HTTP_LAST_EVENT_ID"),
            key=key,
        )
        reply = runner.answer("orders", info)
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}", reply.headers)
        return wsgi_body(reply)

    return app


@pytest.fixture(params=["memory", "shared"])
def runner(request: pytest.FixtureRequest) -> Iterator[HubThread]:
    backend = MemoryLog() if request.param == "shared" else None
    hub = Hub(heartbeat=HEARTBEAT, backend=backend, shutdown_grace=2.0)
    hub.resource("orders", kind="Order")
    with HubThread(hub) as running:
        yield running


def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def create(runner: HubThread, obj: dict[str, Any]) -> dict[str, Any]:
    hub = runner.hub
    stored: dict[str, Any] = hub.resources["orders"].create(obj)  # from this (foreign) thread
    return stored


def test_list_and_get_through_the_hub_thread(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    stored = create(runner, order("o-1"))
    listed = client.get("/orders")
    assert listed.status == 200
    assert listed.json()["items"] == [stored]
    assert client.get("/orders/o-1").json() == stored
    missing = client.get("/orders/o-2")
    assert missing.status == 404
    assert missing.json()["reason"] == "NotFound"
    bad = client.get("/orders", params={"watch": "1", "resourceVersion": "x"})
    assert bad.status == 400
    assert "resourceVersion" in bad.json()["message"]


def test_sse_initial_events_then_live_events_from_another_thread(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    first = create(runner, order("o-1"))
    with client.stream("GET", "/orders", headers={"accept": "text/event-stream"}) as s:
        assert s.status == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        retry = s.next_sse()
        assert retry is not None
        assert retry.retry == 2000
        added = s.next_sse()
        assert added is not None
        assert added.id == first["metadata"]["resourceVersion"]
        end = s.next_sse()
        assert end is not None
        assert '"BOOKMARK"' in (end.data or "")
        second = create(runner, order("o-2"))
        live = s.next_sse()
        assert live is not None
        assert live.id == second["metadata"]["resourceVersion"]
        assert '"ADDED"' in (live.data or "")


def test_json_lines_resume_is_exact(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    a = create(runner, order("a"))
    b = create(runner, order("b"))
    rv = a["metadata"]["resourceVersion"]
    with client.stream("GET", "/orders", params={"watch": "true", "resourceVersion": rv}) as s:
        assert s.headers["content-type"] == "application/json"
        event = s.next_line()
        assert (event["type"], event["object"]) == ("ADDED", b)


def test_long_poll_answers_what_changed(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    a = create(runner, order("a"))
    rv = a["metadata"]["resourceVersion"]
    params = {"watch": "true", "feed": "longpoll", "resourceVersion": rv, "timeoutSeconds": "5"}
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(client.get("/orders", params=params)))
    thread.start()
    time.sleep(0.1)
    b = create(runner, order("b"))
    thread.join(5)
    body = answer[0].json()
    assert [event["object"] for event in body["events"]] == [b]
    assert body["resourceVersion"] == b["metadata"]["resourceVersion"]


def test_a_client_that_left_is_released_within_a_heartbeat(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    hub = runner.hub
    sse = {"accept": "text/event-stream"}  # SSE writes a heartbeat when idle
    with client.stream("GET", "/orders", params={"watch": "true"}, headers=sse) as s:
        assert s.status == 200
        until(lambda: hub.statistics().active_watches == 1)
        s.disconnect()  # the next write (at most one heartbeat away) fails
        assert s.wait_closed(5 * HEARTBEAT + 2)
    until(lambda: hub.statistics().active_watches == 0)


def test_a_response_closed_before_it_was_read_releases_its_watch(runner: HubThread) -> None:
    hub = runner.hub
    reply = runner.answer("orders", RequestInfo(query=[("watch", "true")]))
    assert reply.stream is not None
    body = wsgi_body(reply)
    assert hub.statistics().active_watches == 1
    close = getattr(body, "close")  # noqa: B009 - what a WSGI server calls
    close()
    until(lambda: hub.statistics().active_watches == 0)


def test_shutdown_ends_each_stream_with_a_final_bookmark() -> None:
    hub = Hub(heartbeat=HEARTBEAT, shutdown_grace=2.0)
    hub.resource("orders", kind="Order")
    runner = HubThread(hub).start()
    client = WSGIClient(make_app(runner))
    try:
        query = {"watch": "true", "allowWatchBookmarks": "true", "labelSelector": "region=us"}
        with client.stream("GET", "/orders", params=query) as s:
            assert s.next_line()["type"] == "BOOKMARK"  # the end of the initial events
            moved = create(runner, order("eu-1"))  # filtered out: moves the head only
            stopper = threading.Thread(target=runner.stop)
            stopper.start()
            lines = []
            while (line := s.next_line()) is not None:
                lines.append(line)
            stopper.join(5)
        assert lines[-1]["type"] == "BOOKMARK"
        assert (
            lines[-1]["object"]["metadata"]["resourceVersion"]
            == (moved["metadata"]["resourceVersion"])
        )
        assert not runner.running
    finally:
        runner.stop()


def test_timeout_seconds_ends_the_stream_cleanly(runner: HubThread) -> None:
    client = WSGIClient(make_app(runner))
    started = time.monotonic()
    with client.stream("GET", "/orders", params={"watch": "true", "timeoutSeconds": "1"}) as s:
        assert s.read() == b""
    assert time.monotonic() - started < 5


def test_past_max_watches_a_watch_is_told_to_retry() -> None:
    """A watch holds a WSGI thread: past the hub's ``max_watches`` a new one is refused with
    a retryable 503 (SSE: 200 with ``retry:`` and an ERROR event), and plain GETs still work."""
    hub = Hub(heartbeat=HEARTBEAT, max_watches=1)
    hub.resource("orders", kind="Order")
    with HubThread(hub) as runner:
        client = WSGIClient(make_app(runner))
        with client.stream("GET", "/orders", params={"watch": "true"}) as held:
            assert held.status == 200
            refused = client.get("/orders", params={"watch": "true"})
            assert refused.status == 503
            assert refused.headers["retry-after"] == "2"
            assert refused.json()["reason"] == "ServiceUnavailable"
            sse = client.get("/orders", headers={"accept": "text/event-stream"})
            assert sse.status == 200
            assert sse.body.startswith(b"retry: 2000\n\ndata: ")
            assert b'"type":"ERROR"' in sse.body
            assert client.get("/orders").status == 200  # a plain list is not a watch
