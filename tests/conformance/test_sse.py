"""protocol.md §3.3: Server-Sent Events framing, heartbeats, bookmarks and RESET."""

from __future__ import annotations

import re
import time

import pytest

from ._support import (
    INITIAL_EVENTS_END,
    Launch,
    Server,
    envelope,
    is_initial_end,
    name_of,
    rv_of,
)

pytestmark = pytest.mark.network

HOP_BY_HOP = ("keep-alive", "proxy-connection", "upgrade", "te", "trailer")
EVENT_BLOCK = re.compile(rb"id: (\d+)\ndata: (\{[^\r\n]*\})\n\n")


def test_headers(shared_server: Server) -> None:
    headers = {"accept": "text/event-stream", "accept-encoding": "gzip, deflate, br"}
    with shared_server.client.stream(
        "GET", "/orders", params={"timeoutSeconds": "5"}, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["vary"] == "Accept"
        assert "content-encoding" not in response.headers
        assert "content-length" not in response.headers
        for name in HOP_BY_HOP:
            assert name not in response.headers


def test_first_bytes_are_the_retry_block(shared_server: Server) -> None:
    with shared_server.sse(params={"timeoutSeconds": "5"}) as stream:
        first = stream.read_raw(1)
        assert first.startswith(b"retry: 2000\n\n")
        # The retry block is a block of its own, before any event.
        block = stream.next()
        assert block is not None
        assert (block.retry, block.id, block.data) == (2000, None, None)


def test_events_are_id_and_data_lines_without_event_field(shared_server: Server) -> None:
    with shared_server.sse(params={"timeoutSeconds": "5"}) as stream:
        blocks = stream.until(is_initial_end)
        raw = bytes(stream.raw)
    assert raw.startswith(b"retry: 2000\n\n")
    body = raw[len(b"retry: 2000\n\n") :]
    matches = list(EVENT_BLOCK.finditer(body))
    assert b"".join(m.group(0) for m in matches) == body  # nothing but id+data blocks
    assert len(matches) == len([b for b in blocks if b.data is not None]) == 4
    assert b"event:" not in raw
    for match in matches:
        env = match.group(2).decode()
        assert '"resourceVersion":"%s"}' % match.group(1).decode() in env  # noqa: UP031
        assert all(b.event is None for b in blocks)


def test_id_only_block_after_retry_when_started_with_an_rv(server: Server) -> None:
    rv = rv_of(server.create("o-1"))
    with server.sse(params={"resourceVersion": str(rv), "timeoutSeconds": "5"}) as stream:
        expected = b"retry: 2000\n\nid: %d\n\n" % rv
        assert stream.read_raw(len(expected)) == expected
        block = stream.until(lambda b: b.id is not None)[-1]
        assert (block.id, block.data) == (str(rv), None)


def test_heartbeat_comment(fast_server: Server) -> None:
    start = rv_of(fast_server.create("o-1"))
    with fast_server.sse(params={"resourceVersion": str(start), "timeoutSeconds": "5"}) as st:
        began = time.monotonic()
        st.until(lambda b: b.comments == ("hb",), timeout=3)
        assert time.monotonic() - began >= 0.3
        assert b"\n: hb\n\n" in st.raw
        # Nothing moved: heartbeats only, never a bookmark, never data.
        blocks = st.until(lambda b: b.comments == ("hb",), timeout=3)
        assert all(b.data is None and b.id is None for b in blocks)


def test_id_only_bookmark_when_filtered_changes_move_the_head(fast_server: Server) -> None:
    start = rv_of(fast_server.create("eu-1", "eu"))
    params = {"labelSelector": "region=eu", "resourceVersion": str(start), "timeoutSeconds": "8"}
    with fast_server.sse(params=params) as stream:
        stream.until(lambda b: b.id == str(start))
        moved = rv_of(fast_server.create("us-1", "us"))
        blocks = stream.until(lambda b: b.id is not None, timeout=3)
        mark = blocks[-1]
        assert (mark.id, mark.data) == (str(moved), None)
        assert b"id: %d\n\n" % moved in stream.raw
        assert stream.parser.last_event_id == str(moved)
        # Only once: afterwards, heartbeats until something else moves.
        later = stream.until(lambda b: b.comments == ("hb",), timeout=3)
        assert all(b.id is None for b in later)


def test_initial_events_end_bookmark_is_a_data_event(shared_server: Server) -> None:
    with shared_server.sse(params={"timeoutSeconds": "5"}) as stream:
        blocks = stream.until(is_initial_end)
    end = blocks[-1]
    env = envelope(end)
    assert env == {
        "type": "BOOKMARK",
        "object": {
            "kind": "Order",
            "apiVersion": "v1",
            "metadata": {
                "resourceVersion": end.id,
                "annotations": {INITIAL_EVENTS_END: "true"},
            },
        },
        "resourceVersion": end.id,
    }
    assert end.id is not None
    last_added = envelope(blocks[-2])
    assert int(end.id) >= int(last_added["resourceVersion"])


def _expire(server: Server) -> tuple[int, int, list[str]]:
    """With ``--retention 2``: create four orders; the first rv is then expired."""
    rvs = [rv_of(server.create(f"o-{i}")) for i in range(1, 5)]
    return rvs[0], rvs[1], [f"o-{i}" for i in range(1, 5)]


def test_reset_on_an_expired_last_event_id(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    old, _, names = _expire(server)
    headers = {"last-event-id": str(old)}
    with server.sse(params={"timeoutSeconds": "5"}, headers=headers) as stream:
        assert stream.response.status_code == 200
        blocks = stream.until(is_initial_end)
        raw = bytes(stream.raw)
    assert raw.startswith(b'retry: 2000\n\ndata: {"type":"RESET"}\n\n')
    reset = blocks[1]
    assert (reset.id, reset.data) == (None, '{"type":"RESET"}')
    data = [envelope(b) for b in blocks[2:]]
    assert [(e["type"], name_of(e)) for e in data[:-1]] == [("ADDED", n) for n in names]
    assert data[-1]["object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}


def test_a_drop_right_after_reset_is_reset_again(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    old, _, _ = _expire(server)
    headers = {"last-event-id": str(old)}
    for _ in range(2):
        with server.sse(params={"timeoutSeconds": "5"}, headers=headers) as stream:
            blocks = stream.until(lambda b: b.data is not None)
            # Up to the RESET, nothing set the browser's last event id: it is still the old one.
            assert [b.id for b in blocks] == [None, None]
            assert blocks[-1].data == '{"type":"RESET"}'


def test_resume_at_the_watermark_is_not_expired(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    _, watermark, _ = _expire(server)
    headers = {"last-event-id": str(watermark)}
    with server.sse(params={"timeoutSeconds": "5"}, headers=headers) as stream:
        events = stream.data_events(2)
    assert [name_of(e) for e in events] == ["o-3", "o-4"]
    assert b"RESET" not in stream.raw
