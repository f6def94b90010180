"""The in-memory event log and the watch cache.

Per resource the log keeps the newest entries, bounded by count and by age, and remembers its
*compaction watermark* ``C``: the newest rv it no longer holds. Resuming from ``r`` is exact
iff ``C <= r <= head`` (``r == C`` is fine: nothing after it is missing); any other ``r`` is
:class:`~watchroutes._core.errors.Expired` and the message names ``C``, as kube-apiserver's
``too old resource version: 12 (480)``.

A fresh log's watermark is its start version (``now`` in microseconds, see ``versions``), so an
rv from an earlier incarnation of the log is Expired, never silently mis-resumed.

The watch cache is the latest entry per key. A dict keeps insertion order and an update
re-inserts its key, so iterating the cache yields objects in ascending rv order: initial events
come out in the order that makes a resume from any of them exact (protocol.md §3.2).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Final

from .errors import Expired
from .events import Entry, EventType

__all__ = [
    "DEFAULT_RETENTION_EVENTS",
    "DEFAULT_RETENTION_SECONDS",
    "ResourceLog",
]

#: Events kept per resource. The same order as kube-apiserver's watch cache (which sizes
#: itself between 100 and 100,000 events per resource) and CouchDB's default revs limit.
DEFAULT_RETENTION_EVENTS: Final = 10_000
#: Oldest event age kept, in seconds. kube-apiserver keeps ~75 s of history in its cache and
#: etcd's default compaction runs every 5 min; 10 min covers a laptop lid closed over lunch-break
#: reconnect storms without growing without bound.
DEFAULT_RETENTION_SECONDS: Final = 600.0

_COMPACT_SLACK: Final = 1024  # evicted slots tolerated before the list is shifted


def _rv(entry: Entry) -> int:
    return entry.rv


class ResourceLog:
    """The retained history and the current state of one resource."""

    __slots__ = (
        "_entries",
        "_start",
        "evicted",
        "evicted_young",
        "max_age",
        "max_events",
        "name",
        "state",
        "watermark",
        "young_window",
    )

    def __init__(
        self,
        name: str,
        *,
        start_rv: int,
        max_events: int = DEFAULT_RETENTION_EVENTS,
        max_age: float = DEFAULT_RETENTION_SECONDS,
        young_window: float = 30.0,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self.name = name
        self.max_events = max_events
        self.max_age = max_age
        #: Evictions of entries younger than this (two heartbeat intervals) are counted in
        #: ``evicted_young``: the sign that retention is too small for bookmarks to help.
        self.young_window = young_window
        self.watermark = start_rv
        self.evicted = 0
        self.evicted_young = 0
        # Entries in ascending rv; slots before _start are evicted, shifted out lazily.
        self._entries: list[Entry] = []
        self._start = 0
        #: The watch cache: latest live entry per key, in ascending rv order (see module doc).
        self.state: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries) - self._start

    def current(self, key: str) -> Entry | None:
        return self.state.get(key)

    def append(self, entry: Entry) -> None:
        """Record ``entry`` (its rv is above every rv already here) and apply it to the state."""
        self._entries.append(entry)
        state = self.state
        state.pop(entry.key, None)
        if entry.type is not EventType.DELETED:
            state[entry.key] = entry
        if len(self) > self.max_events:
            self._evict(entry.time, len(self) - self.max_events)

    def compact(self, now: float) -> None:
        """Evict entries older than ``max_age``; the runtime calls this now and then."""
        oldest = now - self.max_age
        count = 0
        entries = self._entries
        for i in range(self._start, len(entries)):
            if entries[i].time >= oldest:
                break
            count += 1
        if count:
            self._evict(now, count)

    def _evict(self, now: float, count: int) -> None:
        entries = self._entries
        young = now - self.young_window
        stop = self._start + count
        for i in range(self._start, stop):
            if entries[i].time > young:
                self.evicted_young += 1
        self.watermark = entries[stop - 1].rv
        self.evicted += count
        self._start = stop
        if stop > _COMPACT_SLACK and stop * 2 > len(entries):
            del entries[:stop]
            self._start = 0

    def since(self, rv: int, head: int) -> Iterator[Entry]:
        """Entries after ``rv``, ascending; ``Expired`` if the log cannot answer exactly."""
        self.check(rv, head)
        entries = self._entries
        i = bisect.bisect_right(entries, rv, lo=self._start, key=_rv)
        return iter(entries[i:])

    def entry(self, rv: int) -> Entry | None:
        """The retained entry with version ``rv``, if any."""
        entries = self._entries
        i = bisect.bisect_left(entries, rv, lo=self._start, key=_rv)
        return entries[i] if i < len(entries) and entries[i].rv == rv else None

    def check(self, rv: int, head: int) -> None:
        if rv < self.watermark:
            raise Expired(f"too old resource version: {rv} ({self.watermark})")
        if rv > head:
            raise Expired(f"resource version {rv} is newer than this log's head ({head})")
