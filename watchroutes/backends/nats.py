"""The NATS JetStream log backend (``pip install 'watchroutes[nats]'``): nats-py, asyncio.

A log named ``S`` (``stream=``, default ``watchroutes``) is the stream ``S``, one message per
change on ``S.<resource>.<key>``, and the KV bucket ``S_state``, each key's object state and
each resource's ``[watermark, count]``: the compaction watermark and how many of its records the
stream holds. The layout and the JetStream requests are in ``_jetstream``; this module is the
log contract over them.

**Versions.** A message's stream sequence *is* its rv. A new stream is numbered from its
creation time in µs, so the n-th change is ``rv = creation µs + n`` and the epoch is the
creation time: a recreated stream is a new epoch whose versions are above the old ones unless
the old stream averaged more than one change per µs. Versions do not follow the clock after
that (``rv >= now`` does not hold).

**Writes** are optimistic per key: read the key's last message (or, when retention evicted it,
its state entry), check the expectation, publish with ``Nats-Expected-Last-Subject-Sequence``
set to that message's sequence (0: none) and, when another writer got there first ("wrong last
sequence", 10071), read again and retry. Then the state entry is written (compare-and-set on
its revision, never over a newer rv) and the resource trimmed from its first record: the
records to evict are settled into the state bucket and the ``[watermark, count]`` entry is set
(compare-and-set) *before* the purge is sent, so a reader that reads the records and then the
watermark never misses one, and no record leaves the stream before the bucket holds its state.

**Loads** read the head, the records up to it, then the state bucket and the watermarks: a
key's newest record wins over its entry, and an entry already past the head gives way to the
previous object of the key's next record (the bucket and the stream are not one transaction).
**Following** is one ordered push consumer on ``S.*.*`` per call, which checks at least every
``poll_interval`` whether the stream was recreated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Final

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
from ._jetstream import (
    ATTEMPTS,
    BODY,
    EXPECT,
    META,
    PACK,
    PULL_BATCH,
    WRONG_LAST,
    ApiError,
    Body,
    JetStream,
    Meta,
    Missing,
    State,
    Stored,
    Subscription,
    from_token,
    record_of,
    state_of,
    to_token,
)

__all__ = ["NatsLog"]

logger = logging.getLogger(__name__)

#: Seconds between stream checks when nothing arrives (a recreated stream is seen this fast).
POLL_INTERVAL: Final = 1.0
#: Records one append evicts at most (a backlog after a quiet spell drains over the next ones).
EVICT_BATCH: Final = 256
#: Seconds a delete marker stays in the state bucket at least, so that a delayed write of an
#: older version cannot bring the key back.
TOMBSTONE_AGE: Final = 60.0

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _now() -> int:
    return time.time_ns() // 1000


async def _backoff(attempt: int) -> None:
    """A random pause of up to ``attempt`` ms, so that racing writers do not race again."""
    await anyio.sleep(random.random() * attempt / 1000)


class NatsLog:
    """A hub log in NATS JetStream. ``url`` as nats-py takes it (``nats://user:pw@host:4222``);
    ``stream`` names the log's stream (its state bucket is ``<stream>_state``), so several hubs'
    logs can share one server."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "watchroutes",
        poll_interval: float = POLL_INTERVAL,
        timeout: float = 5.0,
    ) -> None:
        if not _SAFE_NAME.fullmatch(stream):
            raise ValueError("stream must be letters, digits, '-' and '_'")
        self._js = JetStream(url, stream=stream, timeout=timeout)
        self.url = self._js.url
        self.stream = stream
        self.bucket = self._js.bucket
        self.poll_interval = poll_interval
        self.timeout = timeout
        #: Appends per resource token not yet added to its count (their trim lost the race).
        self._uncounted: dict[str, int] = {}
        #: The epoch's start (the stream's creation µs), as last seen.
        self._start = 0

    # -- the epoch -----------------------------------------------------------------------------

    async def _info(self) -> tuple[int, int]:
        """The epoch's start and the head, creating the log if it is missing."""
        start, head = await self._js.info()
        if start != self._start:
            self._start = start
            self._uncounted.clear()  # counts of an earlier epoch
        return start, head

    async def _watermark(self, res: str) -> int:
        meta = await self._js.kv_get(res)
        if meta is None or not meta.data:
            return self._start
        return max(META.decode(meta.data).watermark, self._start)

    # -- the contract ----------------------------------------------------------------------------

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        tokens = [to_token(name) for name in retention]
        for _ in range(3):
            start, head = await self._info()
            windows = await asyncio.gather(
                *(self._js.scan(self.stream, f"{self.stream}.{t}.*", stop=head) for t in tokens)
            )
            # After the records: what retention evicted meanwhile was settled into the bucket.
            states = await asyncio.gather(*(self._js.kv_scan(f"{t}.*") for t in tokens))
            marks = await asyncio.gather(*(self._watermark(t) for t in tokens))
            resources = {}
            for name, t, window, entries, mark in zip(
                retention, tokens, windows, states, marks, strict=True
            ):
                part = await self._image(name, t, head, window, entries, mark)
                if part is None:
                    break
                resources[name] = part
            else:
                if (await self._info())[0] == start:  # not recreated meanwhile
                    return Loaded(str(start), head, resources)
        raise self._js.unavailable("the log kept changing under the load")

    async def _image(
        self,
        name: str,
        res: str,
        head: int,
        window: list[Stored],
        entries: list[Stored],
        mark: int,
    ) -> ResourceLoad | None:
        """The records above ``mark`` and the state at ``head``: the newest record of each key,
        else its state entry, else (an entry already past ``head``) the previous object of the
        key's first record after ``head``. ``None`` if that record is gone too: load again."""
        current: dict[str, tuple[int, bytes | None]] = {}
        records = []
        for msg in window:
            record = record_of(msg.seq, name, from_token(msg.subject.rsplit(".", 1)[1]), msg.data)
            deleted = record.type == EventType.DELETED
            current[record.key] = (record.rv, None if deleted else record.object)
            if record.rv > mark:
                records.append(record)
        old = _now() - int(TOMBSTONE_AGE * 1e6)
        for entry in entries:
            token = entry.subject.rsplit(".", 1)[1]
            key, state = from_token(token), state_of(entry)
            if key in current or state is None or state.rv <= self._start:
                continue  # a record says more, or of an earlier epoch
            if state.rv <= head:
                current[key] = (state.rv, state.object)
                if state.object is None and state.rv <= mark and entry.time < old:
                    await self._drop_tombstone(entry)
                continue
            after = await self._js.get(
                self.stream, seq=head + 1, next_by_subj=f"{self.stream}.{res}.{token}"
            )
            if after is None:
                return None
            body = BODY.decode(after.data)
            current[key] = (body.prev_rv, body.prev)
        live = [Record(rv, name, k, "ADDED", obj) for k, (rv, obj) in current.items() if obj]
        return ResourceLoad(mark, records, live)

    async def _drop_tombstone(self, entry: Stored) -> None:
        # Only this revision (and older): a newer value written meanwhile stays.
        with contextlib.suppress(ServiceUnavailable):
            await self._js.purge(self._js.kv, filter=entry.subject, seq=entry.seq + 1)

    async def append(self, write: Write, retention: Retention) -> Appended:
        res, key = to_token(write.resource), to_token(write.key)
        subject = f"{self.stream}.{res}.{key}"
        for attempt in range(ATTEMPTS):
            try:
                if not self._start:
                    await self._info()
                last, entry, meta, front = await asyncio.gather(
                    self._js.get(self.stream, last_by_subj=subject),
                    self._js.kv_get(f"{res}.{key}"),
                    self._js.kv_get(res),
                    self._js.get(self.stream, seq=1, next_by_subj=f"{self.stream}.{res}.*"),
                )
                seq, current_rv, current = self._current(last, entry)
                check_expectation(write, current_rv)
                obj = write.object
                if obj is None:
                    if current is None:
                        raise NotFound(f'{write.resource} "{write.key[:100]}" not found')
                    obj = current
                body = PACK.encode(Body(write.type, obj, current, current_rv or 0))
                rv = await self._js.publish(subject, body, {EXPECT: str(seq)})
            except Missing:
                await self._info()  # deleted: a new epoch
                continue
            except ApiError as exc:
                if exc.err_code == WRONG_LAST:
                    await _backoff(attempt)
                    continue  # another writer changed the key: read again
                raise
            state = State(rv, None if write.type == EventType.DELETED else obj)
            try:
                with anyio.fail_after(self.timeout):
                    await asyncio.gather(
                        self._save(f"{res}.{key}", state, entry),
                        self._trim(res, rv, meta, front, retention),
                    )
            except (ServiceUnavailable, TimeoutError) as exc:
                # The change is in the log: loads and the next trim settle the rest.
                logger.warning("appended %d to %s, not its state or trim: %s", rv, self.url, exc)
            return Appended(rv, obj)
        raise self._js.unavailable(f"{write.resource} {write.key[:100]!r} kept changing")

    def _current(
        self, last: Stored | None, entry: Stored | None
    ) -> tuple[int, int | None, bytes | None]:
        """The key's last message sequence (0: none), current rv and object."""
        if last is not None:
            body = BODY.decode(last.data)
            if body.type == EventType.DELETED:
                return last.seq, None, None
            return last.seq, last.seq, body.object
        state = state_of(entry)  # retention evicted its messages: the bucket has the object
        if state is None or state.object is None or state.rv <= self._start:
            return 0, None, None
        return 0, state.rv, state.object

    async def _save(self, name: str, state: State, entry: Stored | None) -> None:
        """Write ``state`` unless the entry already holds a newer rv."""
        for _ in range(ATTEMPTS):
            try:
                await self._js.kv_put(name, state, 0 if entry is None else entry.seq)
                return
            except ApiError as exc:
                if exc.err_code != WRONG_LAST:
                    raise
            entry = await self._js.kv_get(name)
            newer = state_of(entry)
            if entry is None or (newer is not None and newer.rv >= state.rv):
                return  # a newer change wrote it (or deleted and dropped it)

    async def _trim(
        self,
        res: str,
        rv: int,
        entry: Stored | None,
        front: Stored | None,
        retention: Retention,
    ) -> None:
        """Count the new record and evict what is over the resource's retention, walking from
        ``front``, the resource's first record in the stream (read with the key). A trim that
        keeps losing the race to other writers leaves its count to this log's next one."""
        subjects = f"{self.stream}.{res}.*"
        self._uncounted[res] = self._uncounted.get(res, 0) + 1
        for attempt in range(ATTEMPTS):
            meta = META.decode(entry.data) if entry is not None and entry.data else None
            if meta is None or meta.watermark < self._start:
                meta = Meta(self._start, 0)  # none yet, or of an earlier epoch
            adding = self._uncounted[res]
            count = meta.count + adding
            oldest = _now() - int(retention.max_age * 1e6)
            # Records at or below the watermark still in the stream (a purge that was lost)
            # are settled and purged again, without being counted again.
            evicted: list[Stored] = []
            counted = 0
            while front is not None and front.seq < rv and len(evicted) < EVICT_BATCH:
                counts = front.seq > meta.watermark
                if counts and count - counted <= retention.max_events and front.time >= oldest:
                    break
                evicted.append(front)
                counted += counts
                if counts and count - counted <= retention.max_events and front.time >= oldest:
                    break  # the count is right, and the next records are younger
                front = await self._js.get(self.stream, seq=front.seq + 1, next_by_subj=subjects)
            mark = max(evicted[-1].seq, meta.watermark) if evicted else meta.watermark
            revision = 0 if entry is None else entry.seq
            results = await asyncio.gather(
                self._js.kv_put(res, Meta(mark, count - counted), revision),
                *(self._settle(record) for record in evicted),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                if isinstance(failed[0], ApiError) and failed[0].err_code == WRONG_LAST:
                    await _backoff(attempt)  # another writer counted or trimmed meanwhile
                    entry, front = await asyncio.gather(
                        self._js.kv_get(res),
                        self._js.get(self.stream, seq=1, next_by_subj=subjects),
                    )
                    continue
                raise failed[0]
            self._uncounted[res] -= adding
            if evicted:
                # Announced and settled above: the purge need not be waited for (a lost one
                # leaves the records at the front, for the next trim to purge again).
                await self._js.purge_nowait(self.stream, filter=subjects, seq=mark + 1)
            return

    async def _settle(self, record: Stored) -> None:
        """Before ``record`` leaves the stream, make sure the state bucket does not lag it (its
        writer may have failed between the two), and drop an old delete marker it left."""
        name = record.subject.split(".", 1)[1]
        entry = await self._js.kv_get(name)
        state = state_of(entry)
        if entry is not None and state is not None and state.rv >= record.seq:
            old = entry.time < _now() - int(TOMBSTONE_AGE * 1e6)
            if state.rv == record.seq and state.object is None and old:
                await self._drop_tombstone(entry)
            return
        last = await self._js.get(self.stream, last_by_subj=record.subject)
        if last is not None and last.seq > record.seq:
            return  # a newer record settles it when it goes
        body = BODY.decode(record.data)
        deleted = body.type == EventType.DELETED
        await self._save(name, State(record.seq, None if deleted else body.object), entry)

    async def head(self) -> tuple[str, int]:
        start, last = await self._info()
        return str(start), last

    async def read(self, resource: str, after: int) -> list[Record]:
        await self._info()
        res = to_token(resource)
        await self._check(res, after)
        found = await self._js.scan(self.stream, f"{self.stream}.{res}.*", start=after + 1)
        await self._check(res, after)  # nothing was evicted while reading
        return [
            record_of(m.seq, resource, from_token(m.subject.rsplit(".", 1)[1]), m.data)
            for m in found
        ]

    async def _check(self, res: str, after: int) -> None:
        mark = await self._watermark(res)
        if after < mark:
            raise Expired(f"too old resource version: {after} ({mark})")

    async def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        wanted = {to_token(name): name for name in resources}
        epoch = 0
        sub: Subscription | None = None
        polled = -self.poll_interval
        try:
            while True:
                if anyio.current_time() - polled >= self.poll_interval:
                    start, last = await self._info()
                    polled = anyio.current_time()
                    if start != epoch:
                        if sub is not None:
                            await self._js.unsubscribe(sub)
                            sub = None
                        fresh = epoch or not start <= after <= last
                        epoch = start
                        if fresh:  # a new epoch, or ``after`` is of another one
                            after = last
                            yield Batch(str(epoch), after, [])
                if sub is None:
                    try:
                        sub = await self._js.subscribe(after + 1, max(self.poll_interval, 1.0))
                    except Missing:
                        polled -= self.poll_interval  # deleted meanwhile: check again now
                        continue
                wait = max(0.0, polled + self.poll_interval - anyio.current_time())
                records, head, appended, skipped = await self._drain(sub, wanted, after, wait)
                if head > after:
                    watermark = 0
                    if skipped:  # purged before we read them: were any of ours?
                        marks = await asyncio.gather(*(self._watermark(t) for t in wanted))
                        watermark = max(marks)
                    after = head
                    yield Batch(str(epoch), head, records, appended, watermark)
        finally:
            if sub is not None:
                await self._js.unsubscribe(sub)

    async def _drain(
        self,
        sub: Subscription,
        wanted: dict[str, str],
        after: int,
        wait: float,
    ) -> tuple[list[Record], int, int, bool]:
        """What has arrived (waiting up to ``wait`` for the first): the records of the
        ``wanted`` resources, the newest sequence consumed, whatever its resource, when the
        newest record was stored (µs; 0: none), and whether sequences were skipped (every
        message of the stream is a record, so a skipped sequence is one that retention purged
        before this consumer got to it)."""
        records: list[Record] = []
        appended = 0
        skipped = False
        msg = await self._js.receive(sub, wait or 0.001)
        while msg is not None:
            if msg.seq > after:
                skipped = skipped or msg.seq > after + 1
                after = msg.seq
                _, res, key = msg.subject.split(".")
                name = wanted.get(res)
                if name is not None:
                    records.append(record_of(msg.seq, name, from_token(key), msg.data))
                    appended = msg.time
            more = sub.pending_msgs and len(records) < PULL_BATCH
            msg = await self._js.receive(sub, self.timeout) if more else None
        return records, after, appended, skipped

    async def close(self) -> None:
        await self._js.close()
