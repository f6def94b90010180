"""Long poll as a mode of the session (protocol.md §3.6), on the sans-IO harness: a hand-driven
clock, no sleeping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from watchroutes._core.errors import Forbidden, UsageError
from watchroutes._core.params import parse_request
from watchroutes._core.registry import CloseReason
from watchroutes._core.session import DEFAULT_LONGPOLL_SECONDS, LongPollSession
from watchroutes._core.state import StateSource

from .harness import Core, order


def poll(
    core: Core,
    query: dict[str, str] | None = None,
    *,
    max_seconds: float | None = None,
    expires_at: float | None = None,
) -> LongPollSession:
    params = {"watch": "true", "feed": "longpoll", **(query or {})}
    request = parse_request(list(params.items()))
    opening = core.state.open_watch("orders", request, source=StateSource.CACHE, buffer=core.buffer)
    return LongPollSession(
        subscription=opening.subscription,
        head=opening.head,
        now=core.now,
        limit=request.limit,
        initial=opening.initial,
        replay=opening.replay,
        timeout_seconds=request.timeout_seconds,
        max_seconds=max_seconds,
        expires_at=expires_at,
    )


def body(session: LongPollSession, core: Core) -> dict[str, Any]:
    answer = session.step(core.now, core.state.head)
    assert answer is not None
    assert session.deadline() is None
    assert not session.ready
    decoded: dict[str, Any] = json.loads(answer.body())
    return decoded


def names(answer: dict[str, Any]) -> list[str]:
    return [e["object"]["metadata"]["name"] for e in answer["events"]]


def test_without_rv_the_whole_state_at_once_whatever_the_limit() -> None:
    core = Core()
    for i in range(3):
        core.publish("ADDED", order(f"o-{i}"))
    p = poll(core, {"limit": "1"})
    assert p.ready
    answer = body(p, core)
    assert names(answer) == ["o-0", "o-1", "o-2"]
    assert [e["type"] for e in answer["events"]] == ["ADDED"] * 3
    assert answer["resourceVersion"] == str(core.state.head)
    assert p.close_reason is CloseReason.CLIENT
    with pytest.raises(UsageError):
        p.step(core.now, core.state.head)


def test_replay_at_once_cut_by_the_limit_at_the_last_event_sent() -> None:
    core = Core()
    start = core.publish("ADDED", order("a"))
    b = core.publish("ADDED", order("b"))
    core.publish("ADDED", order("c"))
    answer = body(poll(core, {"resourceVersion": str(start), "limit": "1"}), core)
    assert names(answer) == ["b"]
    assert answer["resourceVersion"] == str(b)
    answer = body(poll(core, {"resourceVersion": str(start)}), core)
    assert names(answer) == ["b", "c"]
    assert answer["resourceVersion"] == str(core.state.head)


def test_waits_for_the_first_change_then_answers_what_arrived() -> None:
    core = Core()
    head = core.publish("ADDED", order("a"))
    p = poll(core, {"resourceVersion": str(head), "timeoutSeconds": "20"})
    assert not p.ready
    assert p.step(core.now, core.state.head) is None
    assert p.deadline() == 20.0
    core.now = 3.0
    core.publish("MODIFIED", order("a", phase="paid"))
    c = core.publish("ADDED", order("c"))
    assert p.ready
    answer = body(p, core)
    assert names(answer) == ["a", "c"]
    assert answer["resourceVersion"] == str(c)
    assert p.close_reason is CloseReason.CLIENT


def test_times_out_empty_but_advances_past_what_did_not_match() -> None:
    core = Core()
    head = core.publish("ADDED", order("a"))
    p = poll(core, {"resourceVersion": str(head), "labelSelector": "region=us"})
    assert p.deadline() == DEFAULT_LONGPOLL_SECONDS
    core.publish("ADDED", order("eu-only"))  # filtered out
    core.now = DEFAULT_LONGPOLL_SECONDS - 0.001
    assert p.step(core.now, core.state.head) is None
    core.now = DEFAULT_LONGPOLL_SECONDS
    answer = body(p, core)
    assert answer == {"events": [], "resourceVersion": str(core.state.head)}
    assert p.close_reason is CloseReason.TIMEOUT


def test_timeout_zero_answers_at_once() -> None:
    core = Core()
    head = core.publish("ADDED", order("a"))
    answer = body(poll(core, {"resourceVersion": str(head), "timeoutSeconds": "0"}), core)
    assert answer == {"events": [], "resourceVersion": str(head)}


def test_the_wait_is_capped_by_the_maximum_and_by_the_credentials() -> None:
    core = Core()
    head = str(core.publish("ADDED", order("a")))
    assert poll(core, {"resourceVersion": head}, max_seconds=5.0).deadline() == 5.0
    assert poll(core, {"resourceVersion": head}, expires_at=2.0).deadline() == 2.0
    assert poll(core, {"resourceVersion": head, "timeoutSeconds": "1"}).deadline() == 1.0


def test_answers_where_the_subscription_stopped_never_later() -> None:
    core = Core()
    head = core.publish("ADDED", order("a"))
    p = poll(core, {"resourceVersion": str(head)})
    at_close = core.publish("ADDED", order("b"))
    p.subscription.close(CloseReason.SHUTDOWN, core.state.head)
    core.publish("ADDED", order("c"))  # after the close: never offered to it
    answer = body(p, core)
    assert names(answer) == ["b"]
    assert answer["resourceVersion"] == str(at_close)


def test_a_slow_consumer_polls_again_from_where_it_started() -> None:
    core = Core(buffer=2)
    head = core.publish("ADDED", order("a"))
    p = poll(core, {"resourceVersion": str(head)})
    for i in range(3):
        core.publish("ADDED", order(f"o-{i}"))
    assert p.subscription.closed is CloseReason.SLOW
    assert body(p, core) == {"events": [], "resourceVersion": str(head)}
    assert p.close_reason is CloseReason.TIMEOUT


def test_revoked_while_waiting_is_forbidden() -> None:
    core = Core()
    head = core.publish("ADDED", order("a"))
    p = poll(core, {"resourceVersion": str(head)})
    p.subscription.close(CloseReason.REVOKED, core.state.head)
    assert p.ready
    with pytest.raises(Forbidden):
        p.step(core.now, core.state.head)
    assert p.close_reason is CloseReason.REVOKED
    assert p.deadline() is None
