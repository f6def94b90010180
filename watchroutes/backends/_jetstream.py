"""JetStream plumbing for the NATS log (``watchroutes.backends.nats``): the connection, the API
requests, the stream and the state bucket, and how names and bodies are stored. nats-py is
imported here only; what the records mean is the log's business.

Layout, for a log named ``S``:

* stream ``S`` (file storage, limits retention), subjects ``S.*.*``: one message per change on
  ``S.<resource>.<key>``, each name as a subject-safe :func:`to_token` (its UTF-8 in base64url
  without padding; ``=`` for the empty string), the body the msgpack array :class:`Body`
  ``[type, object, prev, prev_rv]``;
* KV bucket ``S_state`` (stream ``KV_S_state``, the configuration nats-py and the nats CLI give
  a bucket with history 1): ``<resource>.<key>`` -> :class:`State` ``[rv, object]`` (a deleted
  key is a delete marker carrying ``[rv, nil]``), and ``<resource>`` -> :class:`Meta`
  ``[watermark, count]``.

**Creation.** A new stream listens on the placeholder subject ``S.init`` only, is purged up to
its creation time in µs (JetStream then numbers the next message from there) and only then
given its subjects, with its bucket emptied first. The stream's description holds a random id,
so of several nodes creating it at once one wins; the others wait for it to be given its
subjects and, when that takes too long, finish the job themselves.

**Failures** are all :class:`ServiceUnavailable` naming the URL without its credentials:
:class:`ApiError` when JetStream refused a request (the caller handles the codes it expects),
:class:`Missing` when the stream or the bucket does not exist (the caller creates it again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.client import JetStreamContext
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.backends.nats needs nats-py: pip install 'watchroutes[nats]'"
    ) from exc

import anyio
import msgspec

from .._core.backend import Record
from .._core.errors import ServiceUnavailable

__all__ = [
    "ATTEMPTS",
    "EXPECT",
    "PULL_BATCH",
    "WRONG_LAST",
    "ApiError",
    "Body",
    "JetStream",
    "Meta",
    "BODY",
    "META",
    "Missing",
    "PACK",
    "State",
    "Stored",
    "Subscription",
    "from_token",
    "record_of",
    "state_of",
    "to_token",
]

# The backend's logger, whichever of its modules writes.
logger = logging.getLogger("watchroutes.backends.nats")

#: Attempts of one step when other writers keep changing the same key or resource entry, or
#: other nodes keep creating the stream.
ATTEMPTS: Final = 20
#: Messages one pull request of a load asks for.
PULL_BATCH: Final = 1024

#: The header that makes a publish conditional on the subject's last sequence (0: none).
EXPECT: Final = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's "wrong last sequence": another writer published on the subject first.
WRONG_LAST: Final = 10071
_NO_STREAM: Final = 10059
_NO_MESSAGE: Final = 10037
_IN_USE: Final = 10058
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

P = ParamSpec("P")
T = TypeVar("T")

Subscription: TypeAlias = JetStreamContext.PushSubscription


class Body(msgspec.Struct, array_like=True):
    type: str
    object: bytes
    prev: bytes | None
    prev_rv: int


class State(msgspec.Struct, array_like=True):
    rv: int
    object: bytes | None  # None: deleted


class Meta(msgspec.Struct, array_like=True):
    watermark: int
    count: int


class Stored(msgspec.Struct, frozen=True):
    """A message as stored: its sequence (a KV entry's revision), subject, time (µs), body."""

    seq: int
    subject: str
    time: int
    data: bytes


_JSON = msgspec.json.Encoder()
PACK: Final = msgspec.msgpack.Encoder()
BODY: Final = msgspec.msgpack.Decoder(Body)
META: Final = msgspec.msgpack.Decoder(Meta)
_STATE = msgspec.msgpack.Decoder(State)


class ApiError(ServiceUnavailable):
    """JetStream refused a request (the caller handles the codes it expects)."""

    def __init__(self, url: str, err_code: int, description: str) -> None:
        super().__init__(f"the event log at {url} failed: {description} (JetStream {err_code})")
        self.err_code = err_code


class Missing(ServiceUnavailable):
    """The stream or the bucket does not exist (deleted: the caller creates it again)."""


def to_token(name: str) -> str:
    """``name`` as one subject token."""
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode() or "="


def from_token(token: str) -> str:
    """The name a subject token stands for."""
    if token == "=":
        return ""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def state_of(entry: Stored | None) -> State | None:
    """A state entry's value (``None``: no entry, or a purged one)."""
    return None if entry is None or not entry.data else _STATE.decode(entry.data)


def record_of(seq: int, resource: str, key: str, data: bytes) -> Record:
    """The stream message ``seq`` as a log record."""
    body = BODY.decode(data)
    return Record(seq, resource, key, body.type, body.object, body.prev, body.prev_rv)


def _micros(stamp: str) -> int:
    """µs since 1970 of an RFC 3339 UTC time as JetStream writes it (to the nanosecond)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000 + int(fraction[:6].ljust(6, "0"))


def _stamped(seq: int, subject: str, when: datetime, data: bytes) -> Stored:
    return Stored(seq, subject, (when - _EPOCH) // _MICROSECOND, data)


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


async def _quiet(exc: Exception) -> None:
    logger.debug("nats: %s", exc)  # every failure also reaches the caller


class JetStream:
    """One connection to a NATS server, opened on first use and again after it was lost, and
    the requests the log makes on its stream ``stream`` and state bucket ``<stream>_state``."""

    def __init__(self, url: str, *, stream: str, timeout: float) -> None:
        self.url = _redacted(url)
        self.stream = stream
        self.bucket = f"{stream}_state"
        self.kv = f"KV_{self.bucket}"
        self.timeout = timeout
        self._servers = url
        self._nc: Client | None = None
        self._connecting: asyncio.Lock | None = None
        self._followers: set[Subscription] = set()

    def unavailable(self, exc: object) -> ServiceUnavailable:
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
                raise self.unavailable(exc) from exc
            return self._nc

    async def close(self) -> None:
        for sub in list(self._followers):
            await self.unsubscribe(sub)
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()

    # -- requests ------------------------------------------------------------------------------

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        """The decoded JSON reply; JetStream's errors become ``ApiError``/``Missing``."""
        nc = await self._conn()
        try:
            msg = await nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            if subject.startswith("$JS.API."):
                raise self.unavailable("JetStream is not enabled") from exc
            raise Missing(f"nothing at {self.url} stores {subject}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from exc
        reply = msgspec.json.decode(msg.data)
        error = reply.get("error")
        if error is None:
            return reply
        code = error.get("err_code", 0)
        if code == _NO_STREAM:
            raise Missing(f"the event log at {self.url} has no stream for {subject}")
        raise ApiError(self.url, code, error.get("description", ""))

    async def _api(self, op: str, body: object = None) -> Any:
        payload = b"" if body is None else _JSON.encode(body)
        return await self._request(f"$JS.API.{op}", payload, {})

    async def purge(self, stream: str, **request: object) -> None:
        """Remove ``stream``'s messages (on ``filter``, below ``seq``: JetStream's purge)."""
        await self._api(f"STREAM.PURGE.{stream}", request)

    async def purge_nowait(self, stream: str, **request: object) -> None:
        """:meth:`purge`, sent without waiting for the reply."""
        nc = await self._conn()
        try:
            await nc.publish(
                f"$JS.API.STREAM.PURGE.{stream}", _JSON.encode(request), reply=nc.new_inbox()
            )
        except (nats.errors.Error, OSError) as exc:
            raise self.unavailable(exc) from exc

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        """Store ``body`` on ``subject``: its sequence."""
        return int((await self._request(subject, body, headers))["seq"])

    async def get(self, stream: str, **query: object) -> Stored | None:
        """A message by ``seq``, ``last_by_subj`` or ``next_by_subj`` (``None``: no such)."""
        try:
            reply = await self._api(f"STREAM.MSG.GET.{stream}", query)
        except ApiError as exc:
            if exc.err_code == _NO_MESSAGE:
                return None
            raise
        m = reply["message"]
        return Stored(
            m["seq"], m["subject"], _micros(m["time"]), base64.b64decode(m.get("data", ""))
        )

    async def scan(
        self, stream: str, subject: str, *, start: int = 1, stop: int = 0, last: bool = False
    ) -> list[Stored]:
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
        found: list[Stored] = []
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
                        found.append(_stamped(seq, msg.subject, meta.timestamp, msg.data))
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from exc
        finally:
            with contextlib.suppress(ServiceUnavailable), anyio.move_on_after(1.0, shield=True):
                await self._api(f"CONSUMER.DELETE.{stream}.{name}")
        return found

    # -- the state bucket ----------------------------------------------------------------------

    async def in_bucket(self, call: Callable[P, Awaitable[T]], *a: P.args, **k: P.kwargs) -> T:
        """``call`` on the state bucket, created again if it was deleted."""
        try:
            return await call(*a, **k)
        except Missing:
            await self.create_bucket()
            return await call(*a, **k)

    async def kv_get(self, name: str) -> Stored | None:
        """The state entry ``name`` (``None``: none)."""
        return await self.in_bucket(self.get, self.kv, last_by_subj=f"$KV.{self.bucket}.{name}")

    async def kv_put(self, name: str, value: State | Meta, revision: int) -> None:
        """Set the state entry ``name`` if its revision is still ``revision`` (0: none); a
        deleted key's :class:`State` is written as a delete marker."""
        headers = {EXPECT: str(revision)}
        if isinstance(value, State) and value.object is None:
            headers["KV-Operation"] = "DEL"
        subject = f"$KV.{self.bucket}.{name}"
        await self.in_bucket(self.publish, subject, PACK.encode(value), headers)

    async def kv_scan(self, pattern: str) -> list[Stored]:
        """The last entry of each name matching ``pattern``."""
        return await self.in_bucket(self.scan, self.kv, f"$KV.{self.bucket}.{pattern}", last=True)

    # -- the stream and its bucket -------------------------------------------------------------

    async def info(self) -> tuple[int, int]:
        """The stream's creation (µs) and last sequence, creating the stream if it is missing."""
        for attempt in range(ATTEMPTS):
            try:
                info = await self._api(f"STREAM.INFO.{self.stream}")
            except Missing:
                await self._create()
                continue
            start = _micros(info["created"])
            if info["config"]["subjects"] != [f"{self.stream}.*.*"]:
                # Another node is creating it: give it a moment, then finish the job.
                if attempt < ATTEMPTS // 2:
                    await anyio.sleep(0.05)
                else:
                    await self.create_bucket()
                    await self._open_stream(info["config"], start)
                continue
            return start, int(info["state"]["last_seq"])
        raise self.unavailable(f"stream {self.stream} could not be created")

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
        except ApiError as exc:
            if exc.err_code == _IN_USE:
                return  # another node created it
            raise
        await self.create_bucket(purge=True)  # no state of an earlier epoch
        await self._open_stream(info["config"], _micros(info["created"]))

    async def _open_stream(self, config: dict[str, Any], start: int) -> None:
        await self.purge(self.stream, seq=start + 1)
        await self._api(
            f"STREAM.UPDATE.{self.stream}", {**config, "subjects": [f"{self.stream}.*.*"]}
        )

    async def create_bucket(self, *, purge: bool = False) -> None:
        """The state bucket, unless it exists; emptied if ``purge``."""
        config = {  # what nats-py and the nats CLI create for a KV bucket with history 1
            "name": self.kv,
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
            await self._api(f"STREAM.CREATE.{self.kv}", config)
        except ApiError as exc:
            if exc.err_code != _IN_USE:
                raise
        if purge:
            await self.purge(self.kv)

    # -- following -----------------------------------------------------------------------------

    async def subscribe(self, start: int, heartbeat: float) -> Subscription:
        """An ordered push consumer on every record of the stream from sequence ``start``."""
        js = (await self._conn()).jetstream(timeout=self.timeout)
        try:
            sub = await js.subscribe(
                f"{self.stream}.*.*",
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=start),
                idle_heartbeat=heartbeat,
            )
        except nats.js.errors.NotFoundError as exc:
            raise Missing(f"the event log at {self.url} has no stream") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from exc
        self._followers.add(sub)
        return sub

    async def receive(self, sub: Subscription, wait: float) -> Stored | None:
        """The next message ``sub`` delivers within ``wait`` seconds (``None``: none came)."""
        try:
            msg = await sub.next_msg(timeout=wait)
            meta = msg.metadata
        except nats.errors.TimeoutError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise self.unavailable(exc) from exc
        return _stamped(meta.sequence.stream, msg.subject, meta.timestamp, msg.data)

    async def unsubscribe(self, sub: Subscription) -> None:
        self._followers.discard(sub)
        with contextlib.suppress(nats.errors.Error), anyio.move_on_after(1.0, shield=True):
            await sub.unsubscribe()
