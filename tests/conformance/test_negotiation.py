"""protocol.md §3.1: the same URL answers a list or a watch, by ``Accept`` and ``watch``."""

from __future__ import annotations

import pytest

from ._support import (
    INITIAL_EVENTS_END,
    Server,
    assert_status,
    envelope,
    is_initial_end,
    name_of,
    rv_of,
)

pytestmark = pytest.mark.network


def test_plain_get_is_a_kubernetes_style_list(
    seeded: Server, framework: str, request: pytest.FixtureRequest
) -> None:
    response = seeded.client.get("/orders")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept"
    body = response.json()
    assert list(body) == ["kind", "apiVersion", "metadata", "items"]
    assert body["kind"] == "OrderList"
    assert body["apiVersion"] == "v1"
    assert list(body["metadata"]) == ["resourceVersion"]
    head = body["metadata"]["resourceVersion"]
    assert isinstance(head, str)
    assert head.isdigit()
    assert [item["metadata"]["name"] for item in body["items"]] == ["o-1", "o-2", "o-3"]
    rvs = [rv_of(item) for item in body["items"]]
    assert rvs == sorted(rvs)
    assert max(rvs) <= int(head)
    # Compact JSON, as the rest of the wire.
    assert response.content.startswith(b'{"kind":"OrderList","apiVersion":"v1","metadata":{')


