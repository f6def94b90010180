"""The Redis log backend (``pip install 'watchroutes[redis]'``): Redis Streams, redis-py asyncio.

Layout, all keys under one hash tag so a Redis Cluster keeps them in one slot:

* ``{P}:meta`` (hash): ``epoch``, ``start`` (the epoch's first rv), ``head``, and
  ``wm:<resource>`` (each resource's compaction watermark);
* ``{P}:log:<resource>`` (stream): one entry per change, id ``<rv>-0``, fields ``t`` (type),
  ``k`` (key), ``o`` (object JSON), ``p`` (previous object JSON), ``pv`` (its rv);
* ``{P}:state:<resource>`` (hash): key -> ``<rv>:<object JSON>``, the object state;
* ``{P}:appended`` (pub/sub channel): the rv of each append, the followers' wake-up.

Every change is one Lua script: it reads Redis ``TIME``, assigns
``rv = max(head + 1, now µs)``, checks the write's expectation against the state, ``XADD``s,
updates the state and the head, trims by count and age (recording the watermark) and
publishes the wake-up, atomically. Loads and follower reads are scripts too, so a node always
sees the records, the state and the head of one instant. A missing ``meta`` (a new or wiped
Redis) starts a new epoch at the current time, above every rv handed out before.

Each process follows with one pub/sub connection (never one per watcher) and reads what is new
of its resources, all of them at once, on each wake-up and at least once a second.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.backends.redis needs redis-py: pip install 'watchroutes[redis]'"
    ) from exc

from .._core.backend import (
    ABSENT,
    PRESENT,
    Appended,
    Batch,
    Loaded,
    Record,
    ResourceLoad,
    Retention,
    Write,
)
from .._core.errors import AlreadyExists, Conflict, Expired, NotFound, ServiceUnavailable

__all__ = ["RedisLog"]

#: Seconds between follower reads when no wake-up arrives (an epoch change is seen this fast).
POLL_INTERVAL: Final = 1.0

_ENSURE = """
local function ensure(meta, fresh)
  local got = redis.call('HMGET', meta, 'epoch', 'head')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if not got[1] then
    local start = string.format('%.0f', now)
    redis.call('HSET', meta, 'epoch', fresh, 'start', start, 'head', start)
    return fresh, now, now
  end
  return got[1], tonumber(got[2]), now
end
local function watermark(meta, resource)
  local wm = redis.call('HGET', meta, 'wm:' .. resource)
  if wm then return wm end
  return redis.call('HGET', meta, 'start')
end
"""

_APPEND = (
    _ENSURE
    + """
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local resource, key, etype, obj, expect = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local epoch, head, now = ensure(meta, ARGV[8])
local cur = redis.call('HGET', state, key)
local cur_rv, cur_obj = '0', ''
if cur then
  local i = string.find(cur, ':', 1, true)
  cur_rv, cur_obj = string.sub(cur, 1, i - 1), string.sub(cur, i + 1)
end
if expect == 'absent' then
  if cur then return {'exists', cur_rv} end
elseif expect ~= '' then
  if not cur then return {'missing', ''} end
  if expect ~= 'present' and expect ~= cur_rv then return {'conflict', cur_rv} end
end
if etype == 'DELETED' and obj == '' then
  if not cur then return {'missing', ''} end
  obj = cur_obj
end
local rv = math.max(head + 1, now)
local rvs = string.format('%.0f', rv)
redis.call('XADD', log, rvs .. '-0', 't', etype, 'k', key, 'o', obj, 'p', cur_obj, 'pv', cur_rv)
if etype == 'DELETED' then
  redis.call('HDEL', state, key)
else
  redis.call('HSET', state, key, rvs .. ':' .. obj)
