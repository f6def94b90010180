"""The ``coalesce`` slow-consumer policy (protocol.md §5.3): the queue keeps the newest event of
each key, in ascending rv order, and a client's state ends up exact."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes._core.registry import CloseReason, SlowConsumerPolicy

from .harness import Core, order

COALESCE = SlowConsumerPolicy.COALESCE
KEYS = ["a", "b", "c", "d", "e"]

change = st.tuples(st.sampled_from(KEYS), st.sampled_from(["eu", "us", None]))
ops = st.lists(
    st.one_of(change, change, change, st.just("read"), st.just("reconnect")), max_size=80
)


@settings(max_examples=400, deadline=None)
@given(ops=ops, buffer=st.integers(1, 6), selector=st.sampled_from([None, "region=eu"]))
def test_a_coalescing_client_ends_with_the_exact_state(
    ops: list[Any], buffer: int, selector: str | None
) -> None:
    core = Core(buffer=buffer)
    truth: dict[str, Any] = {}
    state: dict[str, Any] = {}
    query = {"allowWatchBookmarks": "true"} | ({"labelSelector": selector} if selector else {})
    resume: str | None = None

    def connect() -> Any:
        params = dict(query)
        if resume is not None:
            params["resourceVersion"] = resume
        else:
            state.clear()
        return core.open(params, sse=False, policy=COALESCE)

    def read(watcher: Any) -> None:
        nonlocal resume
        last = 0
        for item in watcher.pump():
            rv = int(item["resourceVersion"])
            assert rv >= last, "rvs went backwards"
            last = rv
            resume = item["resourceVersion"]
            if item["type"] == "BOOKMARK":
                continue
            name = item["object"]["metadata"]["name"]
            if item["type"] == "DELETED":
                state.pop(name, None)
            else:
                state[name] = item["object"]

    watcher = connect()
    for op in ops:
        if op == "read":
            read(watcher)
            if watcher.session.closed:  # SLOW: past `buffer` distinct keys
                assert watcher.opening.subscription.closed is CloseReason.SLOW
                watcher = connect()
        elif op == "reconnect":
            core.state.close_watch(watcher.opening.subscription, CloseReason.CLIENT)
            watcher = connect()
        else:
            key, region = op
            if region is None:
                if key in truth:
                    core.publish("DELETED", truth.pop(key))
                continue
            body = order(key, region=region)
            rv = core.publish("MODIFIED" if key in truth else "ADDED", body)
            truth[key] = {**body, "metadata": {**body["metadata"], "resourceVersion": str(rv)}}
    read(watcher)
    if watcher.session.closed:
        watcher = connect()
        read(watcher)
    expected = {
        k: v
        for k, v in truth.items()
        if selector is None or v["metadata"]["labels"]["region"] == "eu"
    }
    assert state == expected


def test_a_newer_event_replaces_the_queued_one_and_moves_to_the_tail() -> None:
    core = Core(buffer=3)
    watcher = core.open({"sendInitialEvents": "false"}, sse=False, policy=COALESCE)
    watcher.pump()
    core.publish("ADDED", order("a"))
    core.publish("ADDED", order("b"))
    core.publish("MODIFIED", order("a", phase="paid"))
    sub = watcher.opening.subscription
    assert len(sub) == 2
    got = watcher.pump()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
    ]
    assert sub.statistics().coalesced == 1
    for name in "cdef":
        core.publish("ADDED", order(name))
    assert sub.closed is CloseReason.SLOW  # a fourth distinct key does not fit
