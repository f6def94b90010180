"""The client's sans-IO parts: decoders, backoff, the watch's decisions and the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from watchroutes.client import (
    INITIAL_EVENTS_END,
    Backoff,
    ChangeType,
    EventType,
    InformerStore,
    ProtocolError,
    StatusError,
    UnauthorizedError,
    WatchEvent,
    browser_module,
    default_key,
)
from watchroutes.client._decode import MAX_EVENT_BYTES, JSONLinesDecoder, SSEDecoder
from watchroutes.client._protocol import REFRESH, WatchCore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fixed(*values: float) -> Iterator[float]:
    yield from values


def obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, **extra}


def env(type_: str, o: Any = None, rv: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": type_}
    if o is not None:
        body["object"] = o
    if rv is not None:
        body["resourceVersion"] = rv
    return json.dumps(body, separators=(",", ":")).encode()


def end_bookmark(rv: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv, "annotations": {INITIAL_EVENTS_END: "true"}}}


def sse(data: bytes | None = None, id_: str | None = None) -> bytes:
    out = b""
    if id_ is not None:
        out += b"id: " + id_.encode() + b"\n"
    if data is not None:
        out += b"data: " + data + b"\n"
    return out + b"\n"


def status(code: int, reason: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": f"{reason} here",
    }
    if details:
        body["details"] = details
    return body


# -- decoders ------------------------------------------------------------------------------


def test_sse_decoder_reports_id_only_blocks_and_follows_whatwg_line_ends() -> None:
    decoder = SSEDecoder()
    stream = b"\xef\xbb\xbfretry: 2000\r\n\r\n: hb\n\nid: 7\n\nid: 8\rdata: a\r\ndata: b\r"
    blocks = [b for i in range(len(stream)) for b in decoder.feed(stream[i : i + 1])]
    blocks += decoder.feed(b"\n\r\n")
    assert [(b.data, b.id, b.retry) for b in blocks] == [
        (None, None, 2000),
        (None, "7", None),
        (b"a\nb", "8", None),
    ]


def test_jsonlines_decoder_splits_lines_across_chunks() -> None:
    decoder = JSONLinesDecoder()
    line = env("ADDED", obj("a", "1"), "1") + b"\n"
    assert decoder.feed(line[:10]) == []
    (envelope,) = decoder.feed(line[10:] + line[:3])
    assert envelope.type == "ADDED"
    assert envelope.resourceVersion == "1"
    assert decoder.pending == line[:3]
    with pytest.raises(ProtocolError):
        decoder.feed(b"[1]\n")


def test_decoders_refuse_unbounded_events() -> None:
    huge = b"x" * (MAX_EVENT_BYTES + 1)
    with pytest.raises(ProtocolError, match="JSON line longer"):
        JSONLinesDecoder().feed(huge)
    with pytest.raises(ProtocolError, match="SSE line longer"):
        SSEDecoder().feed(b"data: " + huge)
    sse = SSEDecoder()
    quarter = b"data: " + b"x" * (MAX_EVENT_BYTES // 4) + b"\n"
    with pytest.raises(ProtocolError, match="SSE event larger"):
        sse.feed(quarter * 5)


# -- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_full_jitter_and_resets_after_a_healthy_period() -> None:
    draws = iter([0.5] * 20)
    backoff = Backoff(random=lambda: next(draws))
    delays = [backoff.failure(float(t)) for t in range(8)]
    assert delays == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 15.0, 15.0]  # half of 0.8·2ⁿ, cap 30
    assert backoff.failure(7 + 119.9) == 15.0  # not yet healthy long enough
    assert backoff.failure(7 + 119.9 + 120) == 0.4  # 2 minutes without a failure: start over
    zero = Backoff(random=lambda: 0.0)
    assert zero.failure(0) == 0.0  # full jitter: the draw may be anything from 0
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)


# -- the watch's decisions -----------------------------------------------------------------


def core(transport: str = "sse", **kwargs: Any) -> tuple[WatchCore, Clock]:
    clock = Clock()
    draws = iter([0.5] * 50)
    backoff = Backoff(random=lambda: next(draws))
    return WatchCore(
        "http://h/orders", transport=transport, backoff=backoff, clock=clock, **kwargs
    ), clock


def test_requests_resume_from_the_last_rv_outside_the_initial_events() -> None:
    c, clock = core(token="t", params={"labelSelector": "region=eu"})
    spec = c.request()
    assert spec.headers["Accept"] == "text/event-stream"
    assert spec.headers["Authorization"] == "Bearer t"
    assert "Last-Event-ID" not in spec.headers
    assert ("labelSelector", "region=eu") in spec.params
    assert spec.read_timeout > 2 * 15
    c.opened("text/event-stream; charset=utf-8")
    events = c.feed(
        b"retry: 2000\n\n"
        + sse(env("ADDED", obj("a", "3"), "3"), "3")
        + sse(env("BOOKMARK", end_bookmark("5"), "5"), "5")
    )
    assert c.rv == "5"
    assert [e.type for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1].initial_events_end
    (bookmark,) = c.feed(sse(None, "9"))  # an id-only block: a bookmark, never a data event
    assert bookmark == WatchEvent(type=EventType.BOOKMARK, resource_version="9")
    c.feed(sse(env("MODIFIED", obj("a", "7"), "7"), "7"))  # repeated by a server: yielded,
    assert c.rv == "9"  # but the resume point never moves back
    clock.now = 10
    assert c.ended() == 0.0  # a clean end after a healthy stream: resume at once
    assert c.request().headers["Last-Event-ID"] == "9"

    lines, _ = core("jsonlines", resource_version="4")
    params = dict(lines.request().params)
    assert params == {"watch": "true", "resourceVersion": "4", "allowWatchBookmarks": "true"}
    poll, _ = core("longpoll", poll_timeout=5, limit=10)
    params = dict(poll.request().params)
    assert params == {"watch": "true", "feed": "longpoll", "timeoutSeconds": "5", "limit": "10"}
    with pytest.raises(ValueError, match="read_timeout"):
        core(heartbeat=10, read_timeout=20)
    with pytest.raises(ValueError, match="resourceVersion"):
        core(params={"resourceVersion": "1"})


def test_a_drop_in_the_initial_events_starts_them_over_with_a_reset() -> None:
    c, clock = core("jsonlines")
    c.request()
    c.opened("application/json")
    c.feed(env("ADDED", obj("a", "3"), "3") + b"\n")
    assert c.rv is None  # no resume point inside the initial events
    clock.now = 5
    delay = c.failed(ConnectionResetError())
    assert delay == 0.4
    assert [e.type for e in c.take_pending()] == ["RESET"]
    assert "resourceVersion" not in dict(c.request().params)
    assert c.statistics().relists == 1


def test_expired_resets_and_relists_at_once() -> None:
    c, _ = core("jsonlines", resource_version="4")
    c.request()
    c.opened("application/json")
    assert c.feed(env("ERROR", status(410, "Expired")) + b"\n") == []
    assert c.finished
    assert c.ended() == 0.0
    assert [e.type for e in c.take_pending()] == ["RESET"]
    assert "resourceVersion" not in dict(c.request().params)
    # The same as an HTTP status (long poll, SSE without a state source).
    p, _ = core("longpoll", resource_version="4")
    p.request()
    assert p.refused(410, None, json.dumps(status(410, "Expired")).encode()) == 0.0
    assert [e.type for e in p.take_pending()] == ["RESET"]


def test_sse_reset_is_yielded_and_the_state_after_it_is_initial() -> None:
    c, _ = core(resource_version="4")
    c.request()
    c.opened("text/event-stream")
    events = c.feed(
        sse(env("RESET"))
        + sse(env("ADDED", obj("a", "30"), "30"), "30")
        + sse(env("BOOKMARK", end_bookmark("31"), "31"), "31")
    )
    assert [e.type for e in events] == ["RESET", "ADDED", "BOOKMARK"]
    assert c.rv == "31"
    assert c.statistics().relists == 1


def test_retryable_errors_wait_at_least_retry_after() -> None:
    c, _ = core()
    c.request()
    # 200 + retry: + ERROR (protocol.md §3.3): the Status's retryAfterSeconds wins.
    c.opened("text/event-stream")
    c.feed(
        b"retry: 7000\n\n"
        + sse(env("ERROR", status(503, "ServiceUnavailable", retryAfterSeconds=7)))
    )
    assert c.ended() == 7.0
    c.request()
    assert c.refused(429, "3", b"{}") == 3.0  # Retry-After header
    c.request()
    assert c.refused(502, None, b"<html>bad gateway</html>") == 1.6  # backoff
    assert c.statistics().last_error == "502 Unknown: <html>bad gateway</html>"


def test_terminal_statuses_raise() -> None:
    for code, reason in [(400, "BadRequest"), (403, "Forbidden"), (404, "NotFound")]:
        c, _ = core()
        c.request()
        with pytest.raises(StatusError) as info:
            c.refused(code, None, json.dumps(status(code, reason)).encode())
        assert (info.value.code, info.value.reason) == (code, reason)
    c, _ = core()
    c.request()
    with pytest.raises(ProtocolError, match="not a watch route"):
        c.opened("application/json")


def test_401_refreshes_once_then_raises() -> None:
    c, _ = core(can_refresh=True)
    body = json.dumps(status(401, "Unauthorized")).encode()
    c.request()
    assert c.refused(401, None, body) is REFRESH
    c.refreshed("new")
    assert c.request().headers["Authorization"] == "Bearer new"
    with pytest.raises(UnauthorizedError):
        c.refused(401, None, body)  # the refreshed token did not help
    # After events flow again, an expiry mid-stream may refresh again.
    c, _ = core(can_refresh=True, resource_version="1")
    c.request()
    assert c.refused(401, None, body) is REFRESH
    c.refreshed("t2")
    c.request()
    c.opened("text/event-stream")
    c.feed(sse(None, "2") + sse(env("ERROR", status(401, "Unauthorized"))))
    assert c.ended() is REFRESH
    with pytest.raises(UnauthorizedError):
        c.refreshed(None)
    plain, _ = core()
    plain.request()
    with pytest.raises(UnauthorizedError):
        plain.refused(401, None, body)


def test_a_stream_that_ends_at_once_backs_off() -> None:
    c, clock = core(resource_version="1")
    for expected in (0.4, 0.8, 1.6):
        c.request()
        c.opened("text/event-stream")
        c.feed(b"retry: 2000\n\n")
        clock.now += 0.1
        assert c.ended() == expected


def test_long_poll_answers_end_the_initial_state_and_advance_the_rv() -> None:
    c, _ = core("longpoll")
    c.request()
    c.opened("application/json")
    first = {"events": [json.loads(env("ADDED", obj("a", "3"), "3"))], "resourceVersion": "9"}
    events = c.answer(json.dumps(first).encode())
    assert [(e.type, e.resource_version) for e in events] == [("ADDED", "3"), ("BOOKMARK", "9")]
    assert events[-1].initial_events_end
    assert dict(c.request().params)["resourceVersion"] == "9"
    events = c.answer(b'{"events":[],"resourceVersion":"12"}')
    assert [(e.type, e.resource_version, e.object) for e in events] == [("BOOKMARK", "12", None)]
    assert c.statistics().resource_version == "12"


# -- the store -----------------------------------------------------------------------------


def ev(type_: str, o: dict[str, Any] | None = None, rv: str | None = None) -> WatchEvent:
    return WatchEvent(type=EventType(type_), object=o, resource_version=rv)


def test_store_applies_the_initial_state_at_once_then_live_events() -> None:
    store = InformerStore()
    assert store.apply(ev("ADDED", obj("a", "1"), "1")) == []
    assert store.apply(ev("ADDED", obj("b", "2"), "2")) == []
    changes = store.apply(ev("BOOKMARK", end_bookmark("5"), "5"))
    assert [(c.type, c.key) for c in changes] == [("ADDED", "a"), ("ADDED", "b")]
    assert store.synced
    assert store.resource_version == "5"
    (change,) = store.apply(ev("MODIFIED", obj("a", "6"), "6"))
    assert (change.type, change.old) == (ChangeType.MODIFIED, obj("a", "1"))
    assert store.apply(ev("MODIFIED", obj("a", "6"), "6")) == []  # the same rv twice
    assert store.apply(ev("MODIFIED", obj("b", "4"), "4")) == []  # older than applied
    assert store.stale == 2
    (change,) = store.apply(ev("MODIFIED", obj("c", "7"), "7"))  # unknown key: an upsert
    assert change.type is ChangeType.ADDED
    assert store.apply(ev("DELETED", obj("z", "8"), "8")) == []  # unknown key: nothing
    (change,) = store.apply(ev("DELETED", obj("b", "9"), "9"))
    assert (change.type, change.tombstone, change.resource_version) == ("DELETED", False, "9")
    assert store.apply(ev("BOOKMARK", {"metadata": {"resourceVersion": "12"}}, "12")) == []
    assert store.resource_version == "12"
    assert sorted(store.objects) == ["a", "c"]


def test_store_relist_emits_tombstones_and_nothing_for_unchanged_versions() -> None:
    store = InformerStore()
    for name, rv in [("a", "1"), ("b", "2"), ("c", "3")]:
        store.apply(ev("ADDED", obj(name, rv), rv))
    store.apply(ev("BOOKMARK", end_bookmark("3"), "3"))
    assert store.apply(ev("RESET")) == []
    store.apply(ev("ADDED", obj("a", "1"), "1"))  # unchanged
    store.apply(ev("ADDED", obj("c", "40"), "40"))  # changed while away
    store.apply(ev("ADDED", obj("d", "41"), "41"))  # new
    assert sorted(store.objects) == ["a", "b", "c"]  # untouched until the state is complete
    changes = store.apply(ev("BOOKMARK", end_bookmark("50"), "50"))
    assert [(c.type, c.key, c.tombstone) for c in changes] == [
        ("DELETED", "b", True),
        ("MODIFIED", "c", False),
        ("ADDED", "d", False),
    ]
    assert changes[0].object == obj("b", "2")
    assert (store.relists, store.tombstones) == (1, 1)
    assert store.resource_version == "50"


def test_default_key_and_the_browser_module() -> None:
    assert default_key({"metadata": {"name": "a"}}) == "a"
    assert default_key({"metadata": {"name": "a", "namespace": "ns"}}) == "ns/a"
    with pytest.raises(ValueError, match="metadata.name"):
        default_key({"spec": {}})
    source = browser_module()
    assert source.startswith(b"// watchroutes.js")
    assert b"export class Informer" in source
    assert b"import " not in source.split(b"export class")[0]  # no dependencies


def test_websocket_requests_and_close_codes() -> None:
    c, clock = core("websocket", token="t", params={"labelSelector": "a=b"})
    spec = c.request()
    assert spec.url == "ws://h/orders?labelSelector=a%3Db&allowWatchBookmarks=true"
    assert spec.params == ()
    assert spec.headers == {"Authorization": "Bearer t"}
    with pytest.raises(ProtocolError, match="subprotocol"):
        c.opened_websocket(None)
    c.opened_websocket("watchroutes.v1")
    bookmark = {"id": "", "type": "BOOKMARK", "object": end_bookmark("5"), "resourceVersion": "5"}
    (event,) = c.message(json.dumps(bookmark))
    assert event.initial_events_end
    clock.now = 10
    assert c.closed(1012, "shutting down") == 0.0  # resume elsewhere, at once
    spec = c.request()
    assert "resourceVersion=5" in spec.url
    c.opened_websocket("watchroutes.v1")
    assert c.closed(4429, "rate") == 0.4  # back off
    assert c.closed(None, "") == 0.8  # no close frame: a network failure
    with pytest.raises(UnauthorizedError):
        c.closed(4401, "credentials expired")
    with pytest.raises(StatusError) as info:
        c.closed(4403, "access revoked")
    assert (info.value.code, info.value.message) == (403, "access revoked")
    secure, _ = core("websocket")
    secure.url = "https://h/orders?x=1"
    assert secure.request().url == "wss://h/orders?x=1&allowWatchBookmarks=true"
