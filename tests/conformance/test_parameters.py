"""protocol.md §3.2: query parameters shared by every transport."""

from __future__ import annotations

import time

import pytest

from ._support import (
    INITIAL_EVENTS_END,
    Launch,
    Server,
    assert_status,
    envelope,
    is_bookmark,
    is_initial_end,
    name_of,
    rv_of,
)

pytestmark = pytest.mark.network

SSE = {"accept": "text/event-stream"}

BAD_VALUES = [
    ("resourceVersion", "abc"),
    ("resourceVersion", "-1"),
    ("resourceVersion", str(2**63)),
    ("resourceVersion", "1.5"),
    ("resourceVersionMatch", "Exact"),
    ("timeoutSeconds", "x"),
    ("timeoutSeconds", "-1"),
    ("feed", "bogus"),
    ("labelSelector", "region in (eu"),
    ("labelSelector", "=eu"),
    ("labelSelector", "region=" + "x" * 64),
    ("fieldSelector", "status.phase"),
    ("lastEventId", "abc"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
@pytest.mark.parametrize("transport", ["jsonlines", "sse"])
def test_bad_parameter_is_400_naming_it(
    shared_server: Server, name: str, value: str, transport: str
) -> None:
    params = {name: value}
    headers: dict[str, str] = {}
    if transport == "jsonlines":
        params["watch"] = "true"
    else:
        headers = SSE
    response = shared_server.client.get("/orders", params=params, headers=headers)
    assert_status(response, 400, "BadRequest", name)
    assert response.headers["vary"] == "Accept"


def test_bad_last_event_id_header_is_400_naming_it(shared_server: Server) -> None:
    response = shared_server.client.get(
        "/orders", headers={**SSE, "last-event-id": "not-a-version"}
    )
    assert_status(response, 400, "BadRequest", "Last-Event-ID")


def _three(server: Server) -> list[int]:
    return [rv_of(server.create(name)) for name in ("a", "b", "c")]


def test_resume_by_resource_version_json_lines(server: Server) -> None:
    ra, rb, rc = _three(server)
    with server.lines(params={"resourceVersion": str(ra), "timeoutSeconds": "10"}) as stream:
        events = stream.take(2)
        assert [(e["type"], name_of(e), int(e["resourceVersion"])) for e in events] == [
            ("ADDED", "b", rb),
            ("ADDED", "c", rc),
        ]
        d = server.create("d")
        assert stream.next()["object"] == d


def test_resume_by_last_event_id_header(server: Server) -> None:
    ra, rb, rc = _three(server)
    with server.sse(params={"timeoutSeconds": "10"}, headers={"last-event-id": str(ra)}) as st:
        start = st.next()
        assert start is not None
        assert start.retry == 2000
        mark = st.next()
        assert mark is not None
        assert (mark.id, mark.data) == (str(ra), None)
        events = st.data_events(2)
        assert [(name_of(e), int(e["resourceVersion"])) for e in events] == [("b", rb), ("c", rc)]


@pytest.mark.parametrize("transport", ["jsonlines", "sse"])
def test_resume_by_last_event_id_query(server: Server, transport: str) -> None:
    _, rb, rc = _three(server)
    params = {"lastEventId": str(rb), "timeoutSeconds": "10"}
    if transport == "sse":
        with server.sse(params=params) as stream:
            (event,) = stream.data_events(1)
    else:
        with server.lines(params=params) as stream:
            event = stream.next()
    assert (name_of(event), int(event["resourceVersion"])) == ("c", rc)


def test_precedence_header_then_last_event_id_then_resource_version(server: Server) -> None:
    before = server.head()
    ra, rb, _ = _three(server)
    cases = [
        # (Last-Event-ID, lastEventId, resourceVersion) -> the start, the first name after it
        ((str(rb), str(ra), str(before)), rb, "c"),
        ((None, str(ra), str(before)), ra, "b"),
        ((None, None, str(before)), before, "a"),
        ((str(ra), str(rb), str(rb)), ra, "b"),
        (("", str(rb), str(before)), rb, "c"),  # an empty header is an unset one
    ]
    for (header, query_id, rv), start, first in cases:
        params = {"resourceVersion": rv, "timeoutSeconds": "10"}
        if query_id is not None:
            params["lastEventId"] = query_id
        headers = {} if header is None else {"last-event-id": header}
        with server.sse(params=params, headers=headers) as stream:
            blocks = stream.until(lambda b: b.data is not None)
        ids = [b.id for b in blocks if b.id is not None and b.data is None]
        assert ids == [str(start)], (header, query_id, rv, blocks)
        assert name_of(envelope(blocks[-1])) == first, (header, query_id, rv)


def test_send_initial_events_true_with_a_resource_version(server: Server) -> None:
    _, rb, rc = _three(server)
    params = {
        "resourceVersion": str(rb),
        "sendInitialEvents": "true",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "10",
    }
    with server.lines(params=params) as stream:
        events = stream.until(is_bookmark)
        assert [(e["type"], name_of(e)) for e in events[:-1]] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
            ("ADDED", "c"),
        ]
        end = events[-1]["object"]["metadata"]
        assert end["annotations"] == {INITIAL_EVENTS_END: "true"}
        assert int(end["resourceVersion"]) >= rc
        d = server.create("d")
        assert stream.next()["object"] == d


def test_send_initial_events_false_without_a_resource_version(server: Server) -> None:
    _three(server)
    params = {"sendInitialEvents": "false", "timeoutSeconds": "10"}
    with server.lines(params=params) as stream:
        d = server.create("d")
        assert stream.next() == {
            "type": "ADDED",
            "object": d,
            "resourceVersion": d["metadata"]["resourceVersion"],
        }
    with server.sse(params=params) as sse:
        expected = b"retry: 2000\n\nid: %d\n\n" % rv_of(d)  # the head, no initial events
        assert sse.read_raw(len(expected)) == expected
        e = server.create("e")
        assert sse.data_events(1) == [
            {"type": "ADDED", "object": e, "resourceVersion": e["metadata"]["resourceVersion"]}
        ]


@pytest.mark.parametrize("rv", [None, "0"])
def test_initial_events_ascend_by_rv_each_with_its_own(launch: Launch, rv: str | None) -> None:
    server = launch("--heartbeat", "30", "--seed", "5")
    modified = server.patch("o-2", {"spec": {"qty": 7}})  # o-2 is now the newest
    params = {"timeoutSeconds": "10"}
    if rv is not None:
        params["resourceVersion"] = rv
    with server.sse(params=params) as stream:
        blocks = [b for b in stream.until(is_initial_end) if b.data is not None]
    added, end = blocks[:-1], blocks[-1]
    envelopes = [envelope(b) for b in added]
    assert [name_of(e) for e in envelopes] == ["o-1", "o-3", "o-4", "o-5", "o-2"]
    rvs = []
    for block, env in zip(added, envelopes, strict=True):
        assert env["type"] == "ADDED"
        assert block.id == env["resourceVersion"] == env["object"]["metadata"]["resourceVersion"]
        rvs.append(int(env["resourceVersion"]))
    assert rvs == sorted(set(rvs))
    assert envelopes[-1]["object"] == modified
    end_env = envelope(end)
    assert end.id == end_env["resourceVersion"] == str(rv_of(modified))


def test_drop_mid_initial_events_then_resume_gets_exactly_the_rest(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--seed", "20")
    with server.sse(params={"timeoutSeconds": "10"}) as stream:
        seen = stream.data_events(7)
    assert [name_of(e) for e in seen] == [f"o-{i}" for i in range(1, 8)]
    last = seen[-1]["resourceVersion"]
    with server.sse(params={"timeoutSeconds": "10"}, headers={"last-event-id": last}) as stream:
        blocks = stream.until(lambda b: b.data is not None and name_of(envelope(b)) == "o-20")
    rest = [envelope(b) for b in blocks if b.data is not None]
    assert [(e["type"], name_of(e)) for e in rest] == [("ADDED", f"o-{i}") for i in range(8, 21)]
    assert all(int(e["resourceVersion"]) > int(last) for e in rest)


def test_drop_mid_initial_events_with_changes_meanwhile(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--seed", "12")
    with server.lines(params={"timeoutSeconds": "10"}) as stream:
        seen = stream.take(5)
    state = {name_of(e): e["object"] for e in seen}
    last = int(seen[-1]["resourceVersion"])
    server.patch("o-2", {"spec": {"qty": 42}})  # already seen
    server.patch("o-9", {"status": {"phase": "paid"}})  # not seen yet
    server.delete("o-11")  # never seen
    server.delete("o-3")  # seen
    final = server.create("o-13")
    params = {"resourceVersion": str(last), "timeoutSeconds": "10"}
    with server.lines(params=params) as stream:
        events = stream.until(
            lambda e: e["resourceVersion"] == final["metadata"]["resourceVersion"]
        )
    rvs = [int(e["resourceVersion"]) for e in events]
    assert rvs == sorted(set(rvs))
    assert rvs[0] > last
    for event in events:
        if event["type"] == "DELETED":
            state.pop(name_of(event), None)
        else:
            state[name_of(event)] = event["object"]
    current, _ = server.state()
    assert state == current
    assert "o-11" not in state
    assert state["o-2"]["spec"]["qty"] == 42


def _region_eu_changes(server: Server) -> list[tuple[str, str, int, str]]:
    """Moves ``x`` into and out of ``region=eu``; the expected (type, name, rv, region)."""
    server.create("x", "us")  # not sent
    into = server.relabel("x", "eu")
    inside = server.patch("x", {"spec": {"qty": 2}})
    out = server.relabel("x", "us")
    server.patch("x", {"spec": {"qty": 3}})  # outside: not sent
    server.create("y", "us")
    server.delete("y")  # never matched: not sent
    done = server.create("z", "eu")
    return [
        ("ADDED", "x", rv_of(into), "eu"),
        ("MODIFIED", "x", rv_of(inside), "eu"),
        ("DELETED", "x", rv_of(out), "eu"),  # the previous object, stamped with this rv
        ("ADDED", "z", rv_of(done), "eu"),
    ]


def _summary(event: object) -> tuple[str, str, int, str]:
    assert isinstance(event, dict)
    obj = event["object"]
    assert obj["metadata"]["resourceVersion"] == event["resourceVersion"]
    return (
        event["type"],
        name_of(event),
        int(event["resourceVersion"]),
        obj["metadata"]["labels"]["region"],
    )


def test_selector_transitions_live(server: Server) -> None:
    params = {"labelSelector": "region=eu", "timeoutSeconds": "10"}
    with server.lines(params=params) as stream:
        expected = _region_eu_changes(server)
        events = stream.take(4)
    assert [_summary(e) for e in events] == expected
    assert events[2]["object"]["spec"]["qty"] == 2  # the object as it was before leaving


@pytest.mark.parametrize("transport", ["jsonlines", "sse", "longpoll"])
def test_selector_transitions_in_a_replay(server: Server, transport: str) -> None:
    start = server.head()
    expected = _region_eu_changes(server)
    params = {"labelSelector": "region=eu", "resourceVersion": str(start), "timeoutSeconds": "10"}
    if transport == "longpoll":
        params.update(watch="true", feed="longpoll", timeoutSeconds="0")
        response = server.client.get("/orders", params=params)
        assert response.status_code == 200, response.text
        events = response.json()["events"]
    elif transport == "sse":
        with server.sse(params=params) as stream:
            events = stream.data_events(4)
    else:
        with server.lines(params=params) as lines:
            events = lines.take(4)
    assert [_summary(e) for e in events] == expected


@pytest.mark.parametrize("transport", ["jsonlines", "sse"])
def test_timeout_ends_with_a_bookmark_when_the_head_moved(server: Server, transport: str) -> None:
    server.create("eu-1", "eu")
    start = server.head()
    params = {
        "labelSelector": "region=eu",
        "resourceVersion": str(start),
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "1",
    }
    began = time.monotonic()
    if transport == "sse":
        with server.sse(params=params) as stream:
            moved = rv_of(server.create("us-1", "us"))  # filtered out, but moves the head
            blocks = stream.rest()
        elapsed = time.monotonic() - began
        assert [(b.id, b.data) for b in blocks if b.retry is None] == [
            (str(start), None),
            (str(moved), None),
        ]
    else:
        with server.lines(params=params) as lines:
            moved = rv_of(server.create("us-1", "us"))
            events = lines.rest()
        elapsed = time.monotonic() - began
        assert events == [
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": "Order",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(moved)},
                },
                "resourceVersion": str(moved),
            }
        ]
    assert 0.8 <= elapsed < 5


@pytest.mark.parametrize("transport", ["jsonlines", "sse"])
def test_timeout_without_progress_ends_without_a_bookmark(server: Server, transport: str) -> None:
    start = rv_of(server.create("eu-1", "eu"))
    params = {"resourceVersion": str(start), "allowWatchBookmarks": "true", "timeoutSeconds": "1"}
    if transport == "sse":
        with server.sse(params=params) as stream:
            blocks = stream.rest()
        assert [(b.id, b.data) for b in blocks if b.retry is None] == [(str(start), None)]
    else:
        with server.lines(params=params) as lines:
            assert lines.rest() == []
