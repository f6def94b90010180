"""protocol.md §3.4: JSON lines, the Kubernetes watch format."""

from __future__ import annotations

import json
import time

import pytest

from ._support import STATUS_KEYS, Launch, Server, assert_status_object, is_bookmark, rv_of

pytestmark = pytest.mark.network


def test_headers_and_line_framing(launch: Launch) -> None:
    server = launch("--heartbeat", "0.3", "--seed", "3")
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "1"}
    with server.client.stream("GET", "/orders", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        # Framed by the server as a stream: chunked on the wire, never a Content-Length.
        assert "content-length" not in response.headers
        if not server.in_memory:
            assert response.headers["transfer-encoding"] == "chunked"
        assert "content-encoding" not in response.headers
        assert response.headers["vary"] == "Accept"
        chunks: list[bytes] = []
        for chunk in response.iter_raw():
            if len(chunks) == 1:
                server.create("o-live", "eu")
            chunks.append(chunk)
    body = b"".join(chunks)
    assert body.endswith(b"\n")
    assert not body.startswith(b"\n")
    assert b"\n\n" not in body
    assert b"\r" not in body
    lines = body.split(b"\n")[:-1]
    types = []
    for line in lines:
        event = json.loads(line)
        assert list(event) == ["type", "object", "resourceVersion"]
        assert line == json.dumps(event, separators=(",", ":")).encode()  # compact
        assert event["resourceVersion"] == event["object"]["metadata"]["resourceVersion"]
        types.append(event["type"])
    assert types[:4] == ["ADDED", "ADDED", "ADDED", "BOOKMARK"]
    assert "BOOKMARK" in types[5:]  # periodic ones, every 0.3 s
    assert ("ADDED", "o-live") in [
        (json.loads(x)["type"], json.loads(x)["object"]["metadata"].get("name")) for x in lines
    ]


def test_expired_rv_is_one_error_line_with_a_410_status(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    rvs = [rv_of(server.create(f"o-{i}")) for i in range(1, 5)]
    old, watermark = rvs[0], rvs[1]
    params = {"watch": "true", "resourceVersion": str(old)}
    with server.client.stream("GET", "/orders", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.read()
    assert body.endswith(b"\n")
    assert body.count(b"\n") == 1
    event = json.loads(body)
    assert list(event) == ["type", "object"]
    assert event["type"] == "ERROR"
    status = event["object"]
    assert_status_object(status, 410, "Expired")
    assert list(status) == STATUS_KEYS
    assert status["message"] == f"too old resource version: {old} ({watermark})"
    assert body == (
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
        b'"status":"Failure","code":410,"reason":"Expired","message":"too old resource '
        b'version: %d (%d)"}}\n' % (old, watermark)
    )


def test_resume_at_the_watermark_is_exact(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    rvs = [rv_of(server.create(f"o-{i}")) for i in range(1, 5)]
    with server.lines(params={"resourceVersion": str(rvs[1]), "timeoutSeconds": "5"}) as st:
        events = st.take(2)
    assert [int(e["resourceVersion"]) for e in events] == rvs[2:]


def test_periodic_bookmark_with_allow_watch_bookmarks(fast_server: Server) -> None:
    start = rv_of(fast_server.create("o-1"))
    params = {"resourceVersion": str(start), "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
    with fast_server.lines(params=params) as stream:
        began = time.monotonic()
        first = stream.next(timeout=3)
        assert time.monotonic() - began >= 0.3
        second = stream.next(timeout=3)
    for event in (first, second):
        assert event == {
            "type": "BOOKMARK",
            "object": {
                "kind": "Order",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(start)},
            },
            "resourceVersion": str(start),
        }


def test_periodic_bookmark_follows_filtered_changes(fast_server: Server) -> None:
    start = rv_of(fast_server.create("eu-1", "eu"))
    params = {
        "labelSelector": "region=eu",
        "resourceVersion": str(start),
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "5",
    }
    with fast_server.lines(params=params) as stream:
        moved = rv_of(fast_server.create("us-1", "us"))
        events = stream.until(lambda e: e["resourceVersion"] == str(moved), timeout=3)
    assert all(is_bookmark(e) for e in events)


def test_nothing_while_idle_without_allow_watch_bookmarks(fast_server: Server) -> None:
    start = rv_of(fast_server.create("eu-1", "eu"))
    params = {"labelSelector": "region=eu", "resourceVersion": str(start), "timeoutSeconds": "2"}
    with fast_server.lines(params=params) as stream:
        fast_server.create("us-1", "us")  # filtered out: moves the head, no bookmark to send
        assert stream.rest() == []
        assert stream.raw == b""


def test_no_initial_events_end_bookmark_without_allow_watch_bookmarks(launch: Launch) -> None:
    server = launch("--heartbeat", "0.3", "--seed", "2")
    with server.lines(params={"timeoutSeconds": "1"}) as stream:
        events = stream.rest()
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]


def test_timeout_ends_cleanly_without_error(server: Server) -> None:
    server.create("o-1")
    with server.lines(params={"timeoutSeconds": "1", "allowWatchBookmarks": "true"}) as stream:
        events = stream.rest()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
