"""Informers: a watch applied to a local store, with callbacks and an iterator of changes.

:class:`Informer` runs in your event loop; :class:`SyncInformer` runs the same informer in a
background thread (an anyio blocking portal) for blocking code.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, NamedTuple, Self

import anyio
import anyio.abc
import anyio.from_thread
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._aio import AsyncTokenRefresh, Watch, watch
from ._backoff import Backoff
from ._errors import WatchClientError
from ._events import Change, KeyFunc, default_key
from ._protocol import DEFAULT_HEARTBEAT, DEFAULT_POLL_TIMEOUT, Transport
from ._store import InformerStore
from ._sync import TokenRefresh

__all__ = [
    "DEFAULT_CHANGES_BUFFER",
    "ChangeHandler",
    "ChangeStream",
    "Informer",
    "InformerStatistics",
    "SyncInformer",
]

#: Changes buffered for each ``changes()`` iterator. A full buffer makes the informer wait
#: (and so the watch: the server's slow-consumer policy applies, nothing is lost), as anyio's
#: memory streams do; 1,000 matches the server's default per-watch buffer.
DEFAULT_CHANGES_BUFFER: Final = 1000

#: Called with every change, in order; a returned awaitable is awaited before the next one.
ChangeHandler = Callable[[Change], object]


class InformerStatistics(NamedTuple):
    """An informer's state (``Informer.statistics()``)."""

    #: Objects in the store.
    objects: int
    #: Whether the initial state has been applied.
    synced: bool
    #: The newest rv the store applied.
    resource_version: str | None
    #: Attempts after the first connection.
    reconnects: int
    #: Full states applied after the first (410, ``RESET``, a drop in the initial events).
    relists: int
    #: Events ignored because their rv was not newer than what the store held.
    stale_events: int
    #: Deletions found by a relist (``Change.tombstone``).
    tombstones: int
    #: Events and bookmarks received.
    events: int
    bookmarks: int
    #: Seconds since the server last proved the stream current (``None`` before the first
    #: answer).
    lag: float | None
    connected: bool
    token_refreshes: int
    last_error: str | None


