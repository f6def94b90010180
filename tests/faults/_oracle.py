"""The oracle: what the acknowledged writes imply, and the checks of every watcher and list.

The history holds every write the servers acknowledged (its rv and the stored object; a
DELETE's answer is the deleted object stamped with the deletion's rv). A write whose outcome is
unknown (a connection error, a 5xx, a 200 DELETE with a ``null`` body) is a *maybe*: its key
is never written again, and the maybe is *confirmed* when a watcher without a selector or a list
shows its object at some rv. Until then either outcome is accepted.

Each watcher's records are replayed through a :class:`ChainCheck`:

* a fresh start (no rv) or a RESET/410 starts a new chain with an empty state: the initial
  ``ADDED`` events must ascend, each equal to the stored version of its object, and at the
  end-of-initial-events bookmark ``R`` the state must equal the history's state at ``R``;
* after that (or after a resume from the last rv seen), each change event ``e`` must follow the
  cursor (else *duplicated* when this chain had it, *reordered* otherwise), every expected event
  between the cursor and ``e`` that is missing is *lost*, and ``e`` itself must be the history's
  event at ``e`` as the watcher's selector sees it (selector transitions included); a bookmark
  at ``b`` claims everything through ``b``;
* a 410 (or SSE RESET) must be legal: more than ``retention`` writes were sent after the rv
  before the answer, or the log's epoch changed since (Redis restarted empty);
* at the end of a schedule the watcher's state must equal the history's state at its cursor.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Obj = dict[str, Any]

#: The selectors watchers use (the label grammar is tested elsewhere; here only transitions).
SELECTORS: dict[str | None, Callable[[Obj], bool]] = {
    None: lambda obj: True,
    "region=eu": lambda obj: obj.get("metadata", {}).get("labels", {}).get("region") == "eu",
}


def token_of(obj: Obj | None) -> str | None:
    if obj is None:
        return None
    spec = obj.get("spec")
    return spec.get("w") if isinstance(spec, dict) else None


def rv_of(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def stamped(obj: Obj, rv: int) -> Obj:
    out = copy.deepcopy(obj)
    out["metadata"]["resourceVersion"] = str(rv)
    return out


@dataclass(slots=True)
class Write:
    """One write request as the writer issued it, and what became of it."""

    op: str  # create, put, patch, delete
    key: str
    token: str | None
    prev: Obj | None  # the object before it (the writer owns the key)
    sent: float
    node: str
    status: str = "pending"  # acked, maybe, failed
    rv: int | None = None
    obj: Obj | None = None  # the stored object; a DELETE's answer
    answer: str = ""


@dataclass(slots=True)
class Change:
    """One event of the log: the object after (``None``: deleted) and before."""

    rv: int
    key: str
    kind: str  # ADDED, MODIFIED, DELETED (as written, before any selector)
    obj: Obj | None
    prev: Obj | None
    deleted: Obj | None  # a DELETED event's object
    seen: dict[str | None, tuple[str, Obj] | None] = field(default_factory=dict)

    def expected(self, selector: str | None) -> tuple[str, Obj] | None:
        """The event a watcher with ``selector`` gets for this change, if any."""
        if selector in self.seen:
            return self.seen[selector]
        match = SELECTORS[selector]
        before = self.prev is not None and match(self.prev)
        after = self.obj is not None and match(self.obj)
        out: tuple[str, Obj] | None = None
        if after:
            out = ("MODIFIED" if before else "ADDED", self.obj or {})
        elif before:
            assert self.prev is not None
            gone = self.deleted if self.deleted is not None else stamped(self.prev, self.rv)
            out = ("DELETED", gone)
        self.seen[selector] = out
        return out


class Tally:
    """The figures of a run, and the first details of each kind of failure."""

    COUNTERS = (
        "schedules",
        "acknowledged",
        "maybe",
        "refused",
        "events",
        "lists",
        "expired",
        "lost",
        "duplicated",
        "reordered",
        "wrong_events",
        "wrong_lists",
        "wrong_states",
        "bad_expired",
        "null_deletes",
        "wrong_answers",
        "stuck",
        "other",
    )
    FAILURES = (
        "lost",
        "duplicated",
        "reordered",
        "wrong_events",
        "wrong_lists",
        "wrong_states",
        "bad_expired",
        "null_deletes",
        "wrong_answers",
        "stuck",
        "other",
    )

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.details: list[str] = []
        self.failed_schedules: list[int] = []
        self.schedule = -1
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1, detail: str | None = None) -> None:
        with self._lock:
            self.counts[name] += n
            if detail is not None and name in self.FAILURES:
                if not self.failed_schedules or self.failed_schedules[-1] != self.schedule:
                    self.failed_schedules.append(self.schedule)
                if len(self.details) < 40:
                    self.details.append(f"schedule {self.schedule}: {name}: {detail}")

    def failures(self) -> int:
        return sum(self.counts[name] for name in self.FAILURES)


class History:
    """Every acknowledged (and confirmed) change, by rv and by key."""

    def __init__(self, retention: int, tally: Tally) -> None:
        self.retention = retention
        self.tally = tally
        self.lock = threading.Lock()
        self.rvs: list[int] = []
        self.changes: dict[int, Change] = {}
        self.versions: dict[str, tuple[list[int], list[Obj | None]]] = {}
        self.maybes: dict[str, Write] = {}  # unresolved, by key (the key is never written again)
        self.confirmed: dict[str, int] = {}
        self.writes: list[Write] = []
        self.refusals: list[str] = []  # definite 4xx answers, for --verbose
        self.not_found: list[Write] = []  # 404 answers to writes of an acknowledged object
        self.epochs: list[int] = [0]  # the first rv of each epoch of the log
        self.max_acked = 0
        self.floor = 0  # no check asks about a state older than this any more

    # -- writes ------------------------------------------------------------------------------

    def begin(self, write: Write) -> None:
        with self.lock:
            self.writes.append(write)

    def ack(self, write: Write, body: Obj) -> None:
        rv = rv_of(body)
        with self.lock:
            write.status, write.rv, write.obj = "acked", rv, body
            self.max_acked = max(self.max_acked, rv)
            if write.op == "delete":
                self._add(Change(rv, write.key, "DELETED", None, write.prev, body))
            else:
                kind = "ADDED" if write.op == "create" else "MODIFIED"
                self._add(Change(rv, write.key, kind, body, write.prev, None))
        self.tally.add("acknowledged")

    def maybe(self, write: Write, answer: str) -> None:
        with self.lock:
            write.status, write.answer = "maybe", answer
            self.maybes[write.key] = write
        self.tally.add("maybe")

    def refuse(self, write: Write, answer: str) -> None:
        with self.lock:
            write.status, write.answer = "failed", answer
            self.refusals.append(f"{write.op} {write.key} on {write.node}: {answer}")
            if answer.startswith("404 ") and write.prev is not None:
                self.not_found.append(write)
        self.tally.add("refused")

    def new_epoch(self, start: int) -> None:
        with self.lock:
            self.epochs.append(start)

    def _add(self, change: Change) -> None:
        if change.rv in self.changes:
            other = self.changes[change.rv]
            self.tally.add(
                "other", detail=f"two writes answered rv {change.rv}: {other.key}, {change.key}"
            )
            return
        bisect.insort(self.rvs, change.rv)
        self.changes[change.rv] = change
        rvs, objs = self.versions.setdefault(change.key, ([], []))
        i = bisect.bisect(rvs, change.rv)
        rvs.insert(i, change.rv)
        objs.insert(i, change.obj)

    def confirm(self, key: str, rv: int, etype: str, obj: Obj) -> None:
        """A watcher without a selector (or a list) showed ``obj`` at ``rv``: if that is the
        outcome of the key's maybe write, the write happened there."""
        with self.lock:
            write = self.maybes.get(key)
            if write is None or rv in self.changes:
                return
            if write.op == "delete":
                if etype != "DELETED":
                    return
                change = Change(rv, key, "DELETED", None, write.prev, obj)
            else:
                if etype == "DELETED" or token_of(obj) != write.token:
                    return
                kind = "ADDED" if write.op == "create" else "MODIFIED"
                change = Change(rv, key, kind, obj, write.prev, None)
            del self.maybes[key]
            self.confirmed[key] = rv
            write.rv = rv
            self._add(change)

    # -- queries -----------------------------------------------------------------------------

    def epoch_of(self, rv: int) -> int:
        return self.epochs[bisect.bisect(self.epochs, rv) - 1]

    def between(self, low: int, high: int, *, inclusive: bool) -> list[Change]:
        """The changes with ``low < rv < high`` (``<= high`` when ``inclusive``)."""
        i = bisect.bisect_right(self.rvs, low)
        j = bisect.bisect_right(self.rvs, high) if inclusive else bisect.bisect_left(self.rvs, high)
        return [self.changes[rv] for rv in self.rvs[i:j]]

    def state_at(self, rv: int) -> dict[str, Obj]:
        """The objects at ``rv`` by the acknowledged and confirmed writes (this epoch only)."""
        start = self.epoch_of(rv)
        out: dict[str, Obj] = {}
        for key, (rvs, objs) in self.versions.items():
            i = bisect.bisect_right(rvs, rv) - 1
            if i >= 0 and rvs[i] >= start:
                obj = objs[i]
                if obj is not None:
                    out[key] = obj
        return out

    def compare(self, actual: dict[str, Obj], rv: int, selector: str | None) -> list[str]:
        """How ``actual`` (objects by key) differs from the state at ``rv`` under
        ``selector``; keys of unresolved maybe writes may show either outcome."""
        match = SELECTORS[selector]
        expected = {k: o for k, o in self.state_at(rv).items() if match(o)}
        problems: list[str] = []
        for key in sorted(set(actual) | set(expected)):
            got, want = actual.get(key), expected.get(key)
            if got == want:
                continue
            write = self.maybes.get(key)
            if write is not None:
                if write.op == "delete" and got is None:
                    continue
                if got is not None and token_of(got) == write.token and rv_of(got) <= rv:
                    continue
            if got is None:
                problems.append(f"{key} missing (rv {want and rv_of(want)})")
            elif want is None:
                problems.append(f"{key} should not be there (rv {rv_of(got)})")
            else:
                problems.append(f"{key} at rv {rv_of(got)} instead of {rv_of(want)}")
        return problems

    def legal_expiry(self, cursor: int, at: float, since: float) -> bool:
        """A 410/RESET for a resume from ``cursor`` (seen at ``since``) answered at ``at`` is
        legal when more than ``retention`` writes may have been appended after ``cursor``, or
        the log's epoch changed since."""
        if any(start > cursor for start in self.epochs):
            return True
        count = 0
        with self.lock:
            for write in reversed(self.writes):
                if write.sent < since - 15.0:
                    break
                if write.sent >= at or write.status == "failed":
                    continue
                if write.rv is None or write.rv > cursor:
                    count += 1
                    if count > self.retention:
                        return True
        return False

    def check_refusals(self) -> None:
        """A write of an object that exists (acknowledged, not deleted, in this epoch) must not
        be answered 404."""
        for write in self.not_found:
            assert write.prev is not None
            if not any(start > rv_of(write.prev) for start in self.epochs):
                self.tally.add(
                    "wrong_answers",
                    detail=f"{write.op} {write.key} (at {rv_of(write.prev)}) on {write.node}: "
                    f"{write.answer[:120]}",
                )
        self.not_found.clear()

    def prune(self, floor: int) -> None:
        """Forget keys deleted before ``floor``: no later check asks about them."""
        self.floor = max(self.floor, floor)
        start = self.epoch_of(self.floor)
        with self.lock:
            gone = [
                key
                for key, (rvs, objs) in self.versions.items()
                if (objs[-1] is None and rvs[-1] < self.floor) or rvs[-1] < start
            ]
            for key in gone:
                if key not in self.maybes:
                    del self.versions[key]
            keep = bisect.bisect_left(self.rvs, self.floor)
            for rv in self.rvs[: max(0, keep - 4 * self.retention)]:
                del self.changes[rv]
            self.rvs = self.rvs[max(0, keep - 4 * self.retention) :]
            cut = 0
            while cut < len(self.writes) - 4096 and self.writes[cut].status != "pending":
                cut += 1
            del self.writes[:cut]


