"""The Hub: where application code publishes and where adapters get their answers.

Threads: every method that changes state is a plain (non-async) method, callable from the
event loop *and* from any other thread. Calls from a foreign thread are handed to the loop the
hub is bound to (``anyio.from_thread.run_sync`` with the loop's token), so the core's state and
the watchers' wake-ups are only ever touched by the loop's thread; before the hub is bound to a
loop, calls run directly under the hub's lock.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from .._core.backend import ABSENT, LogBackend, Retention, check_expectation
from .._core.errors import (
    AlreadyExists,
    ClientError,
    Conflict,
    Expired,
    InternalError,
    NotFound,
    ServiceUnavailable,
    UsageError,
)
from .._core.events import Entry, EventType, Frame
from .._core.log import DEFAULT_RETENTION_EVENTS, DEFAULT_RETENTION_SECONDS
from .._core.metrics import Metrics, NullMetrics
from .._core.objects import NameRule, object_rv
from .._core.params import Mode, WatchRequest, parse_request
from .._core.registry import DEFAULT_BUFFER_SIZE, CloseReason, SlowConsumerPolicy
from .._core.selectors import EVERYTHING
from .._core.session import DEFAULT_HEARTBEAT
from .._core.state import (
    DEFAULT_MAX_OBJECT_BYTES,
    HubState,
    StateSource,
    _stamp,
    object_key,
)
from .._core.wire.sse import DEFAULT_RETRY_MS
from .._core.writes import (
    Planned,
    Rules,
    plan_change,
    plan_create,
    plan_delete,
    plan_patch,
    plan_replace,
)
from .clock import Clock, SystemClock
from .replica import Replica
from .reply import Reply, error_reply, json_reply
from .stream import open_stream

if TYPE_CHECKING:
    from .websocket import Authorize, Socket, WebSocketLimits, WebSocketRequest

__all__ = [
    "DEFAULT_MAX_WATCH_SECONDS",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_WRITE_TIMEOUT",
    "Hub",
    "HubStatistics",
    "RequestInfo",
    "Resource",
]

T = TypeVar("T")
logger = logging.getLogger("watchroutes")

#: Longest a watch lasts before the server ends it (randomised to 1x-2x so clients do not
#: reconnect in step); kube-apiserver's --min-request-timeout default.
DEFAULT_MAX_WATCH_SECONDS: Final = 1800.0
#: A write that does not complete in this time ends the watch (a half-open or stuck peer).
DEFAULT_WRITE_TIMEOUT: Final = 10.0
#: How long shutdown waits for streams to end before cancelling them.
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
#: On a shared log, how long shutdown waits for this node to apply the writes it
#: acknowledged before it ends the streams with their final bookmarks.
SHUTDOWN_APPLY_WAIT: Final = 1.0
#: Seconds a watch refused for capacity (``max_watches``) is told to wait before retrying.
CAPACITY_RETRY_AFTER: Final = 2

Snapshot = Callable[[], Iterable[Any] | Awaitable[Iterable[Any]]]


class _Tracked(Protocol):
    """An open watch stream or WebSocket, as shutdown sees it."""

    @property
    def watches(self) -> int:
        """The watches it serves: 1 for a stream, a WebSocket's open subscriptions."""
        ...

    def on_shutdown(self) -> None: ...

    def cancel(self) -> None: ...


class HubStatistics(NamedTuple):
    """What :meth:`Hub.statistics` reports. ``active_watches`` counts the open HTTP watch
    streams and WebSocket subscriptions (as the ``watchroutes_active_watches`` gauge does);
    a long poll waiting for its answer is not counted."""

    head: int
    resources: int
    active_watches: int
    events_published: int
    cached_objects: int
    evicted_young: int
    #: Times this node reloaded a shared log because it had fallen behind its retention.
    follower_reloads: int = 0


class RequestInfo(NamedTuple):
    """What an adapter reads off a request, framework-neutral."""

    query: list[tuple[str, str]]
    accept: str | None = None
    last_event_id: str | None = None
    key: str | None = None


