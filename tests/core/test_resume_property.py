"""Resume is exact (protocol.md §5.1), over random interleavings of publishes, disconnects
(including in the middle of the initial events), resumes by ``Last-Event-ID`` and by
``resourceVersion``, and log expiry: every client gets every event after its resume point
exactly once and in order, or a RESET (SSE) / 410 (JSON lines), never a gap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes._core.errors import Expired
from watchroutes._core.registry import CloseReason

from .harness import Core, Watcher, order

KEYS = ["a", "b", "c", "d"]
REGIONS = ["eu", "us"]


@dataclass
class Client:
    """A client that keeps a local cache built only from its own events."""

    sse: bool
    selector: str | None
    state: dict[str, Any] = field(default_factory=dict)
    resume: str | None = None  # the rv it resumes from (SSE: last id; JSON lines: last rv)
    watcher: Watcher | None = None
    seen: list[int] = field(default_factory=list)  # rvs of changes, in arrival order
    synced: bool = False  # it has a complete state (initial events ended, or it resumed)
    #: Its cache was complete at its resume point (it saw the end of a full initial state and
    #: has not relisted since), so every change must agree with it. After a drop in the middle
    #: of the initial events a resume is exact too, but may bring MODIFIED/DELETED for keys
    #: the client never saw (protocol.md §3.2).
    strict: bool = False
    fresh: bool = False  # this connection (or its RESET) started from an empty state
    resets: int = 0
    expired: int = 0
    #: Every rv the hub assigned, shared by all clients: an unfiltered, synced client must
    #: see each one after its resume point, with nothing skipped.
    log: list[int] = field(default_factory=list)

    def assert_no_gap(self, upto: int) -> None:
        """Nothing between the client's last point and ``upto`` was missed."""
        if self.selector is not None or not self.synced or self.resume is None:
            return
        point = int(self.resume)
        missed = [rv for rv in self.log if point < rv < upto]
        assert not missed, f"gap: {missed} between {point} and {upto}"

    def query(self) -> dict[str, str]:
        q: dict[str, str] = {}
        if self.selector:
            q["labelSelector"] = self.selector
        if not self.sse:
            q["allowWatchBookmarks"] = "true"
            if self.resume is not None:
                q["resourceVersion"] = self.resume
        return q

    def connect(self, core: Core) -> None:
        try:
            self.watcher = core.open(
                self.query(), sse=self.sse, last_event_id=self.resume if self.sse else None
            )
        except Expired:
            assert not self.sse  # SSE with a watch cache answers RESET instead
            self.expired += 1
            self.resume = None  # relist, as a Kubernetes reflector does
            self.state.clear()
            self.synced = False
            self.watcher = core.open(self.query(), sse=self.sse)
        self.fresh = self.resume is None
        if self.resume is None:
            self.state.clear()
            self.synced = False
            self.strict = False

    def read(self, limit: int | None) -> None:
        assert self.watcher is not None
        items = self.watcher.pump()
        for item in items if limit is None else items[:limit]:
            self.apply(item)

    def apply(self, item: Any) -> None:
        if isinstance(item, tuple):
            kind, value = item
            if kind == "id":
                if self.fresh and not self.synced:  # the end of a full initial state
                    self.strict = True
                self.assert_no_gap(int(value) + 1)
                self.resume = value
                self.synced = True
            return
        etype = item["type"]
        rv = item.get("resourceVersion")
        if etype == "RESET":
            self.resets += 1
            self.state.clear()
            self.synced = False
            self.strict = False
            self.fresh = True
            return
        if etype == "BOOKMARK":
            assert rv is not None
            self.assert_no_gap(int(rv) + 1)
            self.resume = rv
            if item["object"]["metadata"].get("annotations"):
                self.synced = True
                self.strict = True
            return
        name = item["object"]["metadata"]["name"]
        if self.synced:  # a change after a complete state: strictly after the last one
            assert rv is not None
            if self.seen:
                assert int(rv) > self.seen[-1], "events out of order or repeated"
            self.assert_no_gap(int(rv))
            self.seen.append(int(rv))
        if self.strict:  # consistent with the cache: ADDED is new to it, the rest are not
            assert (name in self.state) == (etype != "ADDED"), (etype, name, self.selector)
        if etype == "DELETED":
            self.state.pop(name, None)
        else:
            self.state[name] = item["object"]
        self.resume = rv

    def disconnect(self) -> None:
        assert self.watcher is not None
        self.watcher.core.state.close_watch(self.watcher.opening.subscription, CloseReason.CLIENT)
        self.watcher = None


def matches(obj: dict[str, Any], selector: str | None) -> bool:
    return selector is None or obj["metadata"]["labels"]["region"] == selector.split("=")[1]


publish = st.tuples(st.just("publish"), st.sampled_from(KEYS), st.sampled_from(REGIONS))
delete = st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(0))
read = st.tuples(st.just("read"), st.integers(0, 2), st.integers(0, 6) | st.none())
drop = st.tuples(st.just("drop"), st.integers(0, 2), st.just(0))
connect = st.tuples(st.just("connect"), st.integers(0, 2), st.just(0))
ops = st.lists(st.one_of(publish, publish, delete, read, read, drop, connect), max_size=60)


@settings(max_examples=400, deadline=None)
@given(ops=ops, retention=st.integers(2, 12))
def test_every_client_converges_without_gaps(
    ops: list[tuple[str, Any, Any]], retention: int
) -> None:
    core = Core(retention=retention)
    truth: dict[str, dict[str, Any]] = {}
    rvs: list[int] = []
    clients = [
        Client(sse=True, selector=None, log=rvs),
        Client(sse=False, selector=None, log=rvs),
        Client(sse=True, selector="region=eu", log=rvs),
    ]
    for client in clients:
        client.connect(core)
    for op, a, b in ops:
        if op == "publish":
            obj = order(a, region=b)
            rv = core.publish("MODIFIED" if a in truth else "ADDED", obj)
            rvs.append(rv)
            truth[a] = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}
        elif op == "delete" and a in truth:
            rvs.append(core.publish("DELETED", truth.pop(a)))
        elif op == "read" and clients[a].watcher is not None:
            clients[a].read(b)  # b=None: all that is waiting; else the first b, dropping the rest
            if b is not None:
                clients[a].disconnect()
        elif op == "drop" and clients[a].watcher is not None:
            clients[a].disconnect()
        elif op == "connect" and clients[a].watcher is None:
            clients[a].connect(core)
        core.now += 1
    for client in clients:
        if client.watcher is None:
            client.connect(core)
        client.read(None)
        expected = {k: v for k, v in truth.items() if matches(v, client.selector)}
        assert client.state == expected, (client.sse, client.selector)
        if client.selector is None:
            client.assert_no_gap(core.state.head + 1)
    assert sum(c.resets + c.expired for c in clients) >= 0