class Rec(NamedTuple):
    """One thing a watcher saw or did, in order."""

    kind: str  # open, event, bookmark, expired, error, cut, crash
    t: float
    rv: int | None = None
    etype: str = ""
    key: str = ""
    obj: Obj | None = None
    note: str = ""
    since: float = 0.0  # expired: when the watcher saw ``rv``


class ChainCheck:
    """One watcher's records replayed against the history (rules in the module docstring)."""

    def __init__(self, name: str, selector: str | None, history: History, tally: Tally) -> None:
        self.name = name
        self.selector = selector
        self.history = history
        self.tally = tally
        self.live = False
        self.state: dict[str, Obj] = {}
        self.cursor: int | None = None
        self.last_initial = 0
        self.received: set[int] = set()

    def _fail(self, kind: str, detail: str) -> None:
        self.tally.add(kind, detail=f"{self.name}: {detail}")

    def _fresh(self) -> None:
        self.live = False
        self.state = {}
        self.cursor = None
        self.last_initial = 0
        self.received = set()

    def feed(self, records: Iterable[Rec]) -> None:
        for rec in records:
            getattr(self, "_" + rec.kind)(rec)

    def _open(self, rec: Rec) -> None:
        if rec.rv is None:
            self._fresh()
        else:
            if rec.rv != self.cursor:
                self._fail("other", f"resumed from {rec.rv}, not from its cursor {self.cursor}")
            self.cursor = rec.rv
            self.live = True

    def _error(self, rec: Rec) -> None:
        pass

    def _cut(self, rec: Rec) -> None:
        pass

    def _crash(self, rec: Rec) -> None:
        self._fail("other", f"the watcher failed: {rec.note}")

    def _expired(self, rec: Rec) -> None:
        self.tally.add("expired")
        assert rec.rv is not None
        if not self.history.legal_expiry(rec.rv, rec.t, rec.since):
            self._fail(
                "bad_expired",
                f"{rec.note} for rv {rec.rv}, which the log must still hold "
                f"(at most {self.history.retention} writes were sent after it)",
            )
        self._fresh()

    def _bookmark(self, rec: Rec) -> None:
        assert rec.rv is not None
        if not self.live:
            if rec.note != "initial-end":
                self._fail("other", f"a bookmark at {rec.rv} inside the initial events")
                return
            if rec.rv < self.last_initial:
                self._fail("reordered", f"initial events up to {self.last_initial} end at {rec.rv}")
            problems = self.history.compare(self.state, rec.rv, self.selector)
            if problems:
                self._fail("wrong_states", f"initial state at {rec.rv}: {'; '.join(problems[:4])}")
            self.live = True
            self.cursor = rec.rv
            return
        assert self.cursor is not None
        if rec.rv < self.cursor:
            self._fail("reordered", f"a bookmark at {rec.rv} after {self.cursor}")
            return
        self._gap(self.cursor, rec.rv, inclusive=True, what=f"bookmark at {rec.rv}")
        self.cursor = rec.rv

    def _gap(self, low: int, high: int, *, inclusive: bool, what: str) -> None:
        for change in self.history.between(low, high, inclusive=inclusive):
            if change.expected(self.selector) is not None:
                self._fail("lost", f"{change.kind} {change.key} at {change.rv} before {what}")

    def _event(self, rec: Rec) -> None:
        assert rec.rv is not None
        assert rec.obj is not None
        self.tally.add("events")
        if not self.live:
            if rec.etype != "ADDED":
                self._fail("other", f"{rec.etype} {rec.key} at {rec.rv} inside initial events")
                return
            if rec.rv <= self.last_initial:
                self._fail("reordered", f"initial ADDED at {rec.rv} after {self.last_initial}")
            else:
                self._check_version(rec)
            self.state[rec.key] = rec.obj
            self.cursor = self.last_initial = max(self.last_initial, rec.rv)
            return
        assert self.cursor is not None
        if rec.rv <= self.cursor:
            kind = "duplicated" if rec.rv in self.received else "reordered"
            self._fail(kind, f"{rec.etype} {rec.key} at {rec.rv} after {self.cursor}")
            return
        self._gap(self.cursor, rec.rv, inclusive=False, what=f"{rec.etype} at {rec.rv}")
        self._check_event(rec)
        if rec.etype == "DELETED":
            self.state.pop(rec.key, None)
        else:
            self.state[rec.key] = rec.obj
        self.cursor = rec.rv
        self.received.add(rec.rv)

    def _check_version(self, rec: Rec) -> None:
        """An initial ``ADDED``: the stored version of its object at its rv."""
        assert rec.rv is not None
        rvs, objs = self.history.versions.get(rec.key, ([], []))
        i = bisect.bisect_left(rvs, rec.rv)
        if i == len(rvs) or rvs[i] != rec.rv:
            if rec.key in self.history.maybes:
                return
            self._fail("wrong_events", f"initial {rec.key} at {rec.rv}: no such version (deleted?)")
        elif objs[i] != rec.obj:
            self._fail("wrong_events", f"initial {rec.key} at {rec.rv} is not the stored version")

    def _check_event(self, rec: Rec) -> None:
        assert rec.rv is not None
        change = self.history.changes.get(rec.rv)
        if change is None:
            if rec.key in self.history.maybes:
                return  # a maybe write; a watcher with a selector cannot confirm it
            self._fail("wrong_events", f"{rec.etype} {rec.key} at {rec.rv}: no such write")
            return
        expected = change.expected(self.selector)
        if expected is None:
            self._fail("wrong_events", f"{rec.etype} {rec.key} at {rec.rv} does not match")
        elif (expected[0], change.key, expected[1]) != (rec.etype, rec.key, rec.obj):
            self._fail(
                "wrong_events",
                f"{rec.etype} {rec.key} at {rec.rv}; expected {expected[0]} {change.key}",
            )

    def settle(self) -> None:
        """End of a schedule: the watcher's state is the state at its cursor."""
        if not self.live or self.cursor is None:
            return
        problems = self.history.compare(self.state, self.cursor, self.selector)
        if problems:
            self._fail("wrong_states", f"state at {self.cursor}: {'; '.join(problems[:4])}")


@dataclass(slots=True)
class ListCheck:
    """One ``GET /orders`` answer: when it was asked, where, and what it said."""

    node: str
    sent: float
    acked_before: int  # the newest rv acknowledged before the request was sent
    rv: int
    items: list[Obj]


def check_list(entry: ListCheck, history: History, tally: Tally) -> None:
    tally.add("lists")
    if entry.rv < entry.acked_before:
        tally.add(
            "wrong_lists",
            detail=f"{entry.node} listed at {entry.rv}, older than the acknowledged "
            f"{entry.acked_before}",
        )
        return
    actual = {item["metadata"]["name"]: item for item in entry.items}
    problems = history.compare(actual, entry.rv, None)
    if problems:
        tally.add(
            "wrong_lists",
            detail=f"{entry.node} at {entry.rv}: {len(problems)} wrong: {'; '.join(problems[:4])}",
        )