class Resource:
    """A watchable collection; ``hub.resource("orders", kind="Order")`` returns one."""

    def __init__(
        self,
        hub: Hub,
        name: str,
        *,
        kind: str,
        api_version: str,
        snapshot: Snapshot | None,
        cache: bool,
        slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
        names: NameRule = "subdomain",
    ) -> None:
        self.hub = hub
        self.slow_consumer = slow_consumer
        #: How object names (keys) are checked on every write (``watchroutes._core.objects``).
        self.names = names
        #: What every write of this resource is checked against (``watchroutes._core.writes``).
        self.rules = Rules(name, kind, names, hub.state.max_object_bytes)
        self.name = name
        self.kind = kind
        self.api_version = api_version
        self.list_kind = kind + "List"
        self.snapshot = snapshot
        if snapshot is not None:
            self.source = StateSource.CALLBACK
        else:
            self.source = StateSource.CACHE if cache else StateSource.NONE

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, kind={self.kind!r})"

    # Application-facing helpers; see Hub for the semantics.
    def publish(self, type: str | EventType, obj: Any, *, key: str | None = None) -> Any:  # noqa: A002
        return self.hub.publish(self.name, type, obj, key=key)

    def create(self, obj: Any) -> Any:
        return self.hub.create(self.name, obj)

    def replace(self, obj: Any, *, key: str | None = None) -> Any:
        return self.hub.replace(self.name, obj, key=key)

    def patch(self, key: str, patch: Any) -> Any:
        return self.hub.patch(self.name, key, patch)

    def delete(self, key: str, *, resource_version: str | None = None) -> Any:
        return self.hub.delete(self.name, key, resource_version=resource_version)

    def get(self, key: str) -> Any:
        return self.hub.get(self.name, key)

    def list(self) -> tuple[str, list[Any]]:
        return self.hub.list(self.name)

    async def aget(self, key: str) -> Any:
        return await self.hub.aget(self.name, key)

    async def alist(self) -> tuple[str, builtins.list[Any]]:
        return await self.hub.alist(self.name)

    def seed(self, objects: Iterable[Any]) -> int:
        return self.hub.seed(self.name, objects)

    async def apublish(self, type: str | EventType, obj: Any, *, key: str | None = None) -> Any:  # noqa: A002
        return await self.hub.apublish(self.name, type, obj, key=key)

    async def acreate(self, obj: Any) -> Any:
        return await self.hub.acreate(self.name, obj)

    async def areplace(self, obj: Any, *, key: str | None = None) -> Any:
        return await self.hub.areplace(self.name, obj, key=key)

    async def apatch(self, key: str, patch: Any) -> Any:
        return await self.hub.apatch(self.name, key, patch)

    async def adelete(self, key: str, *, resource_version: str | None = None) -> Any:
        return await self.hub.adelete(self.name, key, resource_version=resource_version)

    async def aseed(self, objects: Iterable[Any]) -> int:
        return await self.hub.aseed(self.name, objects)


