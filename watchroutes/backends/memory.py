"""The reference log backend, in process: the contract of ``watchroutes._core.backend`` with
nothing to install.

A :class:`MemoryLog` shared by several hubs in one process behaves as a Redis shared by several
processes: each hub follows it and keeps its own watch cache. That is what it is for: tests of
multi-node behaviour without servers, and the reference every engine's contract suite is
compared with. A hub without ``backend=`` does not use it: its own log is the in-memory
default, written synchronously (``watchroutes._core.log``).
"""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping

import anyio

from .._core.backend import (
    Appended,
    Batch,
    Loaded,
    Record,
    ResourceLoad,
    Retention,
    Write,
    check_expectation,
)
from .._core.errors import Expired, NotFound, ServiceUnavailable
from .._core.events import EventType

__all__ = ["MemoryLog"]


def _rv(record: Record) -> int:
    return record.rv


class _Resource:
    __slots__ = ("records", "state", "watermark")

    def __init__(self, start: int) -> None:
        self.records: list[Record] = []
        self.state: dict[str, Record] = {}
        self.watermark = start


class MemoryLog:
    """An in-process shared log (one epoch per instance until :meth:`wipe`)."""

    url = "memory://"

    def __init__(self, *, clock_us: Callable[[], int] | None = None) -> None:
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._waiters: set[anyio.Event] = set()
        self._available = True
        self.wipe()

    @property
    def available(self) -> bool:
        """Tests switch it off to act out an outage: every call raises ServiceUnavailable."""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        self._available = value
        self._notify()

    def wipe(self) -> None:
        """Start again from nothing, as a flushed Redis: a new epoch, rvs above the old."""
        self.epoch = uuid.uuid4().hex
        self._head = max(getattr(self, "_head", 0) + 1, self._clock_us())
        self._start = self._head
        self._resources: dict[str, _Resource] = {}
        self._notify()

    def _check(self) -> None:
        if not self.available:
            raise ServiceUnavailable("the memory log is switched off", retry_after=1)

    def _resource(self, name: str) -> _Resource:
        res = self._resources.get(name)
        if res is None:
            res = self._resources[name] = _Resource(self._start)
        return res

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for event in waiters:
            event.set()

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        self._check()
        resources = {}
        for name in retention:
            res = self._resource(name)
            state = sorted(res.state.values(), key=_rv)
            resources[name] = ResourceLoad(res.watermark, list(res.records), state)
        return Loaded(self.epoch, self._head, resources)

    async def append(self, write: Write, retention: Retention) -> Appended:
        self._check()
        res = self._resource(write.resource)
        current = res.state.get(write.key)
        check_expectation(write, None if current is None else current.rv)
        obj = write.object
        if obj is None:
            if current is None:
                raise NotFound(f'{write.resource} "{write.key[:100]}" not found')
            obj = current.object
        now = self._clock_us()
        rv = self._head = max(self._head + 1, now)
        record = Record(
            rv,
            write.resource,
            write.key,
            write.type,
            obj,
            None if current is None else current.object,
            0 if current is None else current.rv,
        )
        res.records.append(record)
        if write.type == EventType.DELETED:
            res.state.pop(write.key, None)
        else:
            res.state[write.key] = Record(rv, write.resource, write.key, write.type, obj)
        self._trim(res, retention, now)
        self._notify()
        await anyio.lowlevel.checkpoint()
        return Appended(rv, obj)

    def _trim(self, res: _Resource, retention: Retention, now: int) -> None:
        records = res.records
        drop = max(0, len(records) - retention.max_events)
        oldest = now - int(retention.max_age * 1_000_000)
        drop = max(drop, bisect.bisect_left(records, oldest, key=_rv))
        if drop:
            res.watermark = records[drop - 1].rv
            del records[:drop]

    async def head(self) -> tuple[str, int]:
        self._check()
        await anyio.lowlevel.checkpoint()
        return self.epoch, self._head

    async def read(self, resource: str, after: int) -> list[Record]:
        self._check()
        res = self._resource(resource)
        if after < res.watermark:
            raise Expired(f"too old resource version: {after} ({res.watermark})")
        records = res.records
        return records[bisect.bisect_right(records, after, key=_rv) :]

    async def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        names = list(resources)
        while True:
            self._check()
            event = anyio.Event()
            self._waiters.add(event)
            if self._head > after:
                found: list[Record] = []
                watermark = 0
                for name in names:
                    res = self._resource(name)
                    watermark = max(watermark, res.watermark)
                    found += res.records[bisect.bisect_right(res.records, after, key=_rv) :]
                found.sort(key=_rv)
                after = self._head
                yield Batch(self.epoch, after, found, watermark=watermark)
            with anyio.move_on_after(1.0):
                await event.wait()
            self._waiters.discard(event)

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()
