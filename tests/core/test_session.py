"""Session rules of protocol.md §3.2-3.4 through the sans-IO harness (no sleeping, no sockets)."""

from __future__ import annotations

import pytest

from watchroutes._core.errors import Expired, ServiceUnavailable, UsageError
from watchroutes._core.registry import CloseReason
from watchroutes._core.session import PRELUDE_BATCH, Phase
from watchroutes._core.state import StateSource

from .harness import Core, order, types


def test_initial_events_ascending_then_end_bookmark_then_live() -> None:
    core = Core()
    rvs = [core.publish("ADDED", order(f"o-{i}")) for i in range(3)]
    core.publish("MODIFIED", order("o-0", phase="paid"))  # o-0 moves to the end
    w = core.open()
    items = w.pump()
    assert w.raw.startswith(b"retry: 2000\n\n")
    assert types(items) == ["ADDED", "ADDED", "ADDED", "BOOKMARK"]
    ids = [int(i["_id"]) for i in items]
    assert ids == sorted(ids)
    assert [i["object"]["metadata"]["name"] for i in items[:3]] == ["o-1", "o-2", "o-0"]
    assert [i["resourceVersion"] for i in items[:3]] == [i["_id"] for i in items[:3]]
    end = items[3]
    assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert end["_id"] == str(core.state.head)
    assert rvs[1] < rvs[2]
    rv = core.publish("MODIFIED", order("o-1", phase="paid"))
    (live,) = w.pump()
    assert live["type"] == "MODIFIED"
    assert live["_id"] == str(rv)


def test_resume_marks_start_and_replays_exactly_what_followed() -> None:
    core = Core()
    a = core.publish("ADDED", order("a"))
    b = core.publish("ADDED", order("b"))
    c = core.publish("MODIFIED", order("a", phase="paid"))
    w = core.open(last_event_id=str(a))
    items = w.pump()
    assert items[0] == ("id", str(a))
    assert [(i["type"], i["_id"]) for i in items[1:]] == [("ADDED", str(b)), ("MODIFIED", str(c))]


def test_resume_from_head_sends_only_the_start_mark() -> None:
    core = Core()
    core.publish("ADDED", order("a"))
    head = core.state.head
    w = core.open({"resourceVersion": str(head)})
    assert w.pump() == [("id", str(head))]


def test_send_initial_events_false_starts_at_head_without_state() -> None:
    core = Core()
    core.publish("ADDED", order("a"))
    w = core.open({"sendInitialEvents": "false"})
    assert w.pump() == [("id", str(core.state.head))]


def test_send_initial_events_true_with_rv_sends_state() -> None:
    core = Core()
    rv = core.publish("ADDED", order("a"))
    core.publish("ADDED", order("b"))
    w = core.open({"resourceVersion": str(rv), "sendInitialEvents": "true"})
    assert types(w.pump()) == ["ADDED", "ADDED", "BOOKMARK"]


def test_heartbeat_only_after_an_idle_interval() -> None:
    core = Core()
    w = core.open(heartbeat=10)
    w.pump()
    core.now = 9.9
    assert w.pump() == []
    assert w.session.deadline() == 10
    core.now = 10
    assert w.pump() == [("comment", "hb")]
    core.now = 15
    assert w.pump() == []


def test_filtered_changes_move_the_id_with_a_bookmark_at_most_every_interval() -> None:
    core = Core()
    w = core.open({"labelSelector": "region=eu"}, heartbeat=10)
    w.pump()
    core.publish("ADDED", order("us-1", region="us"))
    assert w.pump() == []  # not matching: nothing now
    core.now = 10
    assert w.pump() == [("id", str(core.state.head))]
    core.now = 20  # the head did not move: a heartbeat, no bookmark
    assert w.pump() == [("comment", "hb")]


def test_bookmark_queues_behind_buffered_events() -> None:
    core = Core()
    w = core.open({"labelSelector": "region=eu"}, heartbeat=10)
    w.pump()
    core.now = 10
    eu = core.publish("ADDED", order("eu-1"))
    core.publish("ADDED", order("us-1", region="us"))
    items = w.pump()
    assert types(items) == ["ADDED", "id"]
    assert items[0]["_id"] == str(eu)
    assert items[1] == ("id", str(core.state.head))


