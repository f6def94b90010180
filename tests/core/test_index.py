"""The registry's index: a publish visits only candidate subscriptions, and never changes what
any subscription receives compared with scanning every one of them."""

from __future__ import annotations

import enum
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes._core.events import Entry, EventType, Frame
from watchroutes._core.registry import Registry, Subscription, transition
from watchroutes._core.selectors import compile_filter, object_index_terms

NAMES = ["a", "b", "c"]
REGIONS = ["eu", "us", "ap"]
TIERS = ["gold", "free"]

#: Selectors of every kind: indexable by name or by label, and scan-only.
SELECTORS: list[tuple[str | None, str | None, str | None]] = [
    (None, None, None),
    ("region=eu", None, None),
    ("region==us", None, None),
    ("region in (ap)", None, None),
    ("region in (eu,us)", None, None),
    ("region!=eu", None, None),
    ("region notin (eu,ap)", None, None),
    ("tier", None, None),
    ("!tier", None, None),
    ("region=eu,tier=gold", None, None),
    ("tier=gold,region!=us", None, None),
    (None, "status.phase=paid", None),
    (None, "metadata.name=a", None),
    (None, "metadata.name!=a", None),
    ("region=eu", "metadata.name=b", None),
    (None, None, "a"),
    ("tier=free", None, "c"),
]


def make(name: str, region: str | None, tier: str | None, phase: str) -> dict[str, Any]:
    labels = {k: v for k, v in (("region", region), ("tier", tier)) if v is not None}
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


