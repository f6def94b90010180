"""The watch driver: one task per watch, waiting on its buffer until the session's deadline.

``WatchStream.run(send)`` is the pump. It asks the sans-IO session what to write, writes it
under a write timeout, and sleeps until the subscription wakes it (a frame, a close) or the
session's next deadline (heartbeat, bookmark, timeoutSeconds). Shutdown reaches it through the
same wake-up: the hub closes the subscription and the session writes its final bookmark.

``serve(stream, send, wait_disconnect)`` races the pump against a task that notices the peer
going away, for servers that only report a disconnect through ``receive()`` (ASGI).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel

from .._core.events import Frame
from .._core.params import Mode, WatchRequest
from .._core.registry import CloseReason, Subscription
from .._core.session import WatchSession
from .._core.wire import Wire
from .._core.wire.jsonlines import JsonLinesWire
from .._core.wire.sse import SseWire
from .alarm import Alarm, EventAlarm, LoopAlarm, make_alarm, on_asyncio
from .clock import SystemClock
from .guard import OPEN, Admission
from .meter import WatchMeter

if TYPE_CHECKING:
    from .node import Node, ResourceSpec

__all__ = [
    "DIRECT_EXTENSION",
    "AsgiDirectWriter",
    "DirectWriter",
    "http_chunk",
    "Disconnected",
    "WatchStream",
    "open_session",
    "serve",
    "stream_chunks",
    "wire_for",
]

logger = logging.getLogger("watchroutes")

Send = Callable[[bytes], Awaitable[None]]


class Disconnected(Exception):
    """Raised by an adapter's ``send`` when the peer is gone."""


class DirectWriter(Protocol):
    """The connection of a pushed watch, offered by an adapter that owns it: the direct write
    path. A publish that finds the watch idle (its task waiting, nothing queued, nothing due)
    writes the event's frame here, in the publishing call, instead of queueing it and waking
    the task. Both methods are called on the event loop's thread, between the task's writes.
    """

    def writable(self) -> bool:
        """Whether the connection takes bytes now without waiting: open, under its transport's
        high-water mark, everything the task sent already handed to the transport."""
        ...

    def write(self, data: bytes) -> None:
        """Frame ``data`` as the response body's next bytes and hand it to the transport, now
        (raise ``OSError`` if the connection is gone)."""
        ...


#: The ASGI scope extension (``scope["extensions"][DIRECT_EXTENSION]``) under which a server
#: offers a request's connection to the direct write path, as an :class:`AsgiDirectWriter`
#: (``watchroutes.adapters.uvicorn``'s protocols do).
DIRECT_EXTENSION: Final = "watchroutes.direct"


class AsgiDirectWriter(DirectWriter, Protocol):
    """A :class:`DirectWriter` offered by an ASGI server, which sees only what reaches it
    through the app's middleware. The app names each body it sends (:meth:`pushing`), and the
    writer takes bytes only while the last body named is the last one the server wrote (a
    middleware that rewrites or holds bodies keeps the watch on the plain path).

    The server also tells the app when the connection is lost (:meth:`on_lost`: no task
    listening on ``receive`` is needed), and takes the rest of a response over
    (:meth:`detach`): the app returns, which releases its middleware's frames for the life of
    the watch, and the server runs the watch, writing with :meth:`send_body` and :meth:`end`.
    """

    def pushing(self, body: bytes) -> None:
        """The app is about to ``send`` ``body`` (an ``http.response.body`` message)."""
        ...

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when the connection is lost (at once if it is); ``None``: no
        longer."""
        ...

    def detach(self, run: Callable[[], Awaitable[None]], discard: Callable[[], None]) -> bool:
        """Run ``run()`` once the app returned (``discard()`` if it fails after all); False
        when the server cannot take the response over now (the app keeps it)."""
        ...

    async def send_body(self, data: bytes) -> None:
        """Write ``data`` as the body's next bytes through the server's own ``send``."""
        ...

    async def end(self) -> None:
        """End the response body."""
        ...


class _Chunks:
    """HTTP/1.1 chunked framing with the last result kept: a publish writes one frame to many
    watchers in a row, so the framed bytes are built once per event, not once per watcher."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[bytes, bytes] = (b"", b"")

    def __call__(self, data: bytes) -> bytes:
        last = self._last  # one read of a tuple: safe whatever other loops do meanwhile
        if last[0] is data:
            return last[1]
        chunk = b"%x\r\n%b\r\n" % (len(data), data)
        self._last = (data, chunk)
        return chunk


