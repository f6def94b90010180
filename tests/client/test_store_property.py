"""The informer's store against a model server, for random histories (hypothesis): whatever
the mix of writes, resumes that replay what was already applied, and relists after being
away, the store ends equal to the server's state and no (key, rv) is reported twice."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes.client import INITIAL_EVENTS_END, EventType, InformerStore, WatchEvent

KEYS = ["a", "b", "c", "d"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(KEYS)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS)),
        st.tuples(st.just("replay"), st.integers(1, 5)),  # a resume re-sends the last n
        st.tuples(st.just("relist"), st.booleans()),  # away; back through RESET + state
    ),
    max_size=40,
)


class Model:
    """A server: objects with rvs, and the history of events it sent."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, Any]] = {}
        self.sent: list[WatchEvent] = []

    def obj(self, key: str) -> dict[str, Any]:
        return {"metadata": {"name": key, "resourceVersion": str(self.rv)}}

    def event(self, kind: EventType, obj: dict[str, Any]) -> WatchEvent:
        return WatchEvent(
            type=kind, object=obj, resource_version=obj["metadata"]["resourceVersion"]
        )

    def write(self, key: str) -> WatchEvent:
        self.rv += 1
        kind = EventType.MODIFIED if key in self.objects else EventType.ADDED
        self.objects[key] = self.obj(key)
        return self.event(kind, self.objects[key])

    def delete(self, key: str) -> WatchEvent | None:
        if key not in self.objects:
            return None
        self.rv += 1
        del self.objects[key]
        return self.event(EventType.DELETED, self.obj(key))

    def state(self) -> list[WatchEvent]:
        def rv(obj: dict[str, Any]) -> int:
            return int(obj["metadata"]["resourceVersion"])

        events = [self.event(EventType.ADDED, o) for o in sorted(self.objects.values(), key=rv)]
        annotations = {INITIAL_EVENTS_END: "true"}
        end = {"metadata": {"resourceVersion": str(self.rv), "annotations": annotations}}
        return [*events, self.event(EventType.BOOKMARK, end)]


@settings(max_examples=200, deadline=None)
@given(ops)
def test_the_store_converges_and_reports_each_version_once(history: list[tuple[str, Any]]) -> None:
    server = Model()
    for key in KEYS[:2]:
        server.write(key)
    store = InformerStore()
    changes = []
    for initial in server.state():
        changes += store.apply(initial)
    live: list[WatchEvent] = []
    for op, arg in history:
        event: WatchEvent | None
        if op == "write":
            event = server.write(arg)
        elif op == "delete":
            event = server.delete(arg)
        elif op == "replay":
            for old in live[-arg:]:
                changes += store.apply(old)  # already applied: stale, ignored
            continue
        else:
            if arg:  # changes while away, never seen
                server.write("d")
                server.delete("a")
            for relisted in [WatchEvent(type=EventType.RESET), *server.state()]:
                changes += store.apply(relisted)
            continue
        if event is not None:
            live.append(event)
            changes += store.apply(event)
    assert store.objects == server.objects
    versions = [(c.key, c.resource_version) for c in changes if not c.tombstone]
    assert len(versions) == len(set(versions))
    for change in changes:
        if change.tombstone:
            assert change.type == "DELETED"