def test_no_bookmark_during_initial_events() -> None:
    core = Core()
    for i in range(PRELUDE_BATCH + 10):
        core.publish("ADDED", order(f"o-{i}"))
    w = core.open(heartbeat=1)
    core.now = 100
    first = w.session.step(core.now, core.state.head)
    assert w.session.phase is Phase.INITIAL
    assert w.session.ready
    assert first.count(b"\nid: ") + first.startswith(b"id: ") == PRELUDE_BATCH
    assert b"id: " + str(core.state.head).encode() + b"\n\n" not in first
    items = w.pump()
    assert types(items)[-1] == "BOOKMARK"


def test_timeout_sends_a_final_bookmark_when_the_head_moved() -> None:
    core = Core()
    w = core.open({"labelSelector": "region=eu"}, end_at=30)
    w.pump()
    core.publish("ADDED", order("us-1", region="us"))
    core.now = 30
    assert w.pump() == [("id", str(core.state.head))]
    assert w.session.closed
    assert w.session.close_reason is CloseReason.TIMEOUT
    assert w.session.deadline() is None


def test_timeout_without_progress_just_ends() -> None:
    core = Core()
    w = core.open(end_at=5)
    w.pump()
    core.now = 5
    assert w.pump() == []
    assert w.session.closed


def test_slow_consumer_is_disconnected_without_a_bookmark() -> None:
    core = Core(buffer=3)
    w = core.open()
    w.pump()
    for i in range(4):
        core.publish("ADDED", order(f"o-{i}"))
    assert w.opening.subscription.closed is CloseReason.SLOW
    assert w.pump() == []
    assert w.session.close_reason is CloseReason.SLOW


def test_shutdown_drains_then_bookmarks_then_ends() -> None:
    core = Core()
    w = core.open({"labelSelector": "region=eu"})
    w.pump()
    eu = core.publish("ADDED", order("eu-1"))
    core.publish("ADDED", order("us-1", region="us"))
    core.state.begin_shutdown()
    items = w.pump()
    assert [i["_id"] if isinstance(i, dict) else i for i in items] == [
        str(eu),
        ("id", str(core.state.head)),
    ]
    assert w.session.close_reason is CloseReason.SHUTDOWN
    with pytest.raises(ServiceUnavailable):
        core.open()


def test_expired_resume_is_a_reset_for_sse_with_state() -> None:
    core = Core(retention=2)
    old = core.publish("ADDED", order("a"))
    for i in range(3):
        core.publish("ADDED", order(f"b-{i}"))
    w = core.open(last_event_id=str(old))
    items = w.pump()
    assert items[0] == {"type": "RESET", "_id": None}
    assert types(items[1:]) == ["ADDED"] * 4 + ["BOOKMARK"]


def test_expired_resume_without_state_or_on_json_lines_is_expired() -> None:
    core = Core(retention=2)
    old = core.publish("ADDED", order("a"))
    for i in range(3):
        core.publish("ADDED", order(f"b-{i}"))
    watermark = core.state.log("orders").watermark
    with pytest.raises(Expired, match=rf"too old resource version: {old} \({watermark}\)"):
        core.open({"resourceVersion": str(old)}, sse=False)
    with pytest.raises(Expired):
        core.open(last_event_id=str(old), source=StateSource.NONE)


def test_rv_above_head_is_expired() -> None:
    core = Core()
    with pytest.raises(Expired, match="newer than"):
        core.open({"resourceVersion": str(core.state.head + 1)}, sse=False)


def test_rv_from_before_this_log_started_is_expired() -> None:
    core = Core()
    with pytest.raises(Expired):
        core.open({"resourceVersion": "5"}, sse=False)


def test_watermark_itself_is_a_valid_resume_point() -> None:
    core = Core()
    start = core.state.head
    rv = core.publish("ADDED", order("a"))
    w = core.open({"resourceVersion": str(start)}, sse=False)
    assert [i["resourceVersion"] for i in w.pump()] == [str(rv)]


def test_json_lines_bookmarks_only_when_asked() -> None:
    core = Core()
    core.publish("ADDED", order("a"))
    plain = core.open(sse=False, heartbeat=1)
    assert types(plain.pump()) == ["ADDED"]
    asked = core.open({"allowWatchBookmarks": "true"}, sse=False, heartbeat=1)
    assert types(asked.pump()) == ["ADDED", "BOOKMARK"]
    core.now = 1
    assert plain.pump() == []
    (beat,) = asked.pump()
    assert beat == {
        "type": "BOOKMARK",
        "object": {
            "kind": "Order",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(core.state.head)},
        },
        "resourceVersion": str(core.state.head),
    }
    assert all(line for line in asked.raw.split(b"\n")[:-1])
    assert asked.raw.endswith(b"\n")


