"""The watch driver: one task per watch, waiting on its buffer until the session's deadline.

``WatchStream.run(send)`` is the pump. It asks the sans-IO session what to write, writes it
under a write timeout, and sleeps until the subscription wakes it (a frame, a close) or the
session's next deadline (heartbeat, bookmark, timeoutSeconds). Shutdown reaches it through the
same wake-up: the hub closes the subscription and the session writes its final bookmark.

``serve(stream, send, wait_disconnect)`` races the pump against a task that notices the peer
going away, for servers that only report a disconnect through ``receive()`` (ASGI).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .._core.errors import Expired
from .._core.params import Mode, WatchRequest
from .._core.registry import CloseReason, Subscription
from .._core.session import WatchSession
from .._core.wire import Wire
from .._core.wire.jsonlines import JsonLinesWire
from .._core.wire.sse import SseWire
from .meter import WatchMeter
from .reply import JSONLINES_HEADERS, SSE_HEADERS, Reply

if TYPE_CHECKING:
    from .hub import Hub, Resource

__all__ = ["Disconnected", "WatchStream", "open_session", "open_stream", "serve"]

logger = logging.getLogger("watchroutes")

Send = Callable[[bytes], Awaitable[None]]


class Disconnected(Exception):
    """Raised by an adapter's ``send`` when the peer is gone."""


class WatchStream:
    """A prepared watch: its session and subscription, ready to be pumped."""

    def __init__(
        self,
        hub: Hub,
        session: WatchSession,
        subscription: Subscription,
        *,
        resource: str = "",
        transport: str = "",
    ) -> None:
        self.hub = hub
        self.session = session
        self.subscription = subscription
        self.meter = WatchMeter(hub.metrics, hub.clock, resource, transport, subscription)
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False
        self._finished = False
        self._event = anyio.Event()
        self._sending: anyio.CancelScope | None = None
        hub._track(self)

    def cancel(self) -> None:
        """Stop the pump at once (shutdown grace exceeded)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def on_shutdown(self) -> None:
        """The hub began shutting down (the subscription's close already wakes the pump)."""

    def discard(self) -> None:
        """Release a stream that will never run (the adapter could not start it)."""
        self._finish(CloseReason.CLIENT)

    def _finish(self, reason: CloseReason) -> None:
        if self._finished:
            return
        self._finished = True
        hub = self.hub
        with hub._lock:
            if not self.session.closed:
                self.session.close(reason)
            hub.state.close_watch(self.subscription, reason)
        self.meter.closed(reason.value)
        hub._untrack(self)

    async def run(self, send: Send) -> None:
        """Write the stream with ``send`` until it ends; never raises for a vanished peer."""
        reason = CloseReason.CLIENT
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._cancelled:
                scope.cancel()
            try:
                reason = await self._pump(send)
            except TimeoutError:
                reason = CloseReason.ERROR
                logger.info("watch %s: write timed out", self.subscription.id)
            except (Disconnected, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                reason = CloseReason.CLIENT
            finally:
                if scope.cancel_called:
                    reason = CloseReason.SHUTDOWN if self._cancelled else CloseReason.CLIENT
                self._finish(reason)

    def _wake(self) -> None:
        """The subscription's waker: something to write, or it was closed."""
        self._event.set()
        sending = self._sending
        if sending is not None and self.subscription.closed is not None:
            # closed (slow consumer, shutdown) while a write is stuck behind a peer that does
            # not read: give that write up, so the stream ends now, not at the write timeout
            sending.cancel()

    async def _pump(self, send: Send) -> CloseReason:
        hub = self.hub
        clock = hub.clock
        lock = hub._lock
        state = hub.state
        session = self.session
        sub = self.subscription
        write_timeout = hub.write_timeout
        self._event = anyio.Event()
        sub.waker = self._wake
        meter = self.meter
        while True:
            with lock:
                oldest = sub.oldest_time()
                data = session.step(clock.now(), state.head)
            if data:
                # One scope for both ends of a write: its deadline (TimeoutError) and the
                # subscription's close (see _wake).
                with anyio.fail_after(write_timeout) as sending:
                    self._sending = sending
                    await send(data)
                self._sending = None
                if sending.cancelled_caught:
                    continue  # the subscription closed: the next step ends the stream
                meter.wrote(len(data), oldest)
            if session.closed:
                return session.close_reason or CloseReason.TIMEOUT
            if session.ready:
                await anyio.lowlevel.checkpoint()
                continue
            if self._event.is_set():
                self._event = anyio.Event()
                if session.ready:
                    continue
            await clock.wait(self._event, session.deadline())


async def serve(
    stream: WatchStream, send: Send, wait_disconnect: Callable[[], Awaitable[None]]
) -> None:
    """Run ``stream`` until it ends or ``wait_disconnect`` returns (the peer left)."""
    async with anyio.create_task_group() as tg:

        async def watch_peer() -> None:
            await wait_disconnect()
            tg.cancel_scope.cancel()

        tg.start_soon(watch_peer)
        await stream.run(send)
        tg.cancel_scope.cancel()


def _wire(res: Resource, parsed: WatchRequest, retry_ms: int) -> Wire:
    if parsed.mode is Mode.SSE:
        return SseWire(res.kind, res.api_version, retry_ms=retry_ms)
    return JsonLinesWire(res.kind, res.api_version, bookmarks=parsed.allow_watch_bookmarks)


async def open_session(
    hub: Hub, res: Resource, parsed: WatchRequest, wire: Wire, *, end_at: float | None
) -> WatchSession:
    """Register a watch and build its session; raises ``Expired`` and the other client errors
    of opening a watch (DESIGN 3.2)."""
    await hub._sync(parsed)
    with hub._lock:
        opening = hub.state.open_watch(
            res.name, parsed, source=res.source, buffer=hub.buffer, policy=res.slow_consumer
        )
    sub = opening.subscription
    initial = opening.initial
    if opening.needs_snapshot:
        try:
            initial = await hub.snapshot_frames(res, parsed)
        except BaseException:
            with hub._lock:
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
    )


async def open_stream(hub: Hub, res: Resource, parsed: WatchRequest) -> Reply:
    """Register the watch and prepare its stream (DESIGN 3.3 for SSE, 3.4 for JSON lines)."""
    wire = _wire(res, parsed, hub.retry_ms)
    headers = list(SSE_HEADERS if parsed.mode is Mode.SSE else JSONLINES_HEADERS)
    try:
        session = await open_session(
            hub, res, parsed, wire, end_at=hub.end_at(parsed.timeout_seconds)
        )
    except Expired as exc:
        if parsed.mode is not Mode.JSONLINES:
            raise
        hub.metrics.client_error(exc.reason)
        # kube-apiserver: 200, then the 410 Status as an ERROR event, then the end.
        return Reply(200, headers, wire.error(exc.status()), chunked=True)
    stream = WatchStream(
        hub, session, session.subscription, resource=res.name, transport=parsed.mode.value
    )
    return Reply(200, headers, session.preamble(), stream)
