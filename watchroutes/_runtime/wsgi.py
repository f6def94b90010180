"""What a WSGI adapter needs around :func:`wsgi_body`: its response body, the watcher of the
sockets whose client left, a long poll that such a departure cancels, a limited body reader,
and the gunicorn exit-signal hook.

WSGI reports a departed client only when a write fails, so a watch that writes nothing (a
JSON-lines watch without bookmarks, a long poll, between heartbeats) would hold its thread
until its next heartbeat. Where the server exposes the connection's socket (gunicorn's
``environ["gunicorn.socket"]``), :data:`departures` looks at it: one thread per process
checks the open watches' sockets every :data:`DEPARTURE_POLL_SECONDS`, and a socket at
end-of-file (or reset) ends its watch, as a failed write would.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._core.errors import BadRequest, ClientError
from .blocking import HubThread, wsgi_body
from .reply import BodyLimit

if TYPE_CHECKING:
    from .answers import RequestInfo
    from .hub import Hub
    from .reply import Reply

__all__ = [
    "DEPARTURE_POLL_SECONDS",
    "DRAIN_FACTOR",
    "Departures",
    "HubThreads",
    "LongPollWait",
    "WSGIBody",
    "chain_sigterm",
    "answer_watched",
    "departures",
    "server_socket",
    "read_limited",
    "read_wsgi_body",
]

#: How often the sockets of open watches are looked at for a client that closed.
DEPARTURE_POLL_SECONDS = 0.5
#: A refused body declared at most this many times the limit is read (and dropped) before
#: the 413 goes out (see :func:`read_wsgi_body`).
DRAIN_FACTOR = 16


class Interruptible(Protocol):
    """What :class:`Departures` ends when its client left: a watch stream, a long poll."""

    def interrupt(self) -> None: ...


class Departures:
    """Notices a client that closed its connection while its watch writes nothing (see the
    module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[socket.socket, Interruptible] = {}
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, target: Interruptible) -> None:
        with self._lock:
            self._watched[sock] = target
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchroutes-departures")
                self._thread.daemon = True
                self._thread.start()

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._watched.pop(sock, None)

    def _run(self) -> None:
        while True:
            time.sleep(DEPARTURE_POLL_SECONDS)
            with self._lock:
                watched = list(self._watched.items())
            if not watched:
                continue
            with selectors.DefaultSelector() as selector:
                for sock, target in watched:
                    with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                        selector.register(sock, selectors.EVENT_READ, target)
                ready = selector.select(0)
            for key, _ in ready:
                peer = key.fileobj
                assert isinstance(peer, socket.socket)
                try:
                    gone = peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    gone = False
                except OSError:  # reset
                    gone = True
                if gone:
                    self.forget(peer)
                    key.data.interrupt()


#: The process's one watcher of departed clients.
departures = Departures()


class WSGIBody:
    """``wsgi_body(reply)``, with the reply's first chunk always yielded, even when empty: a
    JSON-lines watch that has nothing to send yet still flushes its headers at once on
    gunicorn (which sends them on any write). While it streams, ``sock`` (the connection's, when
    the server gives it) is watched for the client's close. Closing it releases the watch, even
    one never iterated."""

    def __init__(self, reply: Reply, sock: socket.socket | None = None) -> None:
        self.first = reply.body
        self.body = wsgi_body(reply)
        self.stream = reply.stream
        self.sock = sock

    def __iter__(self) -> Iterator[bytes]:
        if self.sock is not None and self.stream is not None:
            departures.watch(self.sock, self.stream)
        if not self.first:
            yield b""
        yield from self.body

    def close(self) -> None:
        if self.sock is not None:
            departures.forget(self.sock)
        getattr(self.body, "close")()  # noqa: B009 - WatchBody always has it


class LongPollWait:
    """A long poll waiting for its answer on the hub's loop; ``interrupt()`` (from the thread
    that noticed its client left) cancels the wait, which releases the watch; ``left`` tells
    the request thread afterwards."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.token: Any = None
        self.left = False

    async def run(self, answer: Callable[..., Any], name: str, info: RequestInfo) -> Any:
        self.token = anyio.lowlevel.current_token()
        with anyio.CancelScope() as self.scope:
            return await answer(name, info)
        self.left = True
        return None

    def interrupt(self) -> None:
        scope, token = self.scope, self.token
        if scope is not None and token is not None:
            with contextlib.suppress(Exception):  # it has just ended
                anyio.from_thread.run_sync(scope.cancel, token=token)


def read_limited(read: Callable[[int], bytes], content_length: str | None, limit: int) -> bytes:
    """A blocking body read to its end through ``read(size)``, counted while it is read (413
    past ``limit``; before reading when ``content_length`` says so)."""
    counter = BodyLimit(limit, content_length)
    while chunk := read(65536):
        counter.feed(chunk)
    return counter.body()


def read_wsgi_body(
    read: Callable[[int], bytes], content_length: str | None, declared: int | None, limit: int
) -> bytes:
    """:func:`read_limited` for a WSGI server: a body that cannot be read to its end (the client
    left, a malformed chunk) is a 400.

    A refused body whose ``declared`` length is at most ``DRAIN_FACTOR`` times the limit is
    read and dropped first: gunicorn drains only 64 KiB of an unread body before it closes the
    connection, and a close with unread data resets it, so a client still sending would lose
    the 413. Larger or chunked bodies are refused at once."""
    try:
        return read_limited(read, content_length, limit)
    except ClientError:
        if declared is not None and declared <= DRAIN_FACTOR * limit:
            with contextlib.suppress(Exception):  # (the client may leave meanwhile)
                while read(65536):
                    pass
        raise
    except Exception:  # the server's own: the client left mid-body, or a malformed chunk
        raise BadRequest("the request body could not be read to its end") from None


def chain_sigterm(stop: Callable[[], None]) -> None:
    """For gunicorn's ``post_worker_init`` hook: on SIGTERM, run ``stop`` (ending the watches
    with final bookmarks) in a thread of its own, then gunicorn's own handler (which only stops
    accepting, and then waits for the open requests)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(number: int, frame: Any) -> None:
        threading.Thread(target=stop, name="watchroutes-stop", daemon=True).start()
        if callable(previous):
            previous(number, frame)

    signal.signal(signal.SIGTERM, handler)


def server_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The connection's socket, where the server gives it (gunicorn)."""
    sock = environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def answer_watched(
    runner: HubThread,
    answer: Callable[..., Any],
    name: str,
    info: RequestInfo,
    sock: socket.socket | None,
    *,
    longpoll: bool,
) -> tuple[Any, bool]:
    """``answer(name, info)`` on the hub's loop, and whether the client left meanwhile: a long
    poll waits there, and is cancelled (releasing its watch) when ``sock`` shows its client
    gone."""
    if not longpoll or sock is None:
        return runner.call(answer, name, info), False
    pending = LongPollWait()
    departures.watch(sock, pending)
    try:
        reply = runner.call(pending.run, answer, name, info)
    finally:
        departures.forget(sock)
    return reply, pending.left


class HubThreads:
    """The hubs' loop threads of a process under WSGI: one :class:`HubThread` per hub, started
    on first use (after a fork, never before), and stopped by :meth:`stop` (every watch ended
    with a final bookmark) from the server's exit hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runners: dict[int, HubThread] = {}

    def start(self, hub: Hub) -> HubThread:
        with self._lock:
            runner = self._runners.get(id(hub))
            if runner is None:
                runner = self._runners[id(hub)] = HubThread(hub).start()
            return runner

    def stop(self, timeout: float | None = None) -> None:
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.stop(timeout)