def test_selector_transitions_live_and_in_replay() -> None:
    core = Core()
    start = core.state.head
    live = core.open({"labelSelector": "region=eu", "sendInitialEvents": "false"}, sse=False)
    live.pump()
    core.publish("ADDED", order("a", region="us"))
    enter = core.publish("MODIFIED", order("a", region="eu"))
    core.publish("MODIFIED", order("a", region="eu", phase="paid"))
    leave = core.publish("MODIFIED", order("a", region="us", phase="paid"))
    core.publish("MODIFIED", order("a", region="us", phase="shipped"))
    core.publish("DELETED", order("a", region="us", phase="shipped"))
    got = live.pump()
    replay = core.open(
        {"labelSelector": "region=eu", "resourceVersion": str(start)}, sse=False
    ).pump()
    assert got == replay
    assert types(got) == ["ADDED", "MODIFIED", "DELETED"]
    assert got[0]["resourceVersion"] == str(enter)
    deleted = got[2]["object"]
    assert deleted["metadata"]["labels"] == {"region": "eu"}  # the previous object ...
    assert deleted["metadata"]["resourceVersion"] == str(leave)  # ... at the event's rv


def test_object_route_watch_of_a_missing_object() -> None:
    core = Core()
    core.publish("ADDED", order("other"))
    w = core.open(sse=False, key="o-1", query={"allowWatchBookmarks": "1"})
    assert types(w.pump()) == ["BOOKMARK"]
    core.publish("ADDED", order("other-2"))
    core.publish("ADDED", order("o-1"))
    (added,) = w.pump()
    assert added["object"]["metadata"]["name"] == "o-1"


def test_closed_session_is_quiet_and_failed_session_raises() -> None:
    core = Core()
    w = core.open()
    w.pump()
    w.session.close(CloseReason.CLIENT)
    assert w.session.step(1, core.state.head) == b""
    assert not w.session.ready
    assert w.session.fail(Expired("x").status()) == b""
    broken = core.open()
    with pytest.raises(UsageError):
        broken.session._goto(Phase.INITIAL)
    with pytest.raises(UsageError):
        broken.session.step(0, 0)


def test_fail_writes_one_error_event_and_ends() -> None:
    core = Core()
    w = core.open()
    w.pump()
    data = w.session.fail(ServiceUnavailable("backend unavailable").status())
    (item,) = w.decode(data)
    assert item["type"] == "ERROR"
    assert item["object"]["code"] == 503
    assert w.session.closed


def test_every_subscriber_gets_the_same_bytes() -> None:
    core = Core()
    a = core.open(sse=False)
    b = core.open(sse=False)
    a.pump()
    b.pump()
    core.publish("ADDED", order("x"))
    da = a.session.step(0, core.state.head)
    db = b.session.step(0, core.state.head)
    assert da is db


@pytest.mark.parametrize("sse", [True, False])
def test_the_closing_bookmark_claims_only_what_the_watch_was_served(sse: bool) -> None:
    """A change applied between the shutdown (the subscription stops buffering) and the
    stream's final step was never offered to this watch: the final bookmark must not claim
    it, or the client would resume past an event it never received."""
    core = Core()
    a = core.publish("ADDED", order("a"))
    query = {"resourceVersion": str(a), "labelSelector": "region=eu", "allowWatchBookmarks": "1"}
    w = core.open(query, sse=sse)
    w.pump()
    filtered = core.publish("ADDED", order("us-1", region="us"))  # only moves the head
    core.state.begin_shutdown()  # stops buffering at `filtered`
    late = core.publish("ADDED", order("b"))  # a match the watch never saw
    items = w.pump()
    assert w.session.closed
    if sse:
        assert items == [("id", str(filtered))]
    else:
        assert [(i["type"], i["object"]["metadata"]["resourceVersion"]) for i in items] == [
            ("BOOKMARK", str(filtered))
        ]
    assert str(late) not in w.raw.decode()


def test_revocation_stops_the_initial_events_at_once() -> None:
    """A watch revoked in the middle of a large initial state sends none of the rest: the
    403 ERROR follows the batch already written."""
    core = Core()
    for i in range(PRELUDE_BATCH + 100):
        core.publish("ADDED", order(f"o-{i}"))
    w = core.open(sse=False)
    first = w.session.step(core.now, core.state.head)
    assert first.count(b"\n") == PRELUDE_BATCH  # one batch of ADDED lines
    core.state.registry.all()[0].close(CloseReason.REVOKED, core.state.head)
    items = w.pump()
    assert w.session.closed
    assert [i["type"] for i in items] == ["ERROR"]
    assert items[0]["object"]["message"] == "access revoked"