class Informer:
    """Keeps ``store`` (key -> object) equal to the server's collection, across reconnects,
    ``RESET`` and 410. ``async with Informer(url) as informer:`` runs it in the background;
    or ``await informer.run()`` in a task of your own.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        transport: Transport | str = Transport.SSE,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        token_refresh: AsyncTokenRefresh | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        read_timeout: float | None = None,
        poll_timeout: int = DEFAULT_POLL_TIMEOUT,
        key: KeyFunc = default_key,
        on_change: ChangeHandler | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._watch: Watch = watch(
            url,
            client=client,
            transport=transport,
            params=params,
            headers=headers,
            token=token,
            token_refresh=token_refresh,
            heartbeat=heartbeat,
            read_timeout=read_timeout,
            poll_timeout=poll_timeout,
            backoff=backoff,
            clock=clock,
            sleep=sleep,
        )
        self._store = InformerStore(key)
        self._handlers: list[ChangeHandler] = [] if on_change is None else [on_change]
        self._streams: list[MemoryObjectSendStream[Change]] = []
        self._synced_event: anyio.Event | None = None
        self._error: BaseException | None = None
        self._started = False
        self._stopped = False
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def store(self) -> Mapping[str, dict[str, Any]]:
        """A read-only view of the store (the objects are the store's own: do not mutate)."""
        return MappingProxyType(self._store.objects)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._store.objects.get(key)

    @property
    def synced(self) -> bool:
        """Whether the initial state has been applied (it stays true through relists: the
        store keeps the previous state until the new one is complete)."""
        return self._store.synced

    @property
    def resource_version(self) -> str | None:
        return self._store.resource_version

    async def wait_synced(self) -> None:
        """Return once the initial state is applied; raise what stopped the informer first."""
        await self._synced().wait()
        if self._error is not None:
            raise self._error
        if not self._store.synced:
            raise WatchClientError("the informer stopped before its initial state arrived")

    def add_handler(self, handler: ChangeHandler) -> None:
        """Call ``handler`` with every later change."""
        self._handlers.append(handler)

    def changes(self, max_buffer_size: int = DEFAULT_CHANGES_BUFFER) -> ChangeStream:
        """An async iterator of every change from now on (``async with`` closes it)."""
        send, receive = anyio.create_memory_object_stream[Change](max_buffer_size)
        if self._stopped:
            send.close()
        else:
            self._streams.append(send)
        return ChangeStream(receive, self)

    def statistics(self) -> InformerStatistics:
        watch_stats = self._watch.statistics()
        store = self._store
        return InformerStatistics(
            objects=len(store.objects),
            synced=store.synced,
            resource_version=store.resource_version,
            reconnects=watch_stats.reconnects,
            relists=store.relists,
            stale_events=store.stale,
            tombstones=store.tombstones,
            events=watch_stats.events,
            bookmarks=watch_stats.bookmarks,
            lag=watch_stats.lag,
            connected=watch_stats.connected,
            token_refreshes=watch_stats.token_refreshes,
            last_error=watch_stats.last_error,
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch and apply until cancelled; raises :class:`StatusError` and the like."""
        if self._started:
            raise RuntimeError("an informer runs once")
        self._started = True
        synced = self._synced()
        store = self._store
        try:
            async with self._watch as watch_, contextlib.aclosing(watch_.batches()) as batches:
                async for batch in batches:
                    for event in batch:
                        for change in store.apply(event):
                            await self._dispatch(change)
                    if store.synced and not synced.is_set():
                        synced.set()
        except WatchClientError as exc:
            self._error = exc
            raise
        finally:
            self._stopped = True
            synced.set()
            for stream in self._streams:
                stream.close()
            self._streams.clear()

    async def __aenter__(self) -> Self:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run_quietly)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        assert task_group is not None
        self._task_group = None
        task_group.cancel_scope.cancel()
        # The body's own exception is not handed to the task group, which would wrap it in an
        # ExceptionGroup: it propagates as it is once the run has stopped.
        try:
            await task_group.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            if exc is None and len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if exc is None and self._error is not None:
            raise self._error

    async def _run_quietly(self) -> None:
        # The error is kept for wait_synced(), changes() and the end of `async with`, instead
        # of surfacing as an ExceptionGroup from the task group.
        with contextlib.suppress(WatchClientError):
            await self.run()

    def _synced(self) -> anyio.Event:
        if self._synced_event is None:
            self._synced_event = anyio.Event()
            if self._store.synced or self._stopped:
                self._synced_event.set()
        return self._synced_event

    async def _dispatch(self, change: Change) -> None:
        for handler in self._handlers:
            result = handler(change)
            if inspect.isawaitable(result):
                await result
        if self._streams:
            for stream in list(self._streams):
                try:
                    await stream.send(change)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._streams.remove(stream)


class ChangeStream:
    """The changes of one :meth:`Informer.changes` call."""

    def __init__(self, receive: MemoryObjectReceiveStream[Change], informer: Informer) -> None:
        self._receive = receive
        self._informer = informer

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            error = self._informer._error
            if error is not None:
                raise error from None
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Change:
        """The next buffered change; raises ``anyio.WouldBlock`` when there is none."""
        return self._receive.receive_nowait()

    async def aclose(self) -> None:
        await self._receive.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncInformer:
    """An :class:`Informer` for blocking code: it runs in a thread of its own (an anyio
    blocking portal), where ``on_change`` and ``token_refresh`` are called too::

        with SyncInformer("http://127.0.0.1:8000/orders") as orders:
            orders.wait_synced(timeout=10)
            print(orders.store)
    """

    def __init__(
        self,
        url: str,
        *,
        transport: Transport | str = Transport.SSE,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        token_refresh: TokenRefresh | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        read_timeout: float | None = None,
        poll_timeout: int = DEFAULT_POLL_TIMEOUT,
        key: KeyFunc = default_key,
        on_change: Callable[[Change], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        def make() -> Informer:
            return Informer(
                url,
                transport=transport,
                params=params,
                headers=headers,
                token=token,
                token_refresh=token_refresh,
                heartbeat=heartbeat,
                read_timeout=read_timeout,
                poll_timeout=poll_timeout,
                key=key,
                on_change=on_change,
                backoff=backoff,
            )

        self._make = make
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._informer: Informer | None = None
        self._future: Any = None

    def start(self) -> Self:
        """Start the thread and the watch (``with`` does it)."""
        if self._portal is not None:
            raise RuntimeError("already started")
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        portal = self._portal_cm.__enter__()
        self._portal = portal
        self._informer = portal.call(self._make)
        self._future = portal.start_task_soon(self._informer.run)
        return self

    def stop(self) -> None:
        """Stop the watch and the thread; raises what stopped the informer, if anything."""
        portal, self._portal = self._portal, None
        if portal is None:
            return
        self._future.cancel()
        self._portal_cm.__exit__(None, None, None)
        informer = self._informer
        if informer is not None and informer._error is not None:
            raise informer._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether the initial state arrived within ``timeout`` seconds; raises what stopped
        the informer first."""
        portal, informer = self._running()

        async def wait() -> bool:
            with anyio.move_on_after(timeout):
                await informer.wait_synced()
                return True
            return False

        return portal.call(wait)

    @property
    def store(self) -> dict[str, dict[str, Any]]:
        """A copy of the store, taken in the informer's thread."""
        portal, informer = self._running()
        return portal.call(lambda: dict(informer.store))

    def get(self, key: str) -> dict[str, Any] | None:
        portal, informer = self._running()
        return portal.call(informer.get, key)

    @property
    def synced(self) -> bool:
        return self._informer is not None and self._informer.synced

    def statistics(self) -> InformerStatistics:
        portal, informer = self._running()
        return portal.call(informer.statistics)

    def _running(self) -> tuple[anyio.from_thread.BlockingPortal, Informer]:
        if self._portal is None or self._informer is None:
            raise RuntimeError("the informer is not running: use `with` or start()")
        return self._portal, self._informer
