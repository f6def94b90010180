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
import logging
import threading
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from .._core.access import Access, Cors, WatchLimits
from .._core.backend import ABSENT, LogBackend, Retention, check_expectation
from .._core.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    ServiceUnavailable,
    UsageError,
)
from .._core.events import Entry, EventType
from .._core.log import DEFAULT_RETENTION_EVENTS, DEFAULT_RETENTION_SECONDS
from .._core.metrics import Metrics, declare_resource
from .._core.objects import NameRule, object_rv
from .._core.registry import DEFAULT_BUFFER_SIZE, CloseReason, SlowConsumerPolicy
from .._core.selectors import EVERYTHING
from .._core.session import DEFAULT_HEARTBEAT
from .._core.state import (
    DEFAULT_MAX_OBJECT_BYTES,
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
from . import answers
from .answers import RequestInfo
from .clock import Clock
from .node import (
    DEFAULT_MAX_WATCH_SECONDS,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_WRITE_TIMEOUT,
    SHUTDOWN_APPLY_WAIT,
    Node,
    ResourceSpec,
    Snapshot,
)
from .replica import Replica
from .reply import Reply

if TYPE_CHECKING:
    from .reply import Reply
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
    #: Frames a publish wrote to an idle watch's connection itself (the direct write path),
    #: without waking the watch's task.
    direct_writes: int = 0


class Resource(ResourceSpec):
    """A watchable collection; ``hub.resource("orders", kind="Order")`` returns one."""

    def __init__(self, hub: Hub, name: str, **spec: Any) -> None:
        super().__init__(name, max_object_bytes=hub.state.max_object_bytes, **spec)
        self.hub = hub

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

    def publish_in(
        self,
        conn: Any,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> int:
        return self.hub.publish_in(conn, self.name, type, obj, key=key)

    async def apublish_in(
        self,
        conn: Any,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> int:
        return await self.hub.apublish_in(conn, self.name, type, obj, key=key)

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


class Hub(Node):
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
        access: Access | None = None,
        watch_limits: WatchLimits | None = None,
        cors: Cors | None = None,
    ) -> None:
        super().__init__(
            heartbeat=heartbeat,
            buffer=buffer,
            retention_events=retention_events,
            retention_seconds=retention_seconds,
            max_watch_seconds=max_watch_seconds,
            write_timeout=write_timeout,
            shutdown_grace=shutdown_grace,
            retry_ms=retry_ms,
            max_object_bytes=max_object_bytes,
            clock=clock,
            metrics=metrics,
            max_watches=max_watches,
            access=access,
            watch_limits=watch_limits,
            cors=cors,
        )
        self.resources: dict[str, Resource] = {}
        if isinstance(backend, str):
            from ..backends import from_url

            backend = None if backend in ("", "memory") else from_url(backend)
        #: The shared log this hub follows (``None``: its own log, in memory).
        self.backend: LogBackend | None = backend
        self._replica = None if backend is None else Replica(self, backend)
        self.follower = self._replica
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Chain SIGINT/SIGTERM to :meth:`begin_shutdown` while started (see ``signals``).
        self.handle_signals = handle_signals

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
        access: Access | None = None,
        cors: Cors | None = None,
    ) -> Resource:
        """Register a watchable resource. ``kind`` defaults to the name, singular-cased
        (``orders`` -> ``Order``); ``snapshot`` replaces the watch cache as state source;
        ``slow_consumer`` is the policy for a watcher past its buffer: ``"disconnect"`` (it
        resumes) or ``"coalesce"`` (newer events replace queued ones of the same key);
        ``names`` the rule every object name (key) must follow: ``"subdomain"`` (Kubernetes'
        DNS subdomain, the default), ``"segment"`` (any safe URL path segment) or a function
        returning what is wrong with a name (``None``: nothing); ``access`` who may list
        and watch it (the hub's ``access`` by default; see ``watchroutes.Access``)."""
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
        with self.lock:
            if name in self.specs:
                raise UsageError(f"resource {name!r} is already registered")
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
                access=access,
                cors=cors,
            )
            self.resources[name] = res
            self.specs[name] = res
        declare_resource(self.metrics, name)  # its metric series exist (at 0) from now on
        return res

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
        try:
            stored = await replica.backend.append(write, self._retention(write.resource))
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
        if self._replica is None:  # (from a thread: applied there, the loop only woken)
            return self.apply(self._commit_local, planned)
        return self._shared(self._commit_shared, planned)

    async def _acommit(self, planned: Planned) -> Any:
        if self._replica is None:
            return self.call(self._commit_local, planned)
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
            return self.call(self._patch_local, resource, key, patch)
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
        with self.lock:
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

    def publish_in(
        self,
        conn: Any,
        resource: str,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> int:
        """Append a change inside the caller's open transaction on ``conn`` (a synchronous
        psycopg connection: Django's inside ``transaction.atomic()``), so it commits or rolls
        back with the app's own change: the outbox of ``docs/postgres.md``. The hub's write
        rules apply as for :meth:`publish`; every node's watchers get it at the commit.
        Returns its rv (final once committed). Needs the PostgreSQL log."""
        planned = self._plan_publish(resource, type, obj, key)
        log = self._outbox("publish_in")
        rv: int = log.append_in_sync(conn, planned.write, self._retention(resource))
        return rv

    async def apublish_in(
        self,
        conn: Any,
        resource: str,
        type: str | EventType,  # noqa: A002
        obj: Any,
        *,
        key: str | None = None,
    ) -> int:
        """:meth:`publish_in` on a psycopg ``AsyncConnection``."""
        planned = self._plan_publish(resource, type, obj, key)
        log = self._outbox("apublish_in")
        rv: int = await log.append_in(conn, planned.write, self._retention(resource))
        return rv

    def _outbox(self, method: str) -> Any:
        backend = None if self._replica is None else self._replica.backend
        if backend is None or not hasattr(backend, "append_in_sync"):
            raise UsageError(
                f"{method} appends inside your database transaction: it needs the PostgreSQL "
                "log (Hub(backend='postgresql://...'))"
            )
        return backend

    def _retention(self, resource: str) -> Retention:
        log = self.state.log(resource)
        return Retention(log.max_events, log.max_age)

    async def acreate(self, resource: str, obj: Any) -> Any:
        return await self._acommit(plan_create(self._rules(resource), obj))

    async def areplace(self, resource: str, obj: Any, *, key: str | None = None) -> Any:
        return await self._acommit(plan_replace(self._rules(resource), obj, key))

    async def apatch(self, resource: str, key: str, patch: Any) -> Any:
        replica = self._replica
        if replica is None:
            return self.call(self._patch_local, resource, key, patch)
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

    # -- reads ---------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.state.head

    def get(self, resource: str, key: str) -> Any:
        """The current object in this node's state, or ``NotFound``. With a shared log that is
        as far as this node has applied it: :meth:`aget` reads at the log's head."""
        with self.lock:
            self._resource(resource)
            return self._current(resource, key).object

    def list(self, resource: str) -> tuple[str, list[Any]]:
        """The rv and every object of ``resource`` in this node's state, consistent with each
        other (with a shared log, :meth:`alist` reads at the log's head)."""
        with self.lock:
            self._resource(resource)
            head, items = self.state.snapshot(resource, EVERYTHING)
            return str(head), items

    async def aget(self, resource: str, key: str) -> Any:
        """The current object, or ``NotFound``, as of at least the shared log's head: it sees
        every write acknowledged before the call, on whichever node (protocol.md §3.1)."""
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
        with self.lock:
            state = self.state
            return HubStatistics(
                head=state.head,
                resources=len(state.logs),
                active_watches=sum(tracked.watches for tracked in self.streams),
                events_published=state.published,
                cached_objects=sum(len(log.state) for log in state.logs.values()),
                evicted_young=sum(log.evicted_young for log in state.logs.values()),
                follower_reloads=0 if self._replica is None else self._replica.reloads,
                direct_writes=self.direct_writes,
            )

    # -- requests (the adapter contract: see watchroutes.adapters) ----------------------------

    async def answer(self, resource: str, request: RequestInfo, *, list_: bool = True) -> Reply:
        """The complete answer to a GET of a watchable route (protocol.md §3.1)."""
        return await answers.answer(self, resource, request, list_=list_)

    async def answer_watch(self, resource: str, request: RequestInfo) -> Reply | None:
        """The answer when ``request`` is a watch; ``None`` when it is a plain GET."""
        return await answers.answer_watch(self, resource, request)

    async def answer_list(self, resource: str, request: RequestInfo) -> Reply:
        """The library's list body (Kubernetes style) or, for a key, the object."""
        return await answers.answer_list(self, resource, request)

    def answer_preflight(self, resource: str, request: RequestInfo) -> Reply:
        """The answer to a CORS preflight (``OPTIONS``) of a watchable route."""
        return answers.answer_preflight(self, resource, request)

    async def serve_websocket(
        self,
        resource: str,
        request: WebSocketRequest,
        socket: Socket,
        *,
        authorize: Authorize | None = None,
        limits: WebSocketLimits | None = None,
        resources: Collection[str] = (),
    ) -> None:
        """Run a WebSocket watch (protocol.md §4) on ``socket`` from its handshake to its
        close; its ``watch`` messages may name ``resource`` and the other ``resources``
        listed (each guarded by its own ``Access``), no other."""
        await answers.serve_websocket(
            self,
            resource,
            request,
            socket,
            authorize=authorize,
            limits=limits,
            resources=resources,
        )

    def revoke(self, principal: str) -> int:
        """End every watch of ``principal`` now (logout, a permission change): a final
        bookmark, then a 403 ``access revoked`` (WebSocket: close 4403). Callable from any
        thread; returns how many watches it ended."""
        return self.call(self._revoke, principal)

    def _revoke(self, principal: str) -> int:
        self.revocations[principal] = self.revocations.get(principal, 0) + 1
        state = self.state
        head = state.head
        ended = 0
        for sub in state.registry.all():
            if sub.principal == principal and sub.closed is None:
                sub.close(CloseReason.REVOKED, head)
                ended += 1
        for stream in list(self.streams):  # a WebSocket acting for it closes, subscribed or not
            stream.on_revoke(principal)
        return ended

    def _resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            raise NotFound(f"resource {name[:100]!r} not found") from None

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
        await self.wait_streams(self.shutdown_grace)
