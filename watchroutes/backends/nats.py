"""The NATS JetStream log backend (``pip install 'watchroutes[nats]'``): nats-py, asyncio.

Layout, for a log named ``S`` (``stream=``, default ``watchroutes``):

* stream ``S`` (file storage, limits retention), subjects ``S.*.*``: one message per change on
  ``S.<resource>.<key>``, each name as a subject-safe token (its UTF-8 in base64url without
  padding; ``=`` for the empty string), the body the msgpack array
  ``[type, object, prev, prev_rv]``;
* KV bucket ``S_state`` (stream ``KV_S_state``): ``<resource>.<key>`` -> ``[rv, object]``, the
  object state (a deleted key is a delete marker carrying ``[rv, nil]``), and ``<resource>`` ->
  ``[watermark, count]``, the compaction watermark and how many of its records the stream holds.

**Versions.** A message's stream sequence *is* its rv. A new stream is created listening on a
placeholder subject only, purged up to its creation time in µs (JetStream then numbers the next
message from there) and only then given its subjects, so the n-th change is
``rv = creation µs + n`` and the epoch is the creation time: a recreated stream is a new epoch
whose versions are above the old ones unless the old stream averaged more than one change per µs.
Versions do not follow the clock after that (``rv >= now`` does not hold).

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
import base64
import contextlib
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.client import JetStreamContext
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.backends.nats needs nats-py: pip install 'watchroutes[nats]'"
    ) from exc

import anyio
import msgspec

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

__all__ = ["NatsLog"]

logger = logging.getLogger(__name__)

#: Seconds between stream checks when nothing arrives (a recreated stream is seen this fast).
POLL_INTERVAL: Final = 1.0
#: Attempts of one step when other writers keep changing the same key or resource entry.
ATTEMPTS: Final = 20
#: Records one append evicts at most (a backlog after a quiet spell drains over the next ones).
EVICT_BATCH: Final = 256
#: Seconds a delete marker stays in the state bucket at least, so that a delayed write of an
#: older version cannot bring the key back.
TOMBSTONE_AGE: Final = 60.0
#: Messages one pull request of a load asks for.
PULL_BATCH: Final = 1024

_EXPECT: Final = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST: Final = 10071
_NO_STREAM: Final = 10059
_NO_MESSAGE: Final = 10037
_IN_USE: Final = 10058
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

P = ParamSpec("P")
T = TypeVar("T")


class _Body(msgspec.Struct, array_like=True):
    type: str
    object: bytes
    prev: bytes | None
    prev_rv: int


class _State(msgspec.Struct, array_like=True):
    rv: int
    object: bytes | None  # None: deleted


class _Meta(msgspec.Struct, array_like=True):
    watermark: int
    count: int


class _Stored(msgspec.Struct, frozen=True):
    """A message as stored: its sequence (a KV entry's revision), subject, time (µs), body."""

    seq: int
    subject: str
    time: int
    data: bytes


_JSON = msgspec.json.Encoder()
_PACK = msgspec.msgpack.Encoder()
_BODY = msgspec.msgpack.Decoder(_Body)
_STATE = msgspec.msgpack.Decoder(_State)
_META = msgspec.msgpack.Decoder(_Meta)


class _ApiError(ServiceUnavailable):
    """JetStream refused a request (the caller handles the codes it expects)."""

    def __init__(self, url: str, err_code: int, description: str) -> None:
        super().__init__(f"the event log at {url} failed: {description} (JetStream {err_code})")
        self.err_code = err_code


class _Missing(ServiceUnavailable):
    """The stream or the bucket does not exist (deleted: the caller creates it again)."""


def _token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode() or "="


def _name(token: str) -> str:
    if token == "=":
        return ""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _micros(stamp: str) -> int:
    """µs since 1970 of an RFC 3339 UTC time as JetStream writes it (to the nanosecond)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000 + int(fraction[:6].ljust(6, "0"))


def _now() -> int:
    return time.time_ns() // 1000


def _state(entry: _Stored | None) -> _State | None:
    return None if entry is None or not entry.data else _STATE.decode(entry.data)


def _record(seq: int, resource: str, key: str, data: bytes) -> Record:
    body = _BODY.decode(data)
    return Record(seq, resource, key, body.type, body.object, body.prev, body.prev_rv)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = "***" if parts.password is None else f"{parts.username}:***"  # user, or a token
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _backoff(attempt: int) -> None:
    """A random pause of up to ``attempt`` ms, so that racing writers do not race again."""
    await anyio.sleep(random.random() * attempt / 1000)


async def _quiet(exc: Exception) -> None:
    logger.debug("nats: %s", exc)  # every failure also reaches the caller


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
        self.url = _redacted(url)
        self.stream = stream
        self.bucket = f"{stream}_state"
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._servers = url
        self._kv = f"KV_{self.bucket}"
        self._nc: Client | None = None
        self._connecting: asyncio.Lock | None = None
        self._followers: set[JetStreamContext.PushSubscription] = set()
        #: Appends per resource token not yet added to its count (their trim lost the race).
        self._uncounted: dict[str, int] = {}
        #: The epoch's start (the stream's creation µs), as last seen.
        self._start = 0

    # -- plumbing ------------------------------------------------------------------------------

    def _unavailable(self, exc: object) -> ServiceUnavailable:
        return ServiceUnavailable(f"the event log at {self.url} is unavailable: {exc}")

    async def _conn(self) -> Client:
        if self._nc is not None and self._nc.is_connected:
            return self._nc
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._nc is not None:
                if self._nc.is_connected:
                    return self._nc
                await self.close()
            try:
                with anyio.fail_after(self.timeout):
                    self._nc = await nats.connect(
                        self._servers,
                        name="watchroutes",
                        connect_timeout=max(1, round(min(self.timeout, 2.0))),
                        allow_reconnect=False,  # a lost connection fails the calls at once
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0,
                        error_cb=_quiet,
                    )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                raise self._unavailable(exc) from exc
            return self._nc

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        """The decoded JSON reply; JetStream's errors become ``_ApiError``/``_Missing``."""
        nc = await self._conn()
        try:
            msg = await nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            if subject.startswith("$JS.API."):
                raise self._unavailable("JetStream is not enabled") from exc
            raise _Missing(f"nothing at {self.url} stores {subject}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        reply = msgspec.json.decode(msg.data)
        error = reply.get("error")
        if error is None:
            return reply
        code = error.get("err_code", 0)
        if code == _NO_STREAM:
            raise _Missing(f"the event log at {self.url} has no stream for {subject}")
        raise _ApiError(self.url, code, error.get("description", ""))

    async def _api(self, op: str, body: object = None) -> Any:
        payload = b"" if body is None else _JSON.encode(body)
        return await self._request(f"$JS.API.{op}", payload, {})

    async def _purge(self, stream: str, **request: object) -> None:
        """Remove ``stream``'s messages (on ``filter``, below ``seq``: JetStream's purge)."""
        await self._api(f"STREAM.PURGE.{stream}", request)

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        return int((await self._request(subject, body, headers))["seq"])

    async def _get(self, stream: str, **query: object) -> _Stored | None:
        """A message by ``seq``, ``last_by_subj`` or ``next_by_subj`` (``None``: no such)."""
        try:
            reply = await self._api(f"STREAM.MSG.GET.{stream}", query)
        except _ApiError as exc:
            if exc.err_code == _NO_MESSAGE:
                return None
            raise
        m = reply["message"]
        return _Stored(
            m["seq"], m["subject"], _micros(m["time"]), base64.b64decode(m.get("data", ""))
        )

    async def _scan(
        self, stream: str, subject: str, *, start: int = 1, stop: int = 0, last: bool = False
    ) -> list[_Stored]:
        """The messages on ``subject`` from ``start`` (up to ``stop``, if given), or the last
        one of each subject: one ephemeral pull consumer, read in batches."""
        config: dict[str, object] = {
            "ack_policy": "none",
            "filter_subject": subject,
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": int(max(self.timeout, 1.0) * 2e9),
        }
        if last:
            config["deliver_policy"] = "last_per_subject"
        else:
            config.update(deliver_policy="by_start_sequence", opt_start_seq=max(start, 1))
        info = await self._api(
            f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
        )
        name, total = info["name"], info["num_pending"]
        found: list[_Stored] = []
        try:
            nc = await self._conn()
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            try:
                while len(found) < total:
                    asked = min(total - len(found), PULL_BATCH)
                    pull = _JSON.encode({"batch": asked, "no_wait": True})
                    await nc.publish(
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", pull, reply=inbox
                    )
                    for _ in range(asked):
                        msg = await sub.next_msg(timeout=self.timeout)
                        if not msg.reply:  # a status: nothing more (purged meanwhile)
                            return found
                        meta = msg.metadata
                        seq = meta.sequence.stream
                        if stop and seq > stop:
                            return found
                        micros = (meta.timestamp - _EPOCH) // _MICROSECOND
                        found.append(_Stored(seq, msg.subject, micros, msg.data))
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            with contextlib.suppress(ServiceUnavailable), anyio.move_on_after(1.0, shield=True):
                await self._api(f"CONSUMER.DELETE.{stream}.{name}")
        return found

    async def _in_bucket(self, call: Callable[P, Awaitable[T]], *a: P.args, **k: P.kwargs) -> T:
        """``call`` on the state bucket, created again if it was deleted."""
        try:
            return await call(*a, **k)
        except _Missing:
            await self._bucket()
            return await call(*a, **k)

    async def _kv_get(self, name: str) -> _Stored | None:
        return await self._in_bucket(self._get, self._kv, last_by_subj=f"$KV.{self.bucket}.{name}")

    async def _kv_put(self, name: str, value: _State | _Meta, revision: int) -> None:
        headers = {_EXPECT: str(revision)}
        if isinstance(value, _State) and value.object is None:
            headers["KV-Operation"] = "DEL"
        subject = f"$KV.{self.bucket}.{name}"
        await self._in_bucket(self._publish, subject, _PACK.encode(value), headers)

    # -- the stream and its epoch ----------------------------------------------------------------

    async def _info(self) -> tuple[int, int]:
        """The epoch's start and the head, creating the log if it is missing."""
        for attempt in range(ATTEMPTS):
            try:
                info = await self._api(f"STREAM.INFO.{self.stream}")
            except _Missing:
                await self._create()
                continue
            start = _micros(info["created"])
            if info["config"]["subjects"] != [f"{self.stream}.*.*"]:
                # Another node is creating it: give it a moment, then finish the job.
                if attempt < ATTEMPTS // 2:
                    await anyio.sleep(0.05)
                else:
                    await self._bucket()
                    await self._open_stream(info["config"], start)
                continue
            if start != self._start:
                self._start = start
                self._uncounted.clear()  # counts of an earlier epoch
            return start, int(info["state"]["last_seq"])
        raise self._unavailable(f"stream {self.stream} could not be created")

    async def _create(self) -> None:
        config = {
            "name": self.stream,
            "description": f"watchroutes event log {uuid.uuid4().hex}",  # one creator wins
            "subjects": [f"{self.stream}.init"],  # nothing is written before the first sequence
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "num_replicas": 1,
        }
        try:
            info = await self._api(f"STREAM.CREATE.{self.stream}", config)
        except _ApiError as exc:
            if exc.err_code == _IN_USE:
                return  # another node created it
            raise
        await self._bucket(purge=True)  # no state of an earlier epoch
        await self._open_stream(info["config"], _micros(info["created"]))

    async def _open_stream(self, config: dict[str, Any], start: int) -> None:
        await self._purge(self.stream, seq=start + 1)
        await self._api(
            f"STREAM.UPDATE.{self.stream}", {**config, "subjects": [f"{self.stream}.*.*"]}
        )

    async def _bucket(self, *, purge: bool = False) -> None:
        config = {  # what nats-py and the nats CLI create for a KV bucket with history 1
            "name": self._kv,
            "subjects": [f"$KV.{self.bucket}.>"],
            "max_msgs_per_subject": 1,
            "discard": "new",
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": 120_000_000_000,
        }
        try:
            await self._api(f"STREAM.CREATE.{self._kv}", config)
        except _ApiError as exc:
            if exc.err_code != _IN_USE:
                raise
        if purge:
            await self._purge(self._kv)

    async def _watermark(self, res: str) -> int:
        meta = await self._kv_get(res)
        if meta is None or not meta.data:
            return self._start
        return max(_META.decode(meta.data).watermark, self._start)

    # -- the contract ----------------------------------------------------------------------------

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        tokens = [_token(name) for name in retention]
        for _ in range(3):
            start, head = await self._info()
            windows = await asyncio.gather(
                *(self._scan(self.stream, f"{self.stream}.{t}.*", stop=head) for t in tokens)
            )
            # After the records: what retention evicted meanwhile was settled into the bucket.
            states = await asyncio.gather(
                *(
                    self._in_bucket(self._scan, self._kv, f"$KV.{self.bucket}.{t}.*", last=True)
                    for t in tokens
                )
            )
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
        raise self._unavailable("the log kept changing under the load")

    async def _image(
        self,
        name: str,
        res: str,
        head: int,
        window: list[_Stored],
        entries: list[_Stored],
        mark: int,
    ) -> ResourceLoad | None:
        """The records above ``mark`` and the state at ``head``: the newest record of each key,
        else its state entry, else (an entry already past ``head``) the previous object of the
        key's first record after ``head``. ``None`` if that record is gone too: load again."""
        current: dict[str, tuple[int, bytes | None]] = {}
        records = []
        for msg in window:
            record = _record(msg.seq, name, _name(msg.subject.rsplit(".", 1)[1]), msg.data)
            deleted = record.type == EventType.DELETED
            current[record.key] = (record.rv, None if deleted else record.object)
            if record.rv > mark:
                records.append(record)
        old = _now() - int(TOMBSTONE_AGE * 1e6)
        for entry in entries:
            token = entry.subject.rsplit(".", 1)[1]
            key, state = _name(token), _state(entry)
            if key in current or state is None or state.rv <= self._start:
                continue  # a record says more, or of an earlier epoch
            if state.rv <= head:
                current[key] = (state.rv, state.object)
                if state.object is None and state.rv <= mark and entry.time < old:
                    await self._drop_tombstone(entry)
                continue
            after = await self._get(
                self.stream, seq=head + 1, next_by_subj=f"{self.stream}.{res}.{token}"
            )
            if after is None:
                return None
            body = _BODY.decode(after.data)
            current[key] = (body.prev_rv, body.prev)
        live = [Record(rv, name, k, "ADDED", obj) for k, (rv, obj) in current.items() if obj]
        return ResourceLoad(mark, records, live)

    async def _drop_tombstone(self, entry: _Stored) -> None:
        # Only this revision (and older): a newer value written meanwhile stays.
        with contextlib.suppress(ServiceUnavailable):
            await self._purge(self._kv, filter=entry.subject, seq=entry.seq + 1)

    async def append(self, write: Write, retention: Retention) -> Appended:
        res, key = _token(write.resource), _token(write.key)
        subject = f"{self.stream}.{res}.{key}"
        for attempt in range(ATTEMPTS):
            try:
                if not self._start:
                    await self._info()
                last, entry, meta, front = await asyncio.gather(
                    self._get(self.stream, last_by_subj=subject),
                    self._kv_get(f"{res}.{key}"),
                    self._kv_get(res),
                    self._get(self.stream, seq=1, next_by_subj=f"{self.stream}.{res}.*"),
                )
                seq, current_rv, current = self._current(last, entry)
                check_expectation(write, current_rv)
                obj = write.object
                if obj is None:
                    if current is None:
                        raise NotFound(f'{write.resource} "{write.key[:100]}" not found')
                    obj = current
                body = _PACK.encode(_Body(write.type, obj, current, current_rv or 0))
                rv = await self._publish(subject, body, {_EXPECT: str(seq)})
            except _Missing:
                await self._info()  # deleted: a new epoch
                continue
            except _ApiError as exc:
                if exc.err_code == _WRONG_LAST:
                    await _backoff(attempt)
                    continue  # another writer changed the key: read again
                raise
            state = _State(rv, None if write.type == EventType.DELETED else obj)
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
        raise self._unavailable(f"{write.resource} {write.key[:100]!r} kept changing")

    def _current(
        self, last: _Stored | None, entry: _Stored | None
    ) -> tuple[int, int | None, bytes | None]:
        """The key's last message sequence (0: none), current rv and object."""
        if last is not None:
            body = _BODY.decode(last.data)
            if body.type == EventType.DELETED:
                return last.seq, None, None
            return last.seq, last.seq, body.object
        state = _state(entry)  # retention evicted its messages: the bucket has the object
        if state is None or state.object is None or state.rv <= self._start:
            return 0, None, None
        return 0, state.rv, state.object

    async def _save(self, name: str, state: _State, entry: _Stored | None) -> None:
        """Write ``state`` unless the entry already holds a newer rv."""
        for _ in range(ATTEMPTS):
            try:
                await self._kv_put(name, state, 0 if entry is None else entry.seq)
                return
            except _ApiError as exc:
                if exc.err_code != _WRONG_LAST:
                    raise
            entry = await self._kv_get(name)
            newer = _state(entry)
            if entry is None or (newer is not None and newer.rv >= state.rv):
                return  # a newer change wrote it (or deleted and dropped it)

    async def _trim(
        self,
        res: str,
        rv: int,
        entry: _Stored | None,
        front: _Stored | None,
        retention: Retention,
    ) -> None:
        """Count the new record and evict what is over the resource's retention, walking from
        ``front``, the resource's first record in the stream (read with the key). A trim that
        keeps losing the race to other writers leaves its count to this log's next one."""
        subjects = f"{self.stream}.{res}.*"
        self._uncounted[res] = self._uncounted.get(res, 0) + 1
        for attempt in range(ATTEMPTS):
            meta = _META.decode(entry.data) if entry is not None and entry.data else None
            if meta is None or meta.watermark < self._start:
                meta = _Meta(self._start, 0)  # none yet, or of an earlier epoch
            adding = self._uncounted[res]
            count = meta.count + adding
            oldest = _now() - int(retention.max_age * 1e6)
            # Records at or below the watermark still in the stream (a purge that was lost)
            # are settled and purged again, without being counted again.
            evicted: list[_Stored] = []
            counted = 0
            while front is not None and front.seq < rv and len(evicted) < EVICT_BATCH:
                counts = front.seq > meta.watermark
                if counts and count - counted <= retention.max_events and front.time >= oldest:
                    break
                evicted.append(front)
                counted += counts
                if counts and count - counted <= retention.max_events and front.time >= oldest:
                    break  # the count is right, and the next records are younger
                front = await self._get(self.stream, seq=front.seq + 1, next_by_subj=subjects)
            mark = max(evicted[-1].seq, meta.watermark) if evicted else meta.watermark
            revision = 0 if entry is None else entry.seq
            results = await asyncio.gather(
                self._kv_put(res, _Meta(mark, count - counted), revision),
                *(self._settle(record) for record in evicted),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                if isinstance(failed[0], _ApiError) and failed[0].err_code == _WRONG_LAST:
                    await _backoff(attempt)  # another writer counted or trimmed meanwhile
                    entry, front = await asyncio.gather(
                        self._kv_get(res), self._get(self.stream, seq=1, next_by_subj=subjects)
                    )
                    continue
                raise failed[0]
            self._uncounted[res] -= adding
            if evicted:
                # Announced and settled above: the purge need not be waited for (a lost one
                # leaves the records at the front, for the next trim to purge again).
                nc = await self._conn()
                purge = _JSON.encode({"filter": subjects, "seq": mark + 1})
                try:
                    await nc.publish(
                        f"$JS.API.STREAM.PURGE.{self.stream}", purge, reply=nc.new_inbox()
                    )
                except (nats.errors.Error, OSError) as exc:
                    raise self._unavailable(exc) from exc
            return

    async def _settle(self, record: _Stored) -> None:
        """Before ``record`` leaves the stream, make sure the state bucket does not lag it (its
        writer may have failed between the two), and drop an old delete marker it left."""
        name = record.subject.split(".", 1)[1]
        entry = await self._kv_get(name)
        state = _state(entry)
        if entry is not None and state is not None and state.rv >= record.seq:
            old = entry.time < _now() - int(TOMBSTONE_AGE * 1e6)
            if state.rv == record.seq and state.object is None and old:
                await self._drop_tombstone(entry)
            return
        last = await self._get(self.stream, last_by_subj=record.subject)
        if last is not None and last.seq > record.seq:
            return  # a newer record settles it when it goes
        body = _BODY.decode(record.data)
        deleted = body.type == EventType.DELETED
        await self._save(name, _State(record.seq, None if deleted else body.object), entry)

    async def head(self) -> tuple[str, int]:
        start, last = await self._info()
        return str(start), last

    async def read(self, resource: str, after: int) -> list[Record]:
        await self._info()
        res = _token(resource)
        await self._check(res, after)
        found = await self._scan(self.stream, f"{self.stream}.{res}.*", start=after + 1)
        await self._check(res, after)  # nothing was evicted while reading
        return [_record(m.seq, resource, _name(m.subject.rsplit(".", 1)[1]), m.data) for m in found]

    async def _check(self, res: str, after: int) -> None:
        mark = await self._watermark(res)
        if after < mark:
            raise Expired(f"too old resource version: {after} ({mark})")

    async def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        wanted = {_token(name): name for name in resources}
        epoch = 0
        sub: JetStreamContext.PushSubscription | None = None
        polled = -self.poll_interval
        try:
            while True:
                if anyio.current_time() - polled >= self.poll_interval:
                    start, last = await self._info()
                    polled = anyio.current_time()
                    if start != epoch:
                        if sub is not None:
                            await self._stop(sub)
                            sub = None
                        fresh = epoch or not start <= after <= last
                        epoch = start
                        if fresh:  # a new epoch, or ``after`` is of another one
                            after = last
                            yield Batch(str(epoch), after, [])
                if sub is None:
                    try:
                        sub = await self._follower(after + 1)
                    except _Missing:
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
                await self._stop(sub)

    async def _follower(self, start: int) -> JetStreamContext.PushSubscription:
        js = (await self._conn()).jetstream(timeout=self.timeout)
        try:
            sub = await js.subscribe(
                f"{self.stream}.*.*",
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=start),
                idle_heartbeat=max(self.poll_interval, 1.0),
            )
        except nats.js.errors.NotFoundError as exc:
            raise _Missing(f"the event log at {self.url} has no stream") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        self._followers.add(sub)
        return sub

    async def _drain(
        self,
        sub: JetStreamContext.PushSubscription,
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
        try:
            msg: Msg | None = await sub.next_msg(timeout=wait or 0.001)
            while msg is not None:
                seq = msg.metadata.sequence.stream
                if seq > after:
                    skipped = skipped or seq > after + 1
                    after = seq
                    _, res, key = msg.subject.split(".")
                    name = wanted.get(res)
                    if name is not None:
                        records.append(_record(seq, name, _name(key), msg.data))
                        appended = int(msg.metadata.timestamp.timestamp() * 1e6)
                more = sub.pending_msgs and len(records) < PULL_BATCH
                msg = await sub.next_msg(timeout=self.timeout) if more else None
        except nats.errors.TimeoutError:
            pass  # nothing (more) arrived in time
        except (nats.errors.Error, OSError) as exc:
            raise self._unavailable(exc) from exc
        return records, after, appended, skipped

    async def _stop(self, sub: JetStreamContext.PushSubscription) -> None:
        self._followers.discard(sub)
        with contextlib.suppress(nats.errors.Error), anyio.move_on_after(1.0, shield=True):
            await sub.unsubscribe()

    async def close(self) -> None:
        for sub in list(self._followers):
            await self._stop(sub)
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