#: ``http_chunk(data)``: ``data`` as one HTTP/1.1 chunk (for a :class:`DirectWriter` that
#: frames a chunked body itself). Not for empty data, which would end the body.
http_chunk: Final = _Chunks()


class _Scope(Protocol):
    """What a pump needs of a cancel scope (anyio's, or :class:`_TaskScope`)."""

    @property
    def cancel_called(self) -> bool: ...

    def cancel(self) -> None: ...


class _TaskScope:
    """A pump's cancel scope on asyncio, for less than anyio's (its scope, host-task record
    and callbacks cost 640 B per idle watch). ``cancel()`` wakes a waiting pump, which sees
    ``cancel_called`` and returns; a pump in the middle of a write (a peer that does not
    read) has its task cancelled instead, and the pump's ``run`` takes that cancellation back
    (:meth:`took_back`). A write is an await on the adapter's send: the task is suspended in it
    whenever ``cancel()`` runs (from another callback), so the cancellation lands inside it.
    """

    __slots__ = ("_cancelled_task", "_task", "alarm", "cancel_called")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self.alarm: Alarm | None = None
        self.cancel_called = False
        self._cancelled_task = False

    def cancel(self) -> None:
        if self.cancel_called:
            return
        self.cancel_called = True
        alarm = self.alarm
        if alarm is not None and alarm.writing:
            self._cancelled_task = True
            self._task.cancel()
        elif alarm is not None:
            alarm.set()

    def took_back(self) -> bool:
        """A ``CancelledError`` reached ``run``: True if it was this scope's alone (taken
        back), False if the task was also cancelled from outside (re-raise it)."""
        if not self._cancelled_task:
            return False
        self._cancelled_task = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        """The pump is done: a cancellation the send swallowed is not left counted."""
        if self._cancelled_task:
            self._cancelled_task = False
            self._task.uncancel()
        self.alarm = None


