"""protocol.md §6: the example app's token, metrics, page and graceful shutdown."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from ._support import (
    Launch,
    Server,
    assert_status,
    is_initial_end,
    order,
    rv_of,
)

pytestmark = pytest.mark.network

TOKEN = "s3cret-t0ken"
BEARER = {"authorization": f"Bearer {TOKEN}"}


GUARDED_FLAGS = ("--heartbeat", "30", "--seed", "2", "--token", TOKEN)


@pytest.fixture
def guarded(launch: Launch) -> Server:
    return launch(*GUARDED_FLAGS)


@pytest.fixture(scope="module")
def guarded_shared(framework: str) -> Iterator[Server]:
    """For requests that are refused (nothing is written)."""
    server = Server.start(framework, *GUARDED_FLAGS)
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("method", "path", "params", "headers"),
    [
        ("GET", "/orders", {}, {}),
        ("GET", "/orders", {"watch": "true"}, {}),
        ("GET", "/orders", {}, {"accept": "text/event-stream"}),
        ("GET", "/orders/o-1", {}, {}),
        ("GET", "/orders", {"access_token": "wrong"}, {}),
        ("GET", "/orders", {}, {"authorization": "Bearer wrong"}),
        ("GET", "/orders", {}, {"authorization": f"Basic {TOKEN}"}),
        ("POST", "/orders", {}, {}),
        ("POST", "/orders", {"access_token": TOKEN}, {}),  # the query token is for GETs only
        ("PUT", "/orders/o-1", {}, {}),
        ("PATCH", "/orders/o-1", {}, {"content-type": "application/merge-patch+json"}),
        ("DELETE", "/orders/o-1", {}, {}),
    ],
)
def test_401_without_a_valid_token(
    guarded_shared: Server, method: str, path: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    content = b'{"metadata":{"name":"o-1"}}' if method in ("POST", "PUT") else None
    if method == "PATCH":
        content = b"{}"
    response = guarded_shared.client.request(
        method, path, params=params, headers=headers, content=content
    )
    status = assert_status(response, 401, "Unauthorized")
    assert TOKEN not in status["message"]
    if method == "GET":
        assert response.headers["vary"] == "Accept"


def test_bearer_header_opens_writes_and_watches(guarded: Server) -> None:
    client = guarded.client
    params = {"watch": "true", "timeoutSeconds": "5"}
    with client.stream("GET", "/orders", params=params, headers=BEARER) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        first = next(response.iter_raw())
    assert first.startswith(b'{"type":"ADDED"')
    created = client.post("/orders", json=order("o-9"), headers=BEARER)
    assert created.status_code == 201
    patched = client.patch(
        "/orders/o-9",
        content=b'{"spec":{"qty":2}}',
        headers={**BEARER, "content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200
    assert client.put("/orders/o-9", json=order("o-9"), headers=BEARER).status_code == 200
    assert client.delete("/orders/o-9", headers=BEARER).status_code == 200


def test_access_token_query_opens_an_event_source(guarded: Server) -> None:
    with guarded.sse(params={"access_token": TOKEN, "timeoutSeconds": "5"}) as stream:
        blocks = stream.until(is_initial_end)
    assert len([b for b in blocks if b.data is not None]) == 3


def test_access_token_query_on_a_json_lines_watch(guarded: Server) -> None:
    with guarded.lines(params={"access_token": TOKEN, "timeoutSeconds": "5"}) as stream:
        assert stream.next()["type"] == "ADDED"


@pytest.mark.parametrize("how", ["header", "query"])
def test_token_opens_a_plain_list(
    guarded: Server, how: str, framework: str, request: pytest.FixtureRequest
) -> None:
    if how == "header":
        response = guarded.client.get("/orders", headers=BEARER)
    else:
        response = guarded.client.get("/orders", params={"access_token": TOKEN})
    assert response.status_code == 200
    assert response.json()["kind"] == "OrderList"


def test_token_opens_a_plain_object_get(guarded: Server, request: pytest.FixtureRequest) -> None:
    assert guarded.client.get("/orders/o-1", headers=BEARER).status_code == 200


def test_page_and_metrics_stay_open(guarded: Server) -> None:
    page = guarded.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    metrics = guarded.client.get("/metrics")
    assert metrics.status_code == 200


def test_page_is_html_with_an_event_source(server: Server) -> None:
    page = server.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    text = page.text
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "EventSource" in text
    assert "/orders" in text


def test_metrics(server: Server) -> None:
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE watchroutes_active_watches gauge" in text
    assert "# TYPE watchroutes_events_published_total counter" in text
    before = server.metric("watchroutes_events_published_total")
    server.create("o-1")
    server.patch("o-1", {"spec": {"qty": 2}})
    assert server.metric("watchroutes_events_published_total") == before + 2


def test_active_watches_rise_while_a_watch_is_open(fast_server: Server) -> None:
    server = fast_server
    assert server.metric("watchroutes_active_watches") == 0
    with server.sse(params={"timeoutSeconds": "10"}) as stream:
        stream.until(is_initial_end)
        with server.lines(params={"timeoutSeconds": "10", "allowWatchBookmarks": "1"}) as lines:
            lines.next()
            assert server.metric("watchroutes_active_watches") == 2
        _wait_for_metric(server, "watchroutes_active_watches", 1)
    # A client that leaves is released within about one heartbeat interval.
    _wait_for_metric(server, "watchroutes_active_watches", 0)


def _wait_for_metric(server: Server, name: str, value: float, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := server.metric(name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {current}, expected {value}"
        time.sleep(0.05)


def test_sigterm_ends_open_watches_and_the_process_exits(fast_server: Server) -> None:
    server = fast_server
    start = rv_of(server.create("eu-1", "eu"))
    params = {"labelSelector": "region=eu", "resourceVersion": str(start)}
    with (
        server.sse(params=params) as stream,
        server.lines(params={**params, "allowWatchBookmarks": "true"}) as lines,
    ):
        stream.until(lambda b: b.id == str(start))
        moved = rv_of(server.create("us-1", "us"))  # filtered out: moves the head
        began = time.monotonic()
        server.signal_stop()
        # The server ends both streams (neither has a timeout): reading returns the end.
        sse_rest = stream.rest(timeout=10)
        line_rest = lines.rest(timeout=10)
        assert stream.ended
        assert lines.ended
        assert time.monotonic() - began < 10
    # Just before the end, a bookmark at the newest point, so the clients resume from it.
    assert sse_rest
    assert (sse_rest[-1].id, sse_rest[-1].data) == (str(moved), None)
    assert line_rest
    assert line_rest[-1]["type"] == "BOOKMARK"
    assert line_rest[-1]["resourceVersion"] == str(moved)
    code = server.wait_exit(10 - (time.monotonic() - began))
    assert code in (0, -signal.SIGTERM)


def test_sigterm_with_an_idle_sse_watch(server: Server) -> None:
    with server.sse() as stream:
        stream.until(is_initial_end)
        began = time.monotonic()
        server.signal_stop()
        stream.rest(timeout=10)
        assert stream.ended
    assert server.wait_exit(10 - (time.monotonic() - began)) in (0, -signal.SIGTERM)
    server.needs_process()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url + "/orders", timeout=2, trust_env=False)
