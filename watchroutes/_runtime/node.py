"""A hub as its drivers see it: one process's state, lock, clock, settings and open watches.

The drivers (the stream pump, long poll, WebSocket, the blocking driver, the shared log's
follower, the signal chaining) import this module and never ``hub``, which is the
application's facade over a :class:`Node` (``Hub`` is a ``Node``): so ``_runtime`` has no
import cycle, and what a driver may use is written down here.

Threads: the node's state is changed only under :attr:`Node.lock`, and only by the event
loop's thread or under the lock by :meth:`Node.call` (which hands a change made in another
thread to the loop the node is bound to, ``anyio.from_thread.run_sync`` with its token).
Drivers that run outside the loop (the blocking driver) read and step their sessions under
the lock too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._core.access import Access, Cors, WatchLimits
from .._core.errors import InternalError, NotFound
from .._core.events import EventType, Frame
from .._core.log import DEFAULT_RETENTION_EVENTS, DEFAULT_RETENTION_SECONDS
from .._core.metrics import Metrics, NullMetrics
from .._core.objects import NameRule
from .._core.params import WatchRequest
from .._core.registry import DEFAULT_BUFFER_SIZE, CloseReason, SlowConsumerPolicy
from .._core.session import DEFAULT_HEARTBEAT
from .._core.state import DEFAULT_MAX_OBJECT_BYTES, HubState, StateSource
from .._core.websocket import RateLimiter
from .._core.wire.sse import DEFAULT_RETRY_MS
from .._core.writes import Rules
from .clock import Clock, SystemClock

__all__ = [
    "DEFAULT_MAX_WATCH_SECONDS",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_WRITE_TIMEOUT",
    "SHUTDOWN_APPLY_WAIT",
    "Follower",
    "Node",
    "ResourceSpec",
    "Snapshot",
    "Tracked",
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

Snapshot = Callable[[], Iterable[Any] | Awaitable[Iterable[Any]]]


@dataclass(eq=False)
class ResourceSpec:
    """A watchable collection as the drivers see it (``Resource`` adds the app's methods)."""

    name: str
    kind: str
    api_version: str = "v1"
    snapshot: Snapshot | None = None
    cache: bool = True
    slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT
    #: How object names (keys) are checked on every write (``watchroutes._core.objects``).
    names: NameRule = "subdomain"
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    #: Who may list and watch it (``None``: the hub's default, see ``Node.access``).
    access: Access | None = None
    #: Cross-origin access to its routes (``None``: the hub's, see ``Node.cors``).
    cors: Cors | None = None
    list_kind: str = field(init=False)
    source: StateSource = field(init=False)
    #: What every write of this resource is checked against (``watchroutes._core.writes``).
    rules: Rules = field(init=False)

    def __post_init__(self) -> None:
        self.list_kind = self.kind + "List"
        if self.snapshot is not None:
            self.source = StateSource.CALLBACK
        else:
            self.source = StateSource.CACHE if self.cache else StateSource.NONE
        self.rules = Rules(self.name, self.kind, self.names, self.max_object_bytes)


class Tracked(Protocol):
    """An open watch stream or WebSocket, as shutdown sees it."""

    @property
    def watches(self) -> int:
        """The watches it serves: 1 for a stream, a WebSocket's open subscriptions."""
        ...

    def on_shutdown(self) -> None: ...

    def on_revoke(self, principal: str) -> None:
        """``principal``'s access was revoked (a WebSocket acting for it closes 4403)."""
        ...

    def cancel(self) -> None: ...


class Follower(Protocol):
    """A node's link to a shared log, as requests need it (``replica.Replica``)."""

    available: bool

    async def sync(self, rv: int | None) -> None: ...

    async def own_writes(self) -> None: ...


class Corked(Protocol):
    """A watch whose direct-path frames wait for the end of the loop's turn."""

    def flush_direct(self) -> None: ...


class _OnLoop:
    """A wake-up that runs on the loop (see :meth:`Node.on_loop`)."""

    __slots__ = ("_func", "_node")

    def __init__(self, node: Node, func: Callable[[], None]) -> None:
        self._node = node
        self._func = func

    def __call__(self) -> None:
        deferred = self._node._deferred
        if deferred is None:
            self._func()
        else:
            deferred.append(self._func)


def _run_all(funcs: list[Callable[[], None]]) -> None:
    for func in funcs:
        func()


def _poster() -> Callable[..., object] | None:
    """The running loop's thread-safe "call this soon" (asyncio or trio)."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        pass
    try:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    except (ImportError, RuntimeError):
        return None


class Node:
    """One process's share of a hub: state, lock, clock, metrics, settings, open watches."""

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
        max_watches: int | None = None,
        access: Access | None = None,
        watch_limits: WatchLimits | None = None,
        cors: Cors | None = None,
    ) -> None:
        if heartbeat <= 0 or write_timeout <= 0 or max_watch_seconds <= 0:
            raise ValueError("heartbeat, write_timeout and max_watch_seconds must be positive")
        if buffer < 1 or retention_events < 1 or retention_seconds <= 0:
            raise ValueError("buffer, retention_events and retention_seconds must be positive")
        if max_watches is not None and max_watches < 1:
            raise ValueError("max_watches must be positive (or None: no limit)")
        self.clock: Clock = clock or SystemClock()
        #: Where the hub reports what it does (``watchroutes.prometheus.PrometheusMetrics``).
        self.metrics: Metrics = metrics or NullMetrics()
        self.heartbeat = heartbeat
        self.buffer = buffer
        self.max_watch_seconds = max_watch_seconds
        self.write_timeout = write_timeout
        self.shutdown_grace = shutdown_grace
        self.retry_ms = retry_ms
        #: The most watches this process serves at once (``None``: no limit). Under a
        #: threaded WSGI server each watch holds a thread: keep it below the thread count so
        #: plain requests still find one. Past it a new watch gets a retryable 503.
        self.max_watches = max_watches
        #: The default authentication hooks of every resource without its own.
        self.access = access
        #: Cross-origin access to the watch routes (``None``: no CORS header is sent).
        self.cors = cors
        #: Watches per principal, per client address, and new watches per second.
        self.watch_limits = watch_limits
        #: Open watches by ``principal:<name>`` / ``address:<addr>`` (``guard``).
        self.watch_counts: dict[str, int] = {}
        #: New-watch rate buckets by principal name (``guard``).
        self.watch_rates: dict[str, RateLimiter] = {}
        #: How often each principal was revoked: an admission made before a revocation is
        #: refused when its watch opens after it (``guard``).
        self.revocations: dict[str, int] = {}
        self.state = HubState(
            now_us=self.clock.time_us(),
            retention_events=retention_events,
            retention_seconds=retention_seconds,
            young_window=2 * heartbeat,
            max_object_bytes=max_object_bytes,
        )
        self.specs: dict[str, ResourceSpec] = {}
        #: Held for every change of :attr:`state` and every session step.
        self.lock = threading.RLock()
        #: The shared log's follower (``None``: the log is this process's own, in memory).
        self.follower: Follower | None = None
        #: The open watch streams and WebSockets (what shutdown waits for).
        self.streams: set[Tracked] = set()
        self._streams_idle: anyio.Event | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._random = random.Random()
        #: Whether a started hub chains SIGINT/SIGTERM to its shutdown (``lifecycle``).
        self.handle_signals = True
        #: Frames written by a publish straight to an idle watch (``stream``'s direct path).
        self.direct_writes = 0
        #: The watches whose direct-path frames wait for the end of this loop turn.
        self._corked: list[Corked] = []
        #: The loop's ``call_soon_threadsafe`` (or trio's ``run_sync_soon``): how a change
        #: applied in another thread hands the loop its wake-ups (``None``: not bound).
        self._post: Callable[..., object] | None = None
        #: While a change is applied in another thread (under the lock): the loop-bound
        #: wake-ups it caused, run on the loop once it is applied (:meth:`apply`).
        self._deferred: list[Callable[[], None]] | None = None

    # -- the event loop and other threads ------------------------------------------------------

    def bind(self) -> None:
        """Attach the hub to the running event loop (done on each use from async code).

        A hub serves one event loop at a time; the most recent loop that used it wins, so
        a hub kept across two ``anyio.run`` calls follows the second.
        """
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._post = _poster()

    def apply(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` under the lock, in the caller's thread, whichever it is: a change of
        the state (a publish) from a WSGI request thread needs no round trip to the loop. The
        wake-ups it causes for watches that wait on the loop (:meth:`on_loop`) are handed to
        the loop in one call once it is applied; a watch of the blocking driver is woken in
        place. Without a loop to hand them to, as :meth:`call`."""
        post = self._post
        if post is None or self._token is None or threading.get_ident() == self._loop_thread:
            return self.call(func, *args)
        deferred: list[Callable[[], None]] = []
        with self.lock:
            self._deferred = deferred
            try:
                result = func(*args)
            finally:
                self._deferred = None
        if deferred:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits on it
                post(_run_all, deferred)
        return result

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """``func(*args)`` under the lock on the loop's thread, without waiting for it from
        another thread (at once on the loop's thread, or where no loop is bound): for
        bookkeeping a thread must not block on, as it may hold the lock the loop waits for."""
        post = self._post
        if post is None or self._token is None or threading.get_ident() == self._loop_thread:
            self._locked(func, *args)
            return
        try:
            post(self._locked, func, *args)
        except RuntimeError:  # the loop is closed: do it here
            self._locked(func, *args)

    def on_loop(self, func: Callable[[], None]) -> Callable[[], None]:
        """``func`` as a subscription's waker or close hook for a watch that waits on the
        loop: called at once on the loop's thread, deferred to the loop when the change
        that calls it is applied in another thread (:meth:`apply`)."""
        return _OnLoop(self, func)

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` under the lock, on the bound loop's thread when there is one."""
        token = self._token
        if token is not None and threading.get_ident() != self._loop_thread:
            try:
                return anyio.from_thread.run_sync(self._locked, func, *args, token=token)
            except anyio.RunFinishedError:
                self._token = self._loop_thread = None
        return self._locked(func, *args)

    def _locked(self, func: Callable[..., T], *args: Any) -> T:
        with self.lock:  # readers in other threads (get, list, statistics) take it too
            return func(*args)

    def cork(self, stream: Corked, loop: asyncio.AbstractEventLoop) -> None:
        """``stream.flush_direct()`` at the end of this turn of ``loop`` (one callback per
        turn for all the watches that took frames on the direct path in it)."""
        corked = self._corked
        corked.append(stream)
        if len(corked) == 1:
            loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        corked = self._corked
        self._corked = []
        for stream in corked:
            stream.flush_direct()

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the thread of the loop the node is bound to."""
        return self._token is not None and threading.get_ident() == self._loop_thread

    @property
    def token(self) -> anyio.lowlevel.EventLoopToken | None:
        return self._token

    # -- resources and reads -------------------------------------------------------------------

    def spec(self, name: str) -> ResourceSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise NotFound(f"resource {name[:100]!r} not found") from None

    async def sync(self, parsed: WatchRequest) -> None:
        """Consistent reads across nodes (protocol.md §3.1); nothing to do on an in-memory
        log. ``resourceVersion=0`` does not ask the log, but still sees this node's own
        writes."""
        follower = self.follower
        if follower is None:
            return
        if parsed.resource_version == 0:
            await follower.own_writes()
        else:
            await follower.sync(parsed.resource_version)

    def end_at(self, timeout_seconds: int | None) -> float:
        """When a watch asking ``timeoutSeconds`` ends: the server's maximum, randomised to
        1x-2x so that clients do not reconnect in step, or sooner."""
        limit = self.max_watch_seconds * (1.0 + self._random.random())
        if timeout_seconds:
            limit = min(limit, float(timeout_seconds))
        return self.clock.now() + limit

    async def snapshot_objects(self, res: ResourceSpec, parsed: WatchRequest) -> list[Any]:
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

    async def snapshot_frames(self, res: ResourceSpec, parsed: WatchRequest) -> list[Frame]:
        """Initial frames from the snapshot callback: ``ADDED`` without id or rv."""
        return [
            Frame(EventType.ADDED, obj, None) for obj in await self.snapshot_objects(res, parsed)
        ]

    # -- open watches and shutdown -------------------------------------------------------------

    def track(self, stream: Tracked) -> None:
        self.streams.add(stream)

    def untrack(self, stream: Tracked) -> None:
        """Forget an ended watch (on the loop's thread: shutdown may be waiting for it)."""
        self.streams.discard(stream)
        if not self.streams and self._streams_idle is not None:
            self._streams_idle.set()

    def end_watches(self, reason: CloseReason) -> None:
        """End every open watch resumably (they resume: see ``CloseReason``)."""
        self.state.end_watches(reason)
        for stream in list(self.streams):
            stream.on_shutdown()

    @property
    def closing(self) -> bool:
        return self.state.closing

    def begin_shutdown(self) -> None:
        """Refuse new watches and end every open stream resumably (final bookmark, then end).

        Callable from the event loop (a coroutine, a callback) and from any other thread;
        not from a ``signal.signal`` handler, which may interrupt the loop's thread in the
        middle of a change (use ``loop.add_signal_handler`` or a thread). See ``aclose``
        to wait for the streams to end.
        """
        self.call(self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        self.state.closing = True
        self.end_watches(CloseReason.SHUTDOWN)

    async def wait_streams(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the open streams to end, then cancel the rest."""
        if self.streams:
            self._streams_idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._streams_idle.wait()
            for stream in list(self.streams):
                stream.cancel()