class Hub:
    """Resources, their event log, subscriptions and clocks, for one application."""

    def __init__(
        self,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        buffer: int = DEFAULT_BUFFER_SIZE,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_watch_seconds: float = DEFAULT_MAX_WATCH_SECONDS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        retry_ms: int = DEFAULT_RETRY_MS,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        backend: LogBackend | str | None = None,
        handle_signals: bool = True,
        max_watches: int | None = None,
    ) -> None:
        if heartbeat <= 0 or write_timeout <= 0 or max_watch_seconds <= 0:
            raise ValueError("heartbeat, write_timeout and max_watch_seconds must be positive")
        if buffer < 1 or retention_events < 1 or retention_seconds <= 0:
            raise ValueError("buffer, retention_events and retention_seconds must be positive")
        self.clock: Clock = clock or SystemClock()
        #: Where the hub reports what it does (``watchroutes.prometheus.PrometheusMetrics``).
        self.metrics: Metrics = metrics or NullMetrics()
        self.heartbeat = heartbeat
        self.buffer = buffer
        self.max_watch_seconds = max_watch_seconds
        self.write_timeout = write_timeout
        self.shutdown_grace = shutdown_grace
        self.retry_ms = retry_ms
        self.state = HubState(
            now_us=self.clock.time_us(),
            retention_events=retention_events,
            retention_seconds=retention_seconds,
            young_window=2 * heartbeat,
            max_object_bytes=max_object_bytes,
        )
        self.resources: dict[str, Resource] = {}
        self._lock = threading.RLock()
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._streams: set[_Tracked] = set()
        self._streams_idle: anyio.Event | None = None
        self._random = random.Random()
        if isinstance(backend, str):
            from ..backends import from_url

            backend = None if backend in ("", "memory") else from_url(backend)
        #: The shared log this hub follows (``None``: its own log, in memory).
        self.backend: LogBackend | None = backend
        self._replica = None if backend is None else Replica(self, backend)
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Chain SIGINT/SIGTERM to :meth:`begin_shutdown` while started (see ``signals``).
        self.handle_signals = handle_signals
        if max_watches is not None and max_watches < 1:
            raise ValueError("max_watches must be positive (or None: no limit)")
        #: The most watches this process serves at once (``None``: no limit). Under a
        #: threaded WSGI server each watch holds a thread: keep it below the thread count so
        #: plain requests still find one. Past it a new watch gets a retryable 503.
        self.max_watches = max_watches

    # -- set-up ------------------------------------------------------------------------------

    def resource(
        self,
        name: str,
        *,
        kind: str | None = None,
        api_version: str = "v1",
        snapshot: Snapshot | None = None,
        cache: bool = True,
        retention_events: int | None = None,
        retention_seconds: float | None = None,
        slow_consumer: str = "disconnect",
        names: NameRule = "subdomain",
    ) -> Resource:
        """Register a watchable resource. ``kind`` defaults to the name, singular-cased
        (``orders`` -> ``Order``); ``snapshot`` replaces the watch cache as state source;
        ``slow_consumer`` is the policy for a watcher past its buffer: ``"disconnect"`` (it
        resumes) or ``"coalesce"`` (newer events replace queued ones of the same key);
        ``names`` the rule every object name (key) must follow: ``"subdomain"`` (Kubernetes'
        DNS subdomain, the default), ``"segment"`` (any safe URL path segment) or a function
        returning what is wrong with a name (``None``: nothing)."""
        if not (callable(names) or names in ("subdomain", "segment")):
            raise UsageError(f"names must be 'subdomain', 'segment' or a function, not {names!r}")
        if not name or "/" in name:
            raise UsageError("a resource name is a non-empty string without '/'")
        try:
            policy = SlowConsumerPolicy(slow_consumer)
        except ValueError:
            raise UsageError(
                f"slow_consumer must be 'disconnect' or 'coalesce', not {slow_consumer!r}"
            ) from None
        with self._lock:
            self.state.add_resource(name, max_events=retention_events, max_age=retention_seconds)
            kind = kind or (name[:-1] if name.endswith("s") else name).capitalize()
            res = Resource(
                self,
                name,
                kind=kind,
                api_version=api_version,
                snapshot=snapshot,
                cache=cache,
                slow_consumer=policy,
                names=names,
            )
            self.resources[name] = res
            return res

    def bind(self) -> None:
        """Attach the hub to the running event loop (done on each use from async code).

        A hub serves one event loop at a time; the most recent loop that used it wins, so
        a hub kept across two ``anyio.run`` calls follows the second.
        """
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()

    async def __aenter__(self) -> Hub:
        """Bind to the running loop and, with a shared backend, start following it (the
        first load is awaited up to 5 s; past that the hub answers 503 until it loads)."""
        self.bind()
        if self._replica is not None and self._task_group is None:
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._task_group = tg
            await self._replica.start(tg)
        from .lifecycle import hub_started

        hub_started(self)  # chain the exit signals; warn about one log per worker
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        from .lifecycle import hub_stopping

        hub_stopping(self)  # give back the signal handlers
        await self.aclose()
        tg, self._task_group = self._task_group, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self.backend is not None:
            await self.backend.close()

    @property
    def available(self) -> bool:
        """False while a shared log is unreachable (watches and writes get 503)."""
        return self._replica is None or self._replica.available

    # -- thread routing ----------------------------------------------------------------------

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        token = self._token
        if token is not None and threading.get_ident() != self._loop_thread:
            try:
                return anyio.from_thread.run_sync(self._locked, func, *args, token=token)
            except anyio.RunFinishedError:
                self._token = self._loop_thread = None
        return self._locked(func, *args)

    def _locked(self, func: Callable[..., T], *args: Any) -> T:
        with self._lock:  # readers in other threads (get, list, statistics) take it too
            return func(*args)

    def _resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            raise NotFound(f"resource {name[:100]!r} not found") from None

    # -- writes --------------------------------------------------------------------------------
    #
    # One path for every write: the rules plan it (``_core.writes``, without I/O), then a log
    # commits it — this hub's in-memory log under the lock (on the loop's thread), or the
    # shared log in one round trip. The plain methods work from any thread; on a shared log,
    # the event loop's own thread must await the ``a``-methods (a plain call there would
    # block the loop that the append needs).

    def _rules(self, resource: str) -> Rules:
        return self._resource(resource).rules

    def _commit_local(self, planned: Planned) -> Any:
        """Commit to the in-memory log: check the expectation and append, atomically."""
        write = planned.write
        state = self.state
        current = state.get(write.resource, write.key)
        check_expectation(write, None if current is None else current.rv)
        obj = planned.object
        if write.type == EventType.DELETED.value:
            assert current is not None  # a deletion expects the key present
            obj = current.object
        clock = self.clock
        now = clock.now()
        entry = state.append(
            write.resource,
            EventType(write.type),
            obj,
            key=write.key,
            now=now,
            now_us=clock.time_us(),
        )
        state.log(write.resource).compact(now)
        self.metrics.events_published(write.resource, 1)
        return entry.object

    async def _commit_shared(self, planned: Planned) -> Any:
        """Commit to the shared log; the answer is what the log stored."""
        replica = self._replica
        assert replica is not None
        write = planned.write
        log = self.state.log(write.resource)
        try:
            stored = await replica.backend.append(write, Retention(log.max_events, log.max_age))
        except ServiceUnavailable as exc:
            # The connection failed somewhere between sending the change and reading the
            # answer: it may have been appended. Say so; never guess (protocol.md §3.5).
            logger.warning("write of %s %r: outcome unknown: %s", write.resource, write.key, exc)
            raise ServiceUnavailable(
                f"the event log became unavailable during this write; it may or may not have "
                f'been applied: read {write.resource} "{write.key[:100]}" (its '
                f"metadata.resourceVersion) before retrying",
                retry_after=1,
            ) from None
        rv = stored.rv
        replica.written = max(replica.written, rv)
        self.metrics.events_published(write.resource, 1)
        # No need to wait for this node's follower: every read syncs to the log's head first
        # (protocol.md §3.1), so the writer reads its write on any node. A deletion answers the
        # object the log removed, as the log returned it (never this node's cache).
        obj = planned.object
        return _stamp(obj if obj is not None else msgspec.json.decode(stored.object), rv)

    def _commit(self, planned: Planned) -> Any:
        if self._replica is None:
            return self._call(self._commit_local, planned)
        return self._shared(self._commit_shared, planned)

    async def _acommit(self, planned: Planned) -> Any:
        if self._replica is None:
            return self._call(self._commit_local, planned)
        return await self._commit_shared(planned)

    def _plan_publish(
        self, resource: str, etype: str | EventType, obj: Any, key: str | None
    ) -> Planned:
        name = object_key(obj) if key is None else key
        return plan_change(self._rules(resource), EventType(etype), name, obj)

    def publish(
        self,
        resource: str,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> Any:
        """Record one change (``ADDED``, ``MODIFIED`` or ``DELETED``) and deliver it.

        Returns the stored object, stamped with its ``metadata.resourceVersion`` when it
        follows the object convention. From any thread; on a shared log, the event loop's
        thread awaits :meth:`apublish` instead.
        """
        return self._commit(self._plan_publish(resource, type, obj, key))

    def create(self, resource: str, obj: Any) -> Any:
        """Add a new object; ``AlreadyExists`` (409) if its key is taken."""
        return self._commit(plan_create(self._rules(resource), obj))

    def replace(self, resource: str, obj: Any, *, key: str | None = None) -> Any:
        """Replace an existing object; ``NotFound`` if missing, ``Conflict`` on a stale rv."""
        return self._commit(plan_replace(self._rules(resource), obj, key))

    def patch(self, resource: str, key: str, patch: Any) -> Any:
        """Apply a JSON merge patch (RFC 7386) to an existing object."""
        if self._replica is None:
            return self._call(self._patch_local, resource, key, patch)
        return self._shared(self.apatch, resource, key, patch)

    def _patch_local(self, resource: str, key: str, patch: Any) -> Any:
        current = self._current(resource, key)  # read and commit under one lock: no race
        planned = plan_patch(self._rules(resource), key, patch, current.rv, current.object)
        return self._commit_local(planned)

    def delete(self, resource: str, key: str, *, resource_version: str | None = None) -> Any:
        """Delete an object; returns it stamped with the deletion's rv."""
        return self._commit(plan_delete(self._rules(resource), key, resource_version))

    def _current(self, resource: str, key: str) -> Entry:
        entry = self.state.get(resource, key)
        if entry is None:
            raise NotFound(f'{resource} "{key[:100]}" not found')
        return entry

    def seed(self, resource: str, objects: Iterable[Any]) -> int:
        """Load start-up state into the watch cache without emitting events."""
        if self._replica is not None:
            raise UsageError("with a shared log, seed with await resource.aseed(objects)")
        rules = self._rules(resource)
        objects = list(objects)
        for obj in objects:
            plan_change(rules, EventType.ADDED, object_key(obj), obj)  # the same rules
        clock = self.clock
        with self._lock:
            return self.state.seed(resource, objects, now=clock.now(), now_us=clock.time_us())

    def _shared(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run an async write from a plain call: only from a thread other than the loop's."""
        token = self._token
        if token is None or threading.get_ident() == self._loop_thread:
            name = getattr(func, "__name__", "write").removeprefix("_commit_shared")
            raise UsageError(
                "a hub with a shared log writes asynchronously on its event loop: "
                f"use await hub.a{name or 'publish'}(...) there (the plain methods work "
                "from any other thread)"
            )
        return anyio.from_thread.run(functools.partial(func, *args, **kwargs), token=token)

    async def apublish(
        self,
        resource: str,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> Any:
        """:meth:`publish`, awaitable: on a shared log it returns once the log appended the
        change (on any log, the answer is the object as stored)."""
        return await self._acommit(self._plan_publish(resource, type, obj, key))

    async def acreate(self, resource: str, obj: Any) -> Any:
        return await self._acommit(plan_create(self._rules(resource), obj))

    async def areplace(self, resource: str, obj: Any, *, key: str | None = None) -> Any:
        return await self._acommit(plan_replace(self._rules(resource), obj, key))

    async def apatch(self, resource: str, key: str, patch: Any) -> Any:
        replica = self._replica
        if replica is None:
            return self._call(self._patch_local, resource, key, patch)
        rules = self._rules(resource)
        given = object_rv(patch) if isinstance(patch, Mapping) else None
        for _ in range(5):  # another node changed the object between our read and our write
            await replica.sync(None)
            current = self._current(resource, key)
            planned = plan_patch(rules, key, patch, current.rv, current.object)
            try:
                return await self._commit_shared(planned)
            except Conflict:
                if given is not None:
                    raise
        raise Conflict(f'{resource} "{key[:100]}" keeps changing; try again', retry_after=1)

    async def adelete(self, resource: str, key: str, *, resource_version: str | None = None) -> Any:
        return await self._acommit(plan_delete(self._rules(resource), key, resource_version))

    async def aseed(self, resource: str, objects: Iterable[Any]) -> int:
        """Load start-up state: with a shared log, each object not there yet is created
        (several nodes seeding the same objects create each once); returns how many."""
        if self._replica is None:
            return self.seed(resource, objects)
        rules = self._rules(resource)
        count = 0
        for obj in objects:
            planned = plan_change(rules, EventType.ADDED, object_key(obj), obj, ABSENT)
            with contextlib.suppress(AlreadyExists):
                await self._commit_shared(planned)
                count += 1
        return count

    async def _sync(self, parsed: WatchRequest) -> None:
        """Consistent reads across nodes (DESIGN 3.1); nothing to do on an in-memory log.
        ``resourceVersion=0`` does not ask the log, but still sees this node's own writes."""
        replica = self._replica
        if replica is None:
            return
        if parsed.resource_version == 0:
            await replica.own_writes()
        else:
            await replica.sync(parsed.resource_version)

    def _end_watches(self, reason: CloseReason) -> None:
        self.state.end_watches(reason)
        for stream in list(self._streams):
            stream.on_shutdown()

    # -- reads ---------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.state.head

    def get(self, resource: str, key: str) -> Any:
        """The current object in this node's state, or ``NotFound``. With a shared log that is
        as far as this node has applied it: :meth:`aget` reads at the log's head."""
        with self._lock:
            self._resource(resource)
            return self._current(resource, key).object

    def list(self, resource: str) -> tuple[str, list[Any]]:
        """The rv and every object of ``resource`` in this node's state, consistent with each
        other (with a shared log, :meth:`alist` reads at the log's head)."""
        with self._lock:
            self._resource(resource)
            head, items = self.state.snapshot(resource, EVERYTHING)
            return str(head), items

    async def aget(self, resource: str, key: str) -> Any:
        """The current object, or ``NotFound``, as of at least the shared log's head: it sees
        every write acknowledged before the call, on whichever node (DESIGN 3.1)."""
        await self._sync_head()
        return self.get(resource, key)

    async def alist(self, resource: str) -> tuple[str, builtins.list[Any]]:
        """:meth:`list` as of at least the shared log's head, like :meth:`aget`."""
        await self._sync_head()
        return self.list(resource)

    async def _sync_head(self) -> None:
        if self._replica is not None:
            await self._replica.sync(None)

    def statistics(self) -> HubStatistics:
        with self._lock:
            state = self.state
            return HubStatistics(
                head=state.head,
                resources=len(state.logs),
                active_watches=sum(tracked.watches for tracked in self._streams),
                events_published=state.published,
                cached_objects=sum(len(log.state) for log in state.logs.values()),
                evicted_young=sum(log.evicted_young for log in state.logs.values()),
                follower_reloads=0 if self._replica is None else self._replica.reloads,
            )

    # -- requests ------------------------------------------------------------------------------

    async def answer(self, resource: str, request: RequestInfo, *, list_: bool = True) -> Reply:
        """The complete answer to a GET of a watchable route (DESIGN 3.1)."""
        reply = await self.answer_watch(resource, request)
        if reply is not None:
            return reply
        return await self.answer_list(resource, request) if list_ else Reply(200, [])

    async def answer_watch(self, resource: str, request: RequestInfo) -> Reply | None:
        """The answer when ``request`` is a watch; ``None`` when it is a plain GET."""
        self.bind()
        mode = Mode.LIST
        try:
            res = self._resource(resource)
            parsed = parse_request(
                request.query,
                accept=request.accept,
                last_event_id=request.last_event_id,
                key=request.key,
            )
            mode = parsed.mode
            if mode is Mode.LIST:
                return None
            if self.max_watches is not None and len(self.state.registry) >= self.max_watches:
                raise ServiceUnavailable(
                    "this server is serving as many watches as it can; try again",
                    retry_after=CAPACITY_RETRY_AFTER,
                )
            if mode is Mode.LONGPOLL:
                from .longpoll import answer_longpoll

                return await answer_longpoll(self, res, parsed)
            return await open_stream(self, res, parsed)
        except ClientError as exc:
            self.metrics.client_error(exc.reason)
            return error_reply(exc, mode, retry_ms=self.retry_ms)

    async def serve_websocket(
        self,
        resource: str,
        request: WebSocketRequest,
        socket: Socket,
        *,
        authorize: Authorize | None = None,
        limits: WebSocketLimits | None = None,
    ) -> None:
        """Run a WebSocket watch (DESIGN 4) on ``socket`` from its handshake to its close."""
        from .websocket import serve_websocket

        self.bind()
        try:
            res = self._resource(resource)
        except ClientError:
            await socket.accept(None)
            await socket.close(4404, f"resource {resource[:100]!r} not found")
            return
        await serve_websocket(self, res, request, socket, authorize=authorize, limits=limits)

    async def answer_list(self, resource: str, request: RequestInfo) -> Reply:
        """The library's list body (Kubernetes style) or, for a key, the object.

        The objects come from the resource's state source: the watch cache, or the
        snapshot callback (with the rv read before calling it, as for a watch).
        """
        try:
            res = self._resource(resource)
            parsed = parse_request(request.query, key=request.key)
            await self._sync(parsed)
            if res.source is StateSource.CALLBACK:
                head = self.head
                self._check_not_ahead(parsed, head)
                items = await self.snapshot_objects(res, parsed)
            else:
                with self._lock:
                    head, items = self._list_checked(res, parsed)
            if request.key is not None:
                if not items:
                    raise NotFound(f'{resource} "{request.key[:100]}" not found')
                return json_reply(200, items[0])
            body = {
                "kind": res.list_kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(head)},
                "items": items,
            }
            return json_reply(200, body)
        except ClientError as exc:
            self.metrics.client_error(exc.reason)
            return error_reply(exc, Mode.LIST, retry_ms=self.retry_ms)

    def _check_not_ahead(self, parsed: WatchRequest, head: int) -> None:
        rv = parsed.resource_version
        if rv and rv > head:  # "at least rv": this log is the truth, so rv never existed
            raise Expired(f"resource version {rv} is newer than this log's head ({head})")

    def _list_checked(self, res: Resource, parsed: WatchRequest) -> tuple[int, builtins.list[Any]]:
        self._check_not_ahead(parsed, self.head)
        return self.state.snapshot(res.name, parsed.filter)

    def end_at(self, timeout_seconds: int | None) -> float:
        limit = self.max_watch_seconds * (1.0 + self._random.random())
        if timeout_seconds:
            limit = min(limit, float(timeout_seconds))
        return self.clock.now() + limit

    async def snapshot_objects(self, res: Resource, parsed: WatchRequest) -> builtins.list[Any]:
        """The application snapshot callback's objects that match the request's selectors."""
        assert res.snapshot is not None
        try:
            result = res.snapshot()
            objects = await result if inspect.isawaitable(result) else result
            flt = parsed.filter
            return [obj for obj in objects if flt.everything or flt.matches(obj)]
        except Exception:
            logger.exception("snapshot callback of %r failed", res.name)
            raise InternalError("the snapshot of the current state failed") from None

    async def snapshot_frames(self, res: Resource, parsed: WatchRequest) -> builtins.list[Frame]:
        """Initial frames from the snapshot callback: ``ADDED`` without id or rv."""
        return [
            Frame(EventType.ADDED, obj, None) for obj in await self.snapshot_objects(res, parsed)
        ]

    # -- streams and shutdown --------------------------------------------------------------------

    def _track(self, stream: _Tracked) -> None:
        self._streams.add(stream)

    def _untrack(self, stream: _Tracked) -> None:
        self._streams.discard(stream)
        if not self._streams and self._streams_idle is not None:
            self._streams_idle.set()

    @property
    def closing(self) -> bool:
        return self.state.closing

    def begin_shutdown(self) -> None:
        """Refuse new watches and end every open stream resumably (final bookmark, then end).

        Callable from the event loop (a coroutine, a callback) and from any other thread;
        not from a ``signal.signal`` handler, which may interrupt the loop's thread in the
        middle of a change (use ``loop.add_signal_handler`` or a thread). See :meth:`aclose`
        to wait for the streams to end.
        """
        self._call(self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        self.state.closing = True
        self._end_watches(CloseReason.SHUTDOWN)

    async def aclose(self) -> None:
        """Shut down: end every stream, wait up to ``shutdown_grace``, cancel what remains.

        On a shared log the streams end once this node has applied the writes it
        acknowledged (at most :data:`SHUTDOWN_APPLY_WAIT`), so each final bookmark is at
        least at the newest version this node gave a client.
        """
        self.bind()
        replica = self._replica
        if replica is not None and replica.available and not self.state.closing:
            with anyio.move_on_after(SHUTDOWN_APPLY_WAIT):
                await replica.own_writes()
        self.begin_shutdown()
        if self._streams:
            self._streams_idle = anyio.Event()
            with anyio.move_on_after(self.shutdown_grace):
                await self._streams_idle.wait()
            for stream in list(self._streams):
                stream.cancel()
