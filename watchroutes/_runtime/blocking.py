"""The blocking driver: watches served from threads that run no event loop (WSGI).

A WSGI server gives each request a thread and takes the response as an iterable of byte
chunks. Two pieces serve such a server with the same sessions, wires and rules as the async
adapters:

* :class:`HubThread` runs the hub's event loop (and a shared log's follower) in one
  background thread per process. Request threads hand it what needs the loop — opening a
  watch, answering a list — with one round trip per request, never one per event.
* :func:`iterate_watch` is the pump of one watch as a plain iterator, run by the request
  thread. It steps the watch's sans-I/O session under the hub's lock, yields what the session
  wrote, and sleeps on a ``threading.Event`` that the subscription sets (from the loop's
  thread, inside the publish) when it has something new, or until the session's next
  deadline (heartbeat, bookmark, ``timeoutSeconds``). So a publish costs one ``Event.set``
  per woken watcher, as it costs one future per watcher on asyncio.

WSGI has no disconnect signal: a departed client is noticed when a write fails, which the
server reports by closing the iterator (``GeneratorExit``); heartbeats always write bytes,
so that happens within one heartbeat interval. A write cannot be timed out from here: the
server's socket timeout bounds it. Shutdown (``HubThread.stop`` or ``hub.begin_shutdown``)
closes every subscription, which wakes each pump to write its final bookmark and end; a pump
that does not end within the grace period is told to stop at its next wake-up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread

from .._core.registry import CloseReason

if TYPE_CHECKING:
    from .answers import RequestInfo
    from .hub import Hub
    from .reply import Reply
    from .stream import WatchStream

__all__ = ["HubThread", "WatchBody", "iterate_watch", "wsgi_body"]

T = TypeVar("T")


class HubThread:
    """Runs ``hub`` (entered as ``async with hub``) on an event loop in a daemon thread.

    ``start()`` returns once the hub serves (a shared log loaded, or its start timeout
    passed); ``stop()`` ends every watch resumably and waits for the thread. Usable as a
    context manager. One per hub and process; a WSGI app starts it at import or in its
    factory, and stops it at exit (``atexit``, a server hook).
    """

    def __init__(self, hub: Hub, *, backend: str = "asyncio") -> None:
        self.hub = hub
        self.backend = backend
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: anyio.Event | None = None
        self._token: Any = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> HubThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="watchroutes-hub", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend=self.backend)
        except BaseException as exc:  # reported to start(); nothing else can see it
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._stopping = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        async with self.hub:
            self._started.set()
            await self._stopping.wait()

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the hub's loop and return its result (from any thread
        but the loop's own)."""
        if self._token is None:
            raise RuntimeError("the hub thread is not running: call start() first")
        return anyio.from_thread.run(func, *args, token=self._token)

    def answer(self, resource: str, request: RequestInfo, *, list_: bool = True) -> Reply:
        """The hub's answer to a GET of a watchable route (see ``Hub.answer``); a watch's
        ``reply.stream`` is then iterated with :func:`iterate_watch` in the request thread."""
        return self.call(_answer, self.hub, resource, request, list_)

    def stop(self, timeout: float | None = None) -> None:
        """End every watch resumably (final bookmarks), wait for them up to the hub's
        ``shutdown_grace``, stop the loop and wait (up to ``timeout``) for the thread."""
        thread, token = self._thread, self._token
        if thread is None or token is None:
            return
        stopping = self._stopping
        assert stopping is not None
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run(self.hub.aclose, token=token)
            anyio.from_thread.run_sync(stopping.set, token=token)
        thread.join(timeout)
        self._thread = None
        self._token = None

    def __enter__(self) -> HubThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _answer(hub: Hub, resource: str, request: RequestInfo, list_: bool) -> Reply:
    return await hub.answer(resource, request, list_=list_)


def iterate_watch(stream: WatchStream) -> Iterator[bytes]:
    """Pump ``stream`` from the calling thread (not the hub's loop): yields each chunk to
    write until the watch ends. Closing the iterator (the server's write failed, the client
    left) ends the watch and releases its subscription."""
    now = stream.hub.clock.now
    session = stream.session
    wake = threading.Event()
    reason = CloseReason.CLIENT

    def closed() -> None:  # (in the publishing thread, which may be any, under the hub's lock)
        wake.set()
        stream.closed_while_writing()

    with stream.hub.lock:
        stream.subscription.waker = wake.set
        stream.subscription.on_close = closed
    stream.on_cancel = wake.set
    try:
        while True:
            wake.clear()  # before the step: a publish after it sets it again
            if stream.cancelled:
                reason = stream.cancel_reason()
                return
            data, oldest = stream.take()
            if data:
                yield data
                stream.wrote(data, oldest)
            ended = stream.end_reason
            if ended is not None:
                reason = ended
                return
            if not session.ready:
                deadline = session.deadline()
                wake.wait(None if deadline is None else max(0.0, deadline - now()))
    finally:
        stream.on_cancel = None
        stream.finish(reason)


class WatchBody:
    """A reply as a WSGI response iterable: the reply's body, then, for a watch, every chunk
    of :func:`iterate_watch`. ``close()`` (which a WSGI server calls when the response ends,
    a write failed or the client left) always releases the watch, even one that never
    started."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self._chunks: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is None:
            self._chunks = self._generate()
        return self._chunks

    def _generate(self) -> Iterator[bytes]:
        reply = self.reply
        if reply.body or reply.stream is not None:  # a watch's first chunk even when empty:
            yield reply.body  # some WSGI servers send the headers with it, at once
        if reply.stream is not None:
            yield from iterate_watch(reply.stream)

    def close(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None and isinstance(chunks, Iterator):
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        stream = self.reply.stream
        if stream is not None:
            stream.finish(CloseReason.CLIENT)  # idempotent: a no-op once it has ended


def wsgi_body(reply: Reply) -> Iterable[bytes]:
    """What a WSGI app returns for ``reply``."""
    return WatchBody(reply)