class WatchStream:
    """A prepared watch: its session and subscription, ready to be pumped."""

    __slots__ = (
        "_alarm",
        "_cancelled",
        "_direct",
        "_finished",
        "_interrupted",
        "_loop",
        "_pending",
        "_scope",
        "admission",
        "hub",
        "meter",
        "on_cancel",
        "session",
        "subscription",
    )

    def __init__(
        self,
        hub: Node,
        session: WatchSession,
        subscription: Subscription,
        *,
        resource: str = "",
        transport: str = "",
        admission: Admission = OPEN,
    ) -> None:
        self.hub = hub
        #: Its place in the per-principal and per-address limits, released when it ends.
        self.admission = admission
        self.session = session
        self.subscription = subscription
        self.meter = WatchMeter(hub.metrics, hub.clock, resource, transport, subscription)
        self._scope: _Scope | None = None
        self._alarm: Alarm | None = None
        self._direct: DirectWriter | None = None
        #: The direct path's frames of this loop turn, written together at its end: one
        #: frame as it is (no container to allocate per watcher and event), more as a list.
        self._pending: bytes | list[bytes] | None = None
        #: The asyncio loop the pump runs on (``None``: not asyncio, no corking).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False
        self._interrupted: CloseReason | None = None
        self._finished = False
        #: Called (from any thread) when the stream is cancelled or interrupted: how a pump
        #: that does not run in a cancel scope (the blocking driver's) is woken to stop.
        self.on_cancel: Callable[[], None] | None = None
        hub.track(self)

    @property
    def watches(self) -> int:
        return 1

    @property
    def cancelled(self) -> bool:
        """Whether the pump was told to stop at once (shutdown grace exceeded, peer gone)."""
        return self._cancelled or self._interrupted is not None

    def cancel(self) -> None:
        """Stop the pump at once (shutdown grace exceeded)."""
        self._cancelled = True
        self._stop_pump()

    def interrupt(self, reason: CloseReason = CloseReason.CLIENT) -> None:
        """End the pump at once, even in the middle of a write (the peer went away)."""
        if self._interrupted is None:
            self._interrupted = reason
        self._stop_pump()

    def _stop_pump(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self.on_cancel is not None:
            self.on_cancel()

    def on_shutdown(self) -> None:
        """The hub began shutting down (the subscription's close already wakes the pump)."""

    def on_revoke(self, principal: str) -> None:
        """A principal was revoked (its subscriptions were closed: that wakes the pump)."""

    def discard(self) -> None:
        """Release a stream that will never run (the adapter could not start it)."""
        self.finish(CloseReason.CLIENT)

    def finish(self, reason: CloseReason) -> None:
        """Release the watch (its subscription, its place in shutdown); idempotent, and
        callable from any thread."""
        if self._finished:
            return
        self._finished = True
        hub = self.hub
        with hub.lock:
            if not self.session.closed:
                self.session.close(reason)
            hub.state.close_watch(self.subscription, reason)
        self.meter.closed(reason.value)
        self.admission.release()
        hub.call_soon(hub.untrack, self)  # on the loop: shutdown may be waiting for it

    async def run(self, send: Send, direct: DirectWriter | None = None) -> None:
        """Write the stream with ``send`` until it ends; never raises for a vanished peer.

        With ``direct``, a publish that finds the watch idle writes its frame there at once
        (see :class:`DirectWriter`); everything else still goes through ``send``.
        """
        self._direct = direct
        hub = self.hub
        scope: _Scope
        task = asyncio.current_task() if on_asyncio() else None
        if task is not None and type(hub.clock) is SystemClock:
            self._loop = task.get_loop()
            scope = _TaskScope(task)
            alarm: Alarm = LoopAlarm(hub.write_timeout, scope.cancel)
            scope.alarm = alarm
            await self._run(send, alarm, scope)
        else:
            with anyio.CancelScope() as anyio_scope:
                alarm = EventAlarm(hub.clock, hub.write_timeout)
                await self._run(send, alarm, anyio_scope)

    async def _run(self, send: Send, alarm: Alarm, scope: _Scope) -> None:
        self._scope = scope
        self._alarm = alarm
        if self._cancelled or self._interrupted is not None:
            scope.cancel()
        reason = CloseReason.CLIENT
        timed_out = False
        try:
            reason = await self._pump(send, alarm, scope)
        except TimeoutError:
            timed_out = True
        except (Disconnected, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            reason = CloseReason.CLIENT
        except asyncio.CancelledError:
            if not isinstance(scope, _TaskScope) or not scope.took_back():
                raise  # (anyio's scope takes its own back on exit; another's is not ours)
        finally:
            self.subscription.direct = None
            alarm.close()
            if isinstance(scope, _TaskScope):
                scope.close()
            if timed_out or alarm.timed_out:
                reason = CloseReason.ERROR
                logger.info("watch %s: write timed out", self.subscription.id)
            elif scope.cancel_called:
                reason = self._cancel_reason()
            self.finish(reason)

    def closed_while_writing(self) -> None:
        """For a pump that cannot give up a write (the pull and blocking forms, whose
        consumer writes): a subscription closed as a slow consumer is released at once, not
        when the stuck write returns (its queue is gone, its client resumes)."""
        if self.subscription.closed is CloseReason.SLOW:
            self.finish(CloseReason.SLOW)

    def cancel_reason(self) -> CloseReason:
        """Why a pump told to stop at once stopped."""
        return self._cancel_reason()

    def _cancel_reason(self) -> CloseReason:
        if self._cancelled:
            return CloseReason.SHUTDOWN
        closed = self.subscription.closed
        if closed is not None:  # closed behind a stuck write (see _wake)
            return closed
        return self._interrupted or CloseReason.CLIENT

    def _closed(self) -> None:
        """The subscription was closed (slow consumer, shutdown, lost log)."""
        alarm = self._alarm
        if alarm is not None and alarm.writing and self._scope is not None:
            # closed while a write is stuck behind a peer that does not read: give that write
            # up, so the stream ends now, not at the write timeout
            self._scope.cancel()

    # -- the pump's steps, shared by the push, pull and blocking forms --------------------------

    def take(self) -> tuple[bytes, float | None]:
        """What to write now (the session stepped under the hub's lock, so nothing is
        published between its drain and its head), and the publish time of the oldest event
        in it (``None`` unless the write-latency metric wants it)."""
        hub = self.hub
        with hub.lock:
            oldest = self.subscription.oldest_time() if self.meter.per_write else None
            return self.session.step(hub.clock.now(), hub.state.head), oldest

    def wrote(self, data: bytes, oldest: float | None) -> None:
        """``data`` (from :meth:`take`) was written."""
        meter = self.meter
        if meter.per_write:
            meter.wrote(len(data), oldest)

    @property
    def end_reason(self) -> CloseReason | None:
        """Why the session ended (``None`` while it runs)."""
        session = self.session
        return (session.close_reason or CloseReason.TIMEOUT) if session.closed else None

    def _deliver(self, frame: Frame) -> bool:
        """The direct write path (``Subscription.direct``): take ``frame`` now if the task is
        idle and the connection takes bytes, or return False (it is queued, the task woken).

        On asyncio the frames a watch takes in one turn of the loop are written together at
        the end of that turn (one write, as the task would write its queue), so a burst of
        events keeps costing one write per watcher; elsewhere each is written at once.
        """
        if self._pending is not None:  # this turn's later frames queue (see flush_direct)
            return False
        alarm = self._alarm
        direct = self._direct
        if alarm is None or direct is None or not alarm.idle or not direct.writable():
            return False
        hub = self.hub
        if not hub.on_loop_thread():  # (a transport is the loop's alone)
            return False
        data = self.session.deliver(frame, hub.clock.now())
        if data is None:
            return False
        hub.direct_writes += 1
        meter = self.meter
        if meter.per_write:
            meter.wrote(len(data), frame.time)
        self._take(data)
        return True

    def _wake(self) -> None:
        """The waker of a watch on the direct path: frames were queued (a publish the direct
        path could not take, or one applied in another thread, whose wake-ups run on the
        loop afterwards). If the watch is idle and its connection takes bytes, they are taken
        here, as the task would, without waking it; otherwise the task wakes. Frames queued
        behind one this turn already took are left to the end of the turn (flush_direct):
        a burst costs a buffer append per frame, as on the task path."""
        if self._pending is not None:
            return
        alarm = self._alarm
        direct = self._direct
        if (
            alarm is not None
            and direct is not None
            and alarm.idle
            and direct.writable()
            and self.hub.on_loop_thread()
        ):
            data = self._take_queue()
            if data is not None:
                self._take(data)
                return
        if alarm is not None:
            alarm.set()

    def _take_queue(self) -> bytes | None:
        """The queued frames, stepped out of the session under the hub's lock, when the watch
        is live with nothing else due (no close, bookmark, heartbeat or end); else ``None``
        and the queue is left to the task."""
        hub = self.hub
        with hub.lock:
            sub = self.subscription
            session = self.session
            now = hub.clock.now()
            deadline = session.deadline()  # (None unless live)
            if sub.closed is not None or not len(sub) or deadline is None or now >= deadline:
                return None
            oldest = sub.oldest_time() if self.meter.per_write else None
            before = sub.delivered
            data = session.step(now, hub.state.head)  # the queue, nothing else is due
            hub.direct_writes += sub.delivered - before
        self.wrote(data, oldest)
        return data

    def _take(self, data: bytes) -> None:
        """Write ``data`` taken on the direct path: at the end of this loop turn, with the
        others of this watch, or at once where the loop is not asyncio."""
        pending = self._pending
        if pending is not None:
            if isinstance(pending, list):
                pending.append(data)
            else:
                self._pending = [pending, data]
        elif self._loop is not None:
            self._pending = data
            self.hub.cork(self, self._loop)
        else:
            direct = self._direct
            assert direct is not None
            self._write_direct(direct, data)

    def flush_direct(self) -> None:
        """Write the frames the direct path took this turn (the end of the turn, or the pump
        before it writes anything itself: nothing it writes may overtake them)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        direct = self._direct
        if direct is None or self._finished:
            return
        data = b"".join(pending) if isinstance(pending, list) else pending
        wake = False
        if len(self.subscription):  # frames queued this turn behind the first
            more = self._take_queue()
            if more is not None:
                data += more
            wake = more is None or bool(len(self.subscription))
        self._write_direct(direct, data)
        if wake and self._alarm is not None:
            self._alarm.set()  # the task takes what is left (a close, a due bookmark)

    def _write_direct(self, direct: DirectWriter, data: bytes) -> None:
        try:
            direct.write(data)
        except Exception:  # the connection broke under the write: the peer is gone
            logger.debug("watch %s: direct write failed", self.subscription.id, exc_info=True)
            self.interrupt(CloseReason.CLIENT)

    async def _pump(self, send: Send, alarm: Alarm, scope: _Scope) -> CloseReason:
        session = self.session
        sub = self.subscription
        hub = self.hub
        sub.on_close = hub.on_loop(self._closed)
        if self._direct is not None:
            sub.direct = self._deliver
            sub.waker = hub.on_loop(self._wake)
        else:
            sub.waker = hub.on_loop(alarm.set)
        write = alarm.write
        while True:
            if self._pending is not None:
                self.flush_direct()
            if scope.cancel_called:  # (a _TaskScope wakes the pump rather than cancel a wait)
                return CloseReason.CLIENT
            data, oldest = self.take()
            if data:
                await write(send, data)
                self.wrote(data, oldest)
                data = b""  # (not held while the watch waits)
            if session.closed:
                return session.close_reason or CloseReason.TIMEOUT
            if session.ready:
                await anyio.lowlevel.checkpoint()
                continue
            await alarm.wait(session.deadline())


async def stream_chunks(stream: WatchStream) -> AsyncGenerator[bytes]:
    """The pull form of a watch: its bytes as an async iterator, for frameworks whose
    streaming responses consume one (Django's ``StreamingHttpResponse`` under ASGI). The
    consumer writes (and times its writes); the iterator waits on the subscription and the
    session's deadline as :meth:`WatchStream.run` does. ``aclose()`` releases the watch."""
    hub = stream.hub
    session = stream.session
    alarm = make_alarm(hub.clock, hub.write_timeout, lambda: None)
    stream.subscription.waker = hub.on_loop(alarm.set)

    def closed() -> None:
        alarm.set()
        stream.closed_while_writing()

    stream.subscription.on_close = hub.on_loop(closed)
    stream.on_cancel = alarm.set
    reason = CloseReason.CLIENT
    try:
        while True:
            if stream.cancelled:
                reason = stream._cancel_reason()
                return
            data, oldest = stream.take()
            if data:
                yield data
                stream.wrote(data, oldest)
            ended = stream.end_reason
            if ended is not None:
                reason = ended
                return
            if session.ready:
                await anyio.lowlevel.checkpoint()
                continue
            await alarm.wait(session.deadline())
    finally:
        alarm.close()
        stream.on_cancel = None
        stream.finish(reason)


async def serve(
    stream: WatchStream,
    send: Send,
    wait_disconnect: Callable[[], Awaitable[None]] | None,
    direct: DirectWriter | None = None,
) -> None:
    """Run ``stream`` until it ends or ``wait_disconnect`` returns (the peer left); with
    ``direct``, on the direct write path (:meth:`WatchStream.run`).

    The peer is watched by a second task, which ASGI needs to notice a disconnect. On
    asyncio that is a bare task (an anyio task group per watch costs 7-8 KiB of memory per
    idle watcher, measured under uvicorn); elsewhere a task group. ``wait_disconnect=None``:
    the server reports a lost connection itself (``AsgiDirectWriter.on_lost``), no task.
    """
    if wait_disconnect is None:
        await stream.run(send, direct)
        return
    if on_asyncio():
        peer = asyncio.ensure_future(_watch_peer(stream, wait_disconnect))
        try:
            await stream.run(send, direct)
        finally:
            peer.cancel()
        return
    async with anyio.create_task_group() as tg:

        async def watch_peer() -> None:
            await wait_disconnect()
            tg.cancel_scope.cancel()

        tg.start_soon(watch_peer)
        await stream.run(send, direct)
        tg.cancel_scope.cancel()


async def _watch_peer(stream: WatchStream, wait_disconnect: Callable[[], Awaitable[None]]) -> None:
    try:
        await wait_disconnect()
    except Exception:  # the server failed to report it: the peer is gone all the same
        logger.debug("watch %s: receive failed", stream.subscription.id, exc_info=True)
    stream.interrupt(CloseReason.CLIENT)


def wire_for(res: ResourceSpec, parsed: WatchRequest, retry_ms: int) -> Wire:
    """The wire of a watch (shared by every watch of a resource: wires hold no state)."""
    if parsed.mode is Mode.SSE:
        return _sse_wire(res.kind, res.api_version, retry_ms)
    return _jsonlines_wire(res.kind, res.api_version, parsed.allow_watch_bookmarks)


# Wires hold no per-watch state: the watches of one resource share one (less memory per watch).
@functools.lru_cache(maxsize=1024)
def _sse_wire(kind: str, api_version: str, retry_ms: int) -> SseWire:
    return SseWire(kind, api_version, retry_ms=retry_ms)


@functools.lru_cache(maxsize=1024)
def _jsonlines_wire(kind: str, api_version: str, bookmarks: bool) -> JsonLinesWire:
    return JsonLinesWire(kind, api_version, bookmarks=bookmarks)


async def open_session(
    hub: Node,
    res: ResourceSpec,
    parsed: WatchRequest,
    wire: Wire,
    *,
    end_at: float | None,
    admission: Admission = OPEN,
) -> WatchSession:
    """Register a watch and build its session; raises ``Expired`` and the other client errors
    of opening a watch (protocol.md §3.2)."""
    await hub.sync(parsed)
    with hub.lock:
        admission.check(hub)  # revoked since it was let in?
        opening = hub.state.open_watch(
            res.name,
            parsed,
            source=res.source,
            buffer=hub.buffer,
            policy=res.slow_consumer,
            principal=admission.name,
        )
    sub = opening.subscription
    initial = opening.initial
    if opening.needs_snapshot:
        try:
            initial = await hub.snapshot_frames(res, parsed)
        except BaseException:
            with hub.lock:
                hub.state.close_watch(sub, CloseReason.ERROR)
            raise
    return WatchSession(
        wire=wire,
        subscription=sub,
        now=hub.clock.now(),
        snapshot_rv=opening.head,
        start_rv=opening.start_rv,
        initial=initial,
        replay=opening.replay,
        reset=opening.reset,
        heartbeat=hub.heartbeat,
        end_at=end_at,
        expires_at=admission.expires_at(hub),
    )
