"""Selector transitions (protocol.md §3.2) keep a filtered client's cache exact: for random label
changes, selectors, disconnects and resumes, a client that builds its local cache only from its
own events holds exactly the objects its selector matches, whenever it has read everything."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes._core.selectors import compile_filter

from .harness import Core
from .test_resume_property import Client

NAMES = ["a", "b", "c"]
SELECTORS = [
    "region=eu",
    "region!=eu",
    "region in (eu,us)",
    "region notin (us)",
    "tier",
    "!tier",
    "region=eu,tier=gold",
    "tier in (gold),region!=ap",
]

labels = st.fixed_dictionaries(
    {},
    optional={"region": st.sampled_from(["eu", "us", "ap"]), "tier": st.sampled_from(["gold"])},
)
publish = st.tuples(st.just("publish"), st.sampled_from(NAMES), labels)
delete = st.tuples(st.just("delete"), st.sampled_from(NAMES), st.none())
read = st.tuples(st.just("read"), st.integers(0, 3), st.none())
partial = st.tuples(st.just("partial"), st.integers(0, 3), st.integers(0, 3))
reconnect = st.tuples(st.just("reconnect"), st.integers(0, 3), st.none())
ops = st.lists(
    st.one_of(publish, publish, publish, delete, read, read, partial, reconnect),
    min_size=5,
    max_size=60,
)


def obj(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {}}


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    selectors=st.lists(st.sampled_from(SELECTORS), min_size=4, max_size=4),
    initial=st.lists(st.tuples(st.sampled_from(NAMES), labels), max_size=3),
    retention=st.sampled_from([4, 10_000]),
)
def test_a_filtered_cache_always_equals_the_filtered_truth(
    ops: list[tuple[str, Any, Any]],
    selectors: list[str],
    initial: list[tuple[str, dict[str, str]]],
    retention: int,
) -> None:
    core = Core(retention=retention)
    truth: dict[str, dict[str, Any]] = {}
    rvs: list[int] = []

    def change(name: str, labels: dict[str, str] | None) -> None:
        if labels is None:
            if name in truth:
                rvs.append(core.publish("DELETED", truth.pop(name)))
            return
        body = obj(name, labels)
        rv = core.publish("MODIFIED" if name in truth else "ADDED", body)
        rvs.append(rv)
        truth[name] = {**body, "metadata": {**body["metadata"], "resourceVersion": str(rv)}}

    for name, labels_ in initial:  # state that exists before anyone watches
        change(name, labels_)
    clients = [
        Client(sse=i % 2 == 0, selector=selector, log=rvs) for i, selector in enumerate(selectors)
    ]
    filters = [compile_filter(c.selector) for c in clients]

    def check(i: int, *, final: bool = False) -> None:
        client = clients[i]
        if client.synced or final:  # a resume after a drop mid-snapshot is exact but unmarked
            expected = {k: v for k, v in truth.items() if filters[i].matches(v)}
            assert client.state == expected, (client.sse, client.selector)

    for client in clients:
        client.connect(core)
    for op, a, b in ops:
        if op == "publish" or op == "delete":
            change(a, b)
        elif op == "read":
            if clients[a].watcher is None:
                clients[a].connect(core)
            clients[a].read(None)
            check(a)
        elif op == "partial" and clients[a].watcher is not None:
            clients[a].read(b)  # the first b items, then the connection drops
            clients[a].disconnect()
        elif op == "reconnect" and clients[a].watcher is not None:
            clients[a].disconnect()
            clients[a].connect(core)  # resumes from its last rv (or relists when expired)
        core.now += 1
    for i, client in enumerate(clients):
        if client.watcher is None:
            client.connect(core)
        client.read(None)
        check(i, final=True)
