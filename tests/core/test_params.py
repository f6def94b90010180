from __future__ import annotations

import pytest

from watchroutes._core.errors import InvalidParameter
from watchroutes._core.params import Mode, parse_bool, parse_request, wants_event_stream


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
        ("False", False),
    ],
)
def test_kubernetes_booleans(value: str, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/event-stream", True),
        ("text/html, text/event-stream;q=0.5", True),
        ("Text/Event-Stream", True),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=x", True),
        ("*/*", False),
        ("application/json", False),
        (None, False),
        ("", False),
    ],
)
def test_event_stream_negotiation(accept: str | None, expected: bool) -> None:
    assert wants_event_stream(accept) is expected


@pytest.mark.parametrize(
    ("query", "accept", "mode"),
    [
        ([], None, Mode.LIST),
        ([("watch", "false")], None, Mode.LIST),
        ([("watch", "0")], None, Mode.LIST),
        ([("watch", "true")], None, Mode.JSONLINES),
        ([("watch", "True")], None, Mode.JSONLINES),
        ([("watch", "")], None, Mode.JSONLINES),
        ([], "text/event-stream", Mode.SSE),
        ([("watch", "true")], "text/event-stream", Mode.SSE),
        ([("watch", "1"), ("feed", "longpoll")], None, Mode.LONGPOLL),
        ([("watch", "1"), ("feed", "longpoll")], "text/event-stream", Mode.LONGPOLL),
    ],
)
def test_mode(query: list[tuple[str, str]], accept: str | None, mode: Mode) -> None:
    assert parse_request(query, accept=accept).mode is mode


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ([("resourceVersion", "abc")], "resourceVersion"),
        ([("resourceVersion", "-1")], "resourceVersion"),
        ([("resourceVersion", "9223372036854775808")], "resourceVersion"),
        ([("lastEventId", "1.5")], "lastEventId"),
        ([("resourceVersionMatch", "Exact")], "resourceVersionMatch"),
        ([("timeoutSeconds", "x")], "timeoutSeconds"),
        ([("timeoutSeconds", "-5")], "timeoutSeconds"),
        ([("timeoutSeconds", "99999999999999999999999")], "timeoutSeconds"),
        ([("watch", "1"), ("feed", "longpoll"), ("limit", "0")], "limit"),
        ([("watch", "1"), ("feed", "longpoll"), ("limit", "10001")], "limit"),
        ([("watch", "1"), ("feed", "websocket")], "feed"),
        ([("labelSelector", "a in (b")], "labelSelector"),
        ([("fieldSelector", "a")], "fieldSelector"),
        ([("labelSelector", "a" * 5000 + "=b")], "labelSelector"),
    ],
)
def test_every_bad_value_is_a_400_naming_its_parameter(
    query: list[tuple[str, str]], parameter: str
) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_request([("watch", "1"), *query])
    assert info.value.parameter == parameter
    assert info.value.code == 400
    assert info.value.message.startswith(parameter + ": ")


def test_longpoll_needs_watch() -> None:
    with pytest.raises(InvalidParameter, match="^feed: "):
        parse_request([("feed", "longpoll")])


def test_bad_last_event_id_header_is_named() -> None:
    with pytest.raises(InvalidParameter, match="^Last-Event-ID: "):
        parse_request([], accept="text/event-stream", last_event_id="x")


def test_resume_point_precedence() -> None:
    both = [("lastEventId", "2"), ("resourceVersion", "3")]
    sse = "text/event-stream"
    assert parse_request(both, accept=sse, last_event_id="1").resource_version == 1
    assert parse_request(both, accept=sse).resource_version == 2
    assert parse_request([("resourceVersion", "3")]).resource_version == 3
    request = parse_request([("resourceVersion", "")], accept=sse, last_event_id="")
    assert request.resource_version is None
    # The header is an SSE thing: a JSON-lines watch ignores it.
    assert parse_request([("watch", "1")], last_event_id="9").resource_version is None


def test_first_value_of_a_repeated_parameter_wins() -> None:
    assert parse_request([("resourceVersion", "5"), ("resourceVersion", "x")]).resource_version == 5


def test_initial_events_rules() -> None:
    assert parse_request([]).initial_events
    assert parse_request([("resourceVersion", "0")]).initial_events
    assert not parse_request([("resourceVersion", "7")]).initial_events
    assert parse_request([("resourceVersion", "7"), ("sendInitialEvents", "1")]).initial_events
    assert not parse_request([("sendInitialEvents", "false")]).initial_events


def test_values_are_parsed() -> None:
    request = parse_request(
        [
            ("watch", "1"),
            ("feed", "longpoll"),
            ("limit", "20"),
            ("timeoutSeconds", "30"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
        ]
    )
    assert (request.limit, request.timeout_seconds, request.allow_watch_bookmarks) == (20, 30, True)


def test_key_conflicting_with_field_selector() -> None:
    with pytest.raises(InvalidParameter, match="fieldSelector"):
        parse_request([("fieldSelector", "metadata.name=b")], key="a")
    assert parse_request([("fieldSelector", "metadata.name=a")], key="a").filter.name == "a"