class Model:
    """The registry under test beside a brute-force scan of every live subscription."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.live: list[Subscription] = []
        self.expected: dict[int, list[Frame]] = {}
        self.current: dict[tuple[str, str], Any] = {}
        self.rv = 0

    def subscribe(self, resource: str, choice: int) -> None:
        labels, fields, name = SELECTORS[choice]
        flt = compile_filter(labels, fields, name=name)
        sub = self.registry.subscribe(resource, flt, max_buffer=10_000)
        self.live.append(sub)
        self.expected[sub.id] = []

    def unsubscribe(self, index: int) -> None:
        if self.live:
            self.registry.unsubscribe(self.live.pop(index % len(self.live)))

    def publish(self, resource: str, etype: EventType, obj: Any) -> None:
        self.rv += 1
        key = obj["metadata"]["name"]
        entry = Entry(
            rv=self.rv,
            resource=resource,
            key=key,
            type=etype,
            object=obj,
            prev=self.current.get((resource, key)),
            time=0.0,
        )
        if etype is EventType.DELETED:
            self.current.pop((resource, key), None)
        else:
            self.current[resource, key] = obj
        sent = self.registry.publish(entry)
        scanned = 0
        for sub in self.live:  # the brute force: every live subscription of the resource
            if sub.resource != resource:
                continue
            as_type = transition(sub.filter, entry)
            if as_type is not None:
                self.expected[sub.id].append(entry.frame(as_type))
                scanned += 1
        assert sent == scanned


resources = st.sampled_from(["orders", "orders", "orders", "users"])
subscribe = st.tuples(st.just("subscribe"), resources, st.integers(0, len(SELECTORS) - 1))
unsubscribe = st.tuples(st.just("unsubscribe"), st.integers(0, 50))
publish = st.tuples(
    st.just("publish"),
    resources,
    st.sampled_from(NAMES),
    st.sampled_from([*REGIONS, None]),
    st.sampled_from([*TIERS, None]),
    st.sampled_from(["new", "paid"]),
)
delete = st.tuples(st.just("delete"), resources, st.sampled_from(NAMES))
operation = st.one_of(subscribe, subscribe, publish, publish, publish, delete, unsubscribe)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, min_size=20, max_size=80))
def test_the_index_never_changes_what_anyone_receives(ops: list[tuple[Any, ...]]) -> None:
    model = Model()
    for op in ops:
        if op[0] == "subscribe":
            model.subscribe(op[1], op[2])
        elif op[0] == "unsubscribe":
            model.unsubscribe(op[1])
        elif op[0] == "publish":
            _, resource, name, region, tier, phase = op
            etype = EventType.MODIFIED if (resource, name) in model.current else EventType.ADDED
            model.publish(resource, etype, make(name, region, tier, phase))
        else:
            _, resource, name = op
            if (resource, name) in model.current:
                model.publish(resource, EventType.DELETED, model.current[resource, name])
    assert len(model.registry) == len(model.live)
    assert {s.id for s in model.registry.all()} == {s.id for s in model.live}
    for sub in model.live:
        got = sub.drain()
        expected = model.expected[sub.id]
        assert len(got) == len(expected), sub
        assert all(f is e for f, e in zip(got, expected, strict=True)), sub


def entry(rv: int, etype: EventType, obj: Any, prev: Any = None) -> Entry:
    key = obj["metadata"]["name"]
    return Entry(rv=rv, resource="orders", key=key, type=etype, object=obj, prev=prev, time=0)


def test_a_publish_visits_only_candidates() -> None:
    registry = Registry()
    for i in range(10_000):
        registry.subscribe("orders", compile_filter(name=f"o-{i}"), 10)
        registry.subscribe("orders", compile_filter(f"shard=s-{i}"), 10)
    registry.subscribe("orders", compile_filter("region!=eu"), 10)  # scanned
    registry.subscribe("users", compile_filter(), 10)  # another resource
    obj = {"metadata": {"name": "o-7", "labels": {"shard": "s-9", "region": "eu"}}}
    candidates = registry.candidates(entry(1, EventType.ADDED, obj))
    assert {s.index_term for s in candidates} == {(None, "o-7"), ("shard", "s-9"), None}
    assert len(candidates) == 3
    assert registry.publish(entry(1, EventType.ADDED, obj)) == 2  # region!=eu does not match


def test_an_object_leaving_a_label_index_still_reaches_its_watcher() -> None:
    registry = Registry()
    sub = registry.subscribe("orders", compile_filter("region=eu"), 10)
    eu = {"metadata": {"name": "a", "labels": {"region": "eu"}}}
    us = {"metadata": {"name": "a", "labels": {"region": "us"}}}
    registry.publish(entry(1, EventType.ADDED, eu))
    registry.publish(entry(2, EventType.MODIFIED, us, prev=eu))
    registry.publish(entry(3, EventType.MODIFIED, us, prev=us))
    assert [f.type for f in sub.drain()] == [EventType.ADDED, EventType.DELETED]


def test_a_renamed_object_reaches_watchers_of_both_names() -> None:
    registry = Registry()
    old = registry.subscribe("orders", compile_filter(name="old"), 10)
    new = registry.subscribe("orders", compile_filter(name="new"), 10)
    before = {"metadata": {"name": "old"}}
    after = {"metadata": {"name": "new"}}
    # published under one key whose object changes its name (key= is the app's choice)
    registry.publish(Entry(rv=1, resource="orders", key="k", type=EventType.ADDED,
                           object=before, prev=None, time=0))  # fmt: skip
    registry.publish(Entry(rv=2, resource="orders", key="k", type=EventType.MODIFIED,
                           object=after, prev=before, time=0))  # fmt: skip
    assert [f.type for f in old.drain()] == [EventType.ADDED, EventType.DELETED]
    assert [f.type for f in new.drain()] == [EventType.ADDED]


def test_subscriptions_are_filed_under_their_least_crowded_term() -> None:
    registry = Registry()
    for _ in range(3):
        registry.subscribe("orders", compile_filter("region=eu"), 10)
    both = registry.subscribe("orders", compile_filter("region=eu,tier=gold"), 10)
    assert both.index_term == ("tier", "gold")
    named = registry.subscribe("orders", compile_filter("tier=gold", name="x"), 10)
    assert named.index_term == (None, "x")
    scanned = registry.subscribe("orders", compile_filter("tier!=gold"), 10)
    assert scanned.index_term is None
    for sub in registry.all():
        registry.unsubscribe(sub)
    assert len(registry) == 0
    assert registry.candidates(entry(1, EventType.ADDED, {"metadata": {"name": "x"}})) == []


class Region(enum.StrEnum):
    EU = "eu"


def test_string_enum_labels_match_and_index_by_value() -> None:
    obj = {"metadata": {"name": "a", "labels": {"region": Region.EU, "n": 1}}}
    assert object_index_terms(obj) == {("region", "eu"), (None, "a")}
    for selector in ("region=eu", "region in (eu,us)", "region notin (us)"):
        assert compile_filter(selector).matches(obj), selector
    assert not compile_filter("region notin (eu)").matches(obj)
    registry = Registry()
    sub = registry.subscribe("orders", compile_filter("region in (eu)"), 10)
    assert registry.publish(entry(1, EventType.ADDED, obj)) == 1
    assert len(sub) == 1


def test_objects_without_metadata_have_no_terms() -> None:
    assert object_index_terms("text") == set()
    assert object_index_terms({"metadata": {"name": 5, "labels": ["x"]}}) == {(None, "5")}
