"""The SSE encoder against the WHATWG parsing rules (HTML, section 9.2.6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchroutes._core.errors import Expired
from watchroutes._core.events import Entry, EventType, Frame
from watchroutes._core.wire.sse import HEARTBEAT, SseWire, encode_event, id_block, retry_block
from watchroutes.testing import SSEMessage, SSEParser


def parse(data: bytes) -> list[SSEMessage]:
    return SSEParser().feed(data)


@pytest.mark.parametrize(
    ("kwargs", "wire"),
    [
        ({"data": "x"}, b"data: x\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\rb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\n"}, b"data: a\ndata: \n\n"),
        ({"data": "\n\n"}, b"data: \ndata: \ndata: \n\n"),
        ({"data": "a\r\n\rb"}, b"data: a\ndata: \ndata: b\n\n"),
        ({"data": ": not a comment"}, b"data: : not a comment\n\n"),
        ({"data": "x", "id": "0"}, b"id: 0\ndata: x\n\n"),
        ({"id": "42"}, b"id: 42\n\n"),
        ({"id": ""}, b"id: \n\n"),
        ({"data": "x", "event": "tick"}, b"event: tick\ndata: x\n\n"),
        ({"retry": 2000}, b"retry: 2000\n\n"),
        ({"comment": "hb"}, b": hb\n\n"),
        ({"comment": "a\nb"}, b": a\n: b\n\n"),
        ({"data": "é✓"}, "data: é✓\n\n".encode()),
    ],
)
def test_encode_event_table(kwargs: dict[str, object], wire: bytes) -> None:
    assert encode_event(**kwargs) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "x", "id": "a\x00b"},
        {"data": "x", "id": "a\nb"},
        {"data": "x", "id": "a\rb"},
        {"data": "x", "event": "a\nb"},
        {"data": "x", "event": "a\rb"},
        {"retry": -1},
        {},
    ],
)
def test_encode_event_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encode_event(**kwargs)  # type: ignore[arg-type]


@given(st.text())
def test_data_round_trips_through_the_whatwg_parser(text: str) -> None:
    (message,) = parse(encode_event(data=text))
    assert message.data == text.replace("\r\n", "\n").replace("\r", "\n")


@given(st.text(), st.text().filter(lambda s: not any(c in s for c in "\r\n\x00")))
def test_id_round_trips(text: str, ident: str) -> None:
    (message,) = parse(encode_event(data=text, id=ident))
    assert message.id == ident


@given(st.binary(max_size=50), st.integers(min_value=1, max_value=7))
def test_parser_accepts_any_chunking(tail: bytes, cut: int) -> None:
    stream = encode_event(data="a\r\nb", id="7") + encode_event(comment="hb") + b"data: z\r\n\r\n"
    parser = SSEParser()
    messages: list[SSEMessage] = []
    for i in range(0, len(stream), cut):
        messages += parser.feed(stream[i : i + cut])
    assert [m.data for m in messages] == ["a\nb", None, "z"]
    assert messages[0].id == "7"
    assert messages[1].comments == ("hb",)


def entry(rv: int = 7, etype: EventType = EventType.MODIFIED) -> Entry:
    obj = {"metadata": {"name": "o-1", "labels": {"r": "eu"}, "resourceVersion": str(rv)}}
    prev = {"metadata": {"name": "o-1", "labels": {"r": "us"}, "resourceVersion": "3"}}
    return Entry(rv=rv, resource="orders", key="o-1", type=etype, object=obj, prev=prev, time=0.0)


def test_frame_sse_is_id_and_one_data_line() -> None:
    frame = entry().frame()
    assert frame.sse() == (
        b'id: 7\ndata: {"type":"MODIFIED","object":{"metadata":{"name":"o-1",'
        b'"labels":{"r":"eu"},"resourceVersion":"7"}},"resourceVersion":"7"}\n\n'
    )
    (message,) = parse(frame.sse())
    assert message.id == "7"
    assert message.event is None


def test_frames_are_encoded_once_and_shared() -> None:
    e = entry()
    assert e.frame() is e.frame(EventType.MODIFIED)
    assert e.frame().sse() is e.frame().sse()
    assert e.frame().json() is e.frame().json()
    assert e.frame().line() is e.frame().line()


def test_leave_transition_carries_previous_object_stamped_with_the_event_rv() -> None:
    frame = entry(rv=9).frame(EventType.DELETED)
    assert frame.type is EventType.DELETED
    assert frame.object["metadata"] == {
        "name": "o-1",
        "labels": {"r": "us"},
        "resourceVersion": "9",
    }


def test_control_blocks() -> None:
    wire = SseWire("Order", "v1", retry_ms=1500)
    assert wire.preamble() == b"retry: 1500\n\n" == retry_block(1500)
    assert wire.bookmark(12) == b"id: 12\n\n" == id_block(12) == wire.start(12)
    assert wire.heartbeat(12) == HEARTBEAT == b": hb\n\n"
    assert wire.reset() == b'data: {"type":"RESET"}\n\n'
    (end,) = parse(wire.initial_end(12))
    assert end.id == "12"
    assert end.data == (
        '{"type":"BOOKMARK","object":{"kind":"Order","apiVersion":"v1","metadata":'
        '{"resourceVersion":"12","annotations":{"k8s.io/initial-events-end":"true"}}},'
        '"resourceVersion":"12"}'
    )
    error = wire.error(Expired("too old resource version: 1 (2)").status())
    assert error.startswith(b'data: {"type":"ERROR","object":{"kind":"Status"')
    assert b"id:" not in error
    assert b'"resourceVersion"' not in error


def test_snapshot_frames_have_no_id() -> None:
    frame = Frame(EventType.ADDED, {"a": 1}, None)
    assert frame.sse() == b'data: {"type":"ADDED","object":{"a":1}}\n\n'