def test_list_reflects_the_newest_write(
    server: Server, framework: str, request: pytest.FixtureRequest
) -> None:
    created = server.create("o-new")
    body = server.list()
    assert body["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert body["items"] == [created]


@pytest.mark.parametrize("query", [{}, {"watch": "true"}, {"watch": "false"}])
def test_accept_event_stream_is_sse(shared_server: Server, query: dict[str, str]) -> None:
    """``Accept: text/event-stream`` picks SSE with or without ``watch=true``."""
    with shared_server.sse(params={**query, "timeoutSeconds": "5"}) as stream:
        assert stream.read_raw(13).startswith(b"retry: 2000\n\n")
        blocks = stream.until(is_initial_end)
        names = [name_of(envelope(b)) for b in blocks if b.data and not is_initial_end(b)]
        assert names == ["o-1", "o-2", "o-3"]


def test_watch_true_is_json_lines(shared_server: Server) -> None:
    params = {"watch": "true", "timeoutSeconds": "5"}
    with shared_server.client.stream("GET", "/orders", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        # Framed by the server as a stream: chunked on the wire, never a Content-Length.
        assert "content-length" not in response.headers
        if not shared_server.in_memory:
            assert response.headers["transfer-encoding"] == "chunked"
        first = next(response.iter_raw())
    assert first.startswith(b'{"type":"ADDED","object":{"metadata":{"name":"o-1"')


def _is_watch(server: Server, value: str) -> bool:
    params = {"watch": value, "timeoutSeconds": "5", "allowWatchBookmarks": "true"}
    with server.client.stream("GET", "/orders", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        first = next(response.iter_raw())
    if first.startswith(b'{"kind":"OrderList"'):
        return False
    assert first.startswith(b'{"type":"ADDED"'), first
    return True


@pytest.mark.parametrize("value", ["true", "True", "TRUE", "1", "", "yes"])
def test_watch_values_that_are_true(shared_server: Server, value: str) -> None:
    assert _is_watch(shared_server, value)


@pytest.mark.parametrize("value", ["false", "False", "FALSE", "0"])
def test_watch_values_that_are_false(
    seeded: Server, value: str, framework: str, request: pytest.FixtureRequest
) -> None:
    assert not _is_watch(seeded, value)


def test_watch_value_is_literally_empty(shared_server: Server) -> None:
    """``?watch=`` (no value) is true; httpx would drop nothing, but be explicit."""
    with shared_server.client.stream("GET", "/orders?watch=&timeoutSeconds=5") as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
    assert first.startswith(b'{"type":"ADDED"'), first


@pytest.mark.parametrize(
    ("path", "params", "headers", "status"),
    [
        ("/orders", {"resourceVersion": "abc"}, {}, 400),
        ("/orders", {"watch": "true", "resourceVersion": "abc"}, {}, 400),
        ("/orders", {"resourceVersion": "abc"}, {"accept": "text/event-stream"}, 400),
        ("/orders", {"watch": "true", "feed": "bogus"}, {}, 400),
        ("/orders/o-1", {"watch": "true", "fieldSelector": "metadata.name=o-2"}, {}, 400),
        ("/orders", {"watch": "true", "resourceVersion": "1"}, {}, 200),  # 410 ERROR line
        ("/orders", {"watch": "true", "timeoutSeconds": "1"}, {}, 200),
        ("/orders", {"timeoutSeconds": "1"}, {"accept": "text/event-stream"}, 200),
        ("/orders/o-1", {"watch": "true", "timeoutSeconds": "1"}, {}, 200),
    ],
)
def test_vary_accept_on_every_response(
    shared_server: Server,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    with shared_server.client.stream("GET", path, params=params, headers=headers) as response:
        assert response.status_code == status
        assert "accept" in [v.strip().lower() for v in response.headers["vary"].split(",")]
        response.read()


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/orders", {}, 200),
        ("/orders", {"watch": "0"}, 200),
        ("/orders/o-1", {}, 200),
        ("/orders/missing", {}, 404),
    ],
)
def test_vary_accept_on_plain_gets(
    seeded: Server,
    path: str,
    params: dict[str, str],
    status: int,
    framework: str,
    request: pytest.FixtureRequest,
) -> None:
    response = seeded.client.get(path, params=params)
    assert response.status_code == status
    assert response.headers["vary"] == "Accept"


def test_object_get_present(seeded: Server, request: pytest.FixtureRequest) -> None:
    objects, _ = seeded.state()
    response = seeded.client.get("/orders/o-2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == objects["o-2"]


def test_object_get_missing_is_404(seeded: Server, request: pytest.FixtureRequest) -> None:
    assert_status(seeded.client.get("/orders/o-404"), 404, "NotFound", "o-404")


def test_object_watch_of_a_missing_object_waits_for_it(server: Server) -> None:
    params = {"allowWatchBookmarks": "true", "timeoutSeconds": "10"}
    with server.lines("/orders/o-later", params) as stream:
        end = stream.next()
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}
        server.create("o-other")  # another key: not this watch's business
        created = server.create("o-later", qty=3)
        event = stream.next()
        assert event == {
            "type": "ADDED",
            "object": created,
            "resourceVersion": created["metadata"]["resourceVersion"],
        }


def test_object_watch_over_sse(server: Server) -> None:
    server.create("o-1")
    with server.sse("/orders/o-2", {"timeoutSeconds": "10"}) as stream:
        blocks = stream.until(is_initial_end)
        assert [b for b in blocks if b.data is not None and not is_initial_end(b)] == []
        server.patch("o-1", {"spec": {"qty": 9}})
        created = server.create("o-2")
        (event,) = stream.data_events(1)
        assert event["type"] == "ADDED"
        assert event["object"] == created


def test_object_watch_sends_only_its_object(server: Server) -> None:
    server.create("o-1")
    server.create("o-2")
    with server.lines("/orders/o-2", {"timeoutSeconds": "10"}) as stream:
        (initial,) = stream.take(1)
        assert name_of(initial) == "o-2"
        server.patch("o-1", {"spec": {"qty": 5}})
        changed = server.patch("o-2", {"spec": {"qty": 6}})
        assert stream.next() == {
            "type": "MODIFIED",
            "object": changed,
            "resourceVersion": changed["metadata"]["resourceVersion"],
        }


def test_object_watch_with_a_conflicting_name_selector_is_400(shared_server: Server) -> None:
    for headers in ({}, {"accept": "text/event-stream"}):
        response = shared_server.client.get(
            "/orders/o-1",
            params={"watch": "true", "fieldSelector": "metadata.name=o-2"},
            headers=headers,
        )
        assert_status(response, 400, "BadRequest", "fieldSelector")


def test_object_watch_with_the_same_name_selector_is_fine(shared_server: Server) -> None:
    params = {"fieldSelector": "metadata.name=o-1", "timeoutSeconds": "5"}
    with shared_server.lines("/orders/o-1", params) as stream:
        assert name_of(stream.next()) == "o-1"