end
redis.call('HSET', meta, 'head', rvs)
-- retention: evict from the front (the oldest) what is over the count or older than the age
local cut = now - tonumber(ARGV[7])
local over = redis.call('XLEN', log) - tonumber(ARGV[6])
local last, from, done = nil, '-', false
while not done do
  local chunk = redis.call('XRANGE', log, from, '+', 'COUNT', 4)
  for _, entry in ipairs(chunk) do
    local id = entry[1]
    if over <= 0 and tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1)) >= cut then
      done = true
      break
    end
    last, over = id, over - 1
  end
  if #chunk < 4 then done = true end
  if not done then from = '(' .. chunk[#chunk][1] end
end
if last then
  local wm = string.sub(last, 1, string.find(last, '-', 1, true) - 1)
  redis.call('XTRIM', log, 'MINID', wm .. '-1')
  redis.call('HSET', meta, 'wm:' .. resource, wm)
end
redis.call('PUBLISH', ARGV[9], rvs)
if etype == 'DELETED' then return {'ok', rvs, obj} end
return {'ok', rvs}
"""
)

# KEYS: meta, then log and state of each resource; ARGV: fresh epoch, then the resources.
_LOAD = (
    _ENSURE
    + """
local epoch, head = ensure(KEYS[1], ARGV[1])
local out = {epoch, string.format('%.0f', head)}
for i = 2, #ARGV do
  local log, state = KEYS[2 * i - 2], KEYS[2 * i - 1]
  table.insert(out, watermark(KEYS[1], ARGV[i]))
  table.insert(out, redis.call('XRANGE', log, '-', '+'))
  table.insert(out, redis.call('HGETALL', state))
end
return out
"""
)

# KEYS: meta, then the log of each resource; ARGV: fresh epoch, after, then the resources.
# Returns epoch, head, the resources' newest watermark (read with the records: above ``after``
# the follower has a gap), then each resource's records after ``after``.
_PULL = (
    _ENSURE
    + """
local epoch, head = ensure(KEYS[1], ARGV[1])
local out = {epoch, string.format('%.0f', head), '0'}
local newest = 0
local start = '(' .. ARGV[2] .. '-0'
for i = 2, #KEYS do
  local wm = tonumber(watermark(KEYS[1], ARGV[i + 1]))
  if wm > newest then newest = wm end
  table.insert(out, redis.call('XRANGE', KEYS[i], start, '+'))
end
out[3] = string.format('%.0f', newest)
return out
"""
)

# KEYS: meta, log; ARGV: resource, after.
_READ = (
    _ENSURE
    + """
local wm = watermark(KEYS[1], ARGV[1])
if tonumber(ARGV[2]) < tonumber(wm) then return {wm} end
return {wm, redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')}
"""
)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _rv_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _records(resource: str, entries: Sequence[Any]) -> list[Record]:
    out = []
    for entry_id, fields in entries:
        # fields: t, type, k, key, o, object, p, prev, pv, prev rv (the order XADD wrote)
        prev = fields[7]
        out.append(
            Record(
                _rv_of(entry_id),
                resource,
                fields[3].decode(),
                fields[1].decode(),
                fields[5],
                prev or None,
                int(fields[9]),
            )
        )
    return out


class RedisLog:
    """A hub log in Redis. ``url`` as redis-py takes it (``redis://host:port/db``);
    ``prefix`` separates several hubs' logs in one Redis."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "watchroutes",
        poll_interval: float = POLL_INTERVAL,
        timeout: float = 5.0,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError("prefix must be non-empty and free of braces")
        self.url = _redacted(url)
        self.poll_interval = poll_interval
        self._tag = "{" + prefix + "}"
        self._meta = f"{self._tag}:meta"
        self.channel = f"{self._tag}:appended"
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=max(timeout, poll_interval * 2),
            socket_connect_timeout=min(timeout, 2.0),
            decode_responses=False,
        )
        self._append = self._redis.register_script(_APPEND)
        self._load = self._redis.register_script(_LOAD)
        self._pull = self._redis.register_script(_PULL)
        self._read = self._redis.register_script(_READ)

    def _log(self, resource: str) -> str:
        return f"{self._tag}:log:{resource}"

    def _state(self, resource: str) -> str:
        return f"{self._tag}:state:{resource}"

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"the event log at {self.url} is unavailable: {exc}")

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        names = list(retention)
        keys = [self._meta]
        for name in names:
            keys += [self._log(name), self._state(name)]
        try:
            reply = await self._load(keys=keys, args=[uuid.uuid4().hex, *names])
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        epoch, head = reply[0].decode(), int(reply[1])
        resources = {}
        for i, name in enumerate(names):
            wm, entries, flat = reply[2 + 3 * i : 5 + 3 * i]
            state = []
            for key, value in zip(flat[::2], flat[1::2], strict=True):
                rv, _, obj = value.partition(b":")
                state.append(Record(int(rv), name, key.decode(), "ADDED", obj))
            resources[name] = ResourceLoad(int(wm), _records(name, entries), state)
        return Loaded(epoch, head, resources)

    async def append(self, write: Write, retention: Retention) -> Appended:
        expect = write.expect
        args: list[str | bytes | int] = [
            write.resource,
            write.key,
            write.type,
            write.object or b"",
            "" if expect is None else str(expect),
            retention.max_events,
            int(retention.max_age * 1_000_000),
            uuid.uuid4().hex,
            self.channel,
        ]
        keys = [self._meta, self._log(write.resource), self._state(write.resource)]
        try:
            status, value, *deleted = await self._append(keys=keys, args=args)
        except ResponseError:
            raise
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if status == b"ok":
            stored = write.object if write.object is not None else deleted[0]
            return Appended(int(value), stored)
        name = f'{write.resource} "{write.key[:100]}"'
        if status == b"exists":
            raise AlreadyExists(f"{name} already exists")
        if status == b"missing":
            raise NotFound(f"{name} not found")
        assert expect not in (None, ABSENT, PRESENT)
        raise Conflict(
            f"the object {name} has been modified: resourceVersion {expect} is not the "
            f"current {int(value)}"
        )

    async def head(self) -> tuple[str, int]:
        try:
            reply = await self._pull(keys=[self._meta], args=[uuid.uuid4().hex, 0])
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return reply[0].decode(), int(reply[1])

    async def read(self, resource: str, after: int) -> list[Record]:
        try:
            reply = await self._read(keys=[self._meta, self._log(resource)], args=[resource, after])
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if len(reply) == 1:
            raise Expired(f"too old resource version: {after} ({int(reply[0])})")
        return _records(resource, reply[1])

    async def _pull_batch(self, names: list[str], after: int) -> Batch:
        keys = [self._meta, *(self._log(name) for name in names)]
        reply = await self._pull(keys=keys, args=[uuid.uuid4().hex, after, *names])
        records: list[Record] = []
        for name, entries in zip(names, reply[3:], strict=True):
            records += _records(name, entries)
        if len(names) > 1:
            records.sort(key=lambda r: r.rv)
        return Batch(reply[0].decode(), int(reply[1]), records, watermark=int(reply[2]))

    async def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        names = list(resources)
        pubsub = self._redis.pubsub()
        epoch = None
        try:
            await pubsub.subscribe(self.channel)  # before the first read: no wake-up is missed
            while True:
                batch = await self._pull_batch(names, after)
                if batch.head != after or batch.epoch != epoch:
                    epoch, after = batch.epoch, batch.head
                    yield batch
                message = await pubsub.get_message(True, timeout=self.poll_interval)
                while message is not None:  # drain: one read serves every queued wake-up
                    message = await pubsub.get_message(True, timeout=0)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        finally:
            with contextlib.suppress(RedisError):  # the connection may be gone already
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def close(self) -> None:
        await self._redis.aclose()
