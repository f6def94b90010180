"""The runtime's :class:`Socket` over a blocking WebSocket (simple-websocket's, under WSGI),
driven from the hub's loop.

A blocking WebSocket server object reads in a thread of its own and keeps what it read in
``input_buffer``; :class:`ThreadedSocket` tells the hub's loop when that reader got something
(``poke()``, called by the server object) and runs every other call (the handshake, writes,
the close) in a worker thread, one at a time and in order, so that a slow peer never blocks
the loop. The handshake is written at the first read, write or close, once the hub has opened
the socket's first subscription (a write made after the client saw the 101 reaches it).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .stream import Disconnected

if TYPE_CHECKING:
    from .blocking import HubThread
    from .hub import Resource
    from .websocket import WebSocketLimits, WebSocketRequest

__all__ = [
    "BlockingWebSocket",
    "ThreadedSocket",
    "offered_subprotocols",
    "poking",
    "serve_threaded",
    "valid_handshake",
]


class BlockingWebSocket(Protocol):
    """What :class:`ThreadedSocket` uses of the server object (simple-websocket's ``Server``)."""

    input_buffer: list[str | bytes]
    connected: bool
    thread: threading.Thread
    sock: socket.socket

    def send(self, data: str) -> None: ...

    def close(self, reason: int | None = None, message: str | None = None) -> None: ...


#: ``open(socket, subprotocol)`` makes the server object (writing the handshake's 101).
Opener = Callable[["ThreadedSocket", "str | None"], BlockingWebSocket]


def valid_handshake(key: str | None, version: str | None) -> bool:
    """Whether the upgrade's ``Sec-WebSocket-Key`` (16 bytes, base64) and ``-Version`` (13)
    are ones a server can accept (RFC 6455 §4.2.1); a 400 otherwise, not an exception from
    deep inside the server object."""
    try:
        valid = len(base64.b64decode(key or "", validate=True)) == 16
    except ValueError:
        valid = False
    return valid and version == "13"


def offered_subprotocols(values: Iterable[str]) -> tuple[str, ...]:
    """The subprotocols of the ``Sec-WebSocket-Protocol`` header lines, in order."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


class ThreadedSocket:
    """The runtime's socket over a blocking WebSocket that ``open`` makes (see the module
    docstring). ``closed`` are the exceptions by which a write reports a departed peer;
    :meth:`finish` runs on the request thread once the hub is done."""

    def __init__(
        self,
        open: Opener,  # noqa: A002 - what it does
        *,
        closed: tuple[type[BaseException], ...],
        write_timeout: float,
    ) -> None:
        self.opener = open
        self.closed = closed
        self.write_timeout = write_timeout
        self.subprotocol: str | None = None
        self.ws: BlockingWebSocket | None = None
        self.wake: anyio.Event | None = None
        self.token: Any = None
        self.limiter = anyio.CapacityLimiter(1)
        self.opening: anyio.Lock | None = None
        self.writing = threading.Lock()
        self.pending_close: tuple[int, str] | None = None

    def poke(self) -> None:  # from the reader thread
        wake, token = self.wake, self.token
        if wake is not None and token is not None:
            with contextlib.suppress(Exception):  # the loop has ended
                anyio.from_thread.run_sync(wake.set, token=token)

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(
            func, *args, limiter=self.limiter, abandon_on_cancel=True
        )

    async def accept(self, subprotocol: str | None) -> None:
        self.token = anyio.lowlevel.current_token()
        self.subprotocol = subprotocol
        self.opening = anyio.Lock()

    async def _open(self) -> BlockingWebSocket:
        assert self.opening is not None
        async with self.opening:
            if self.ws is None:
                self.ws = await self._call(self.opener, self, self.subprotocol)
            assert self.ws is not None
            return self.ws

    async def receive(self) -> str | bytes | None:
        ws = await self._open()
        while True:
            if ws.input_buffer:
                return ws.input_buffer.pop(0)
            if not ws.connected:
                return None
            self.wake = anyio.Event()
            if not ws.input_buffer and ws.connected:  # (or it came in just now)
                await self.wake.wait()

    def _send(self, ws: BlockingWebSocket, text: str) -> None:
        with self.writing:
            ws.send(text)

    async def send(self, text: str) -> None:
        try:
            await self._call(self._send, await self._open(), text)
        except self.closed as exc:
            raise Disconnected from exc

    def _close(self) -> None:
        with self.writing:
            ws, pending, self.pending_close = self.ws, self.pending_close, None
            if ws is not None and pending is not None and ws.connected:
                with contextlib.suppress(*self.closed):
                    ws.close(*pending)

    async def close(self, code: int, reason: str) -> None:
        self.pending_close = (code, reason)
        await self._open()
        await self._call(self._close)

    def finish(self) -> None:
        """After the hub is done (request thread): send a close that a stuck write held up,
        once that write ends (at most the write timeout), wait briefly for the peer's close,
        then end the TCP stream (which also ends the reader thread)."""
        ws = self.ws
        if ws is None:
            return
        if self.pending_close is not None and self.writing.acquire(timeout=self.write_timeout):
            self.writing.release()
            self._close()
        ws.thread.join(1.0)
        with contextlib.suppress(OSError):
            ws.sock.shutdown(socket.SHUT_RDWR)
        ws.thread.join(1.0)


def poking(server: type[Any]) -> type[Any]:
    """``server`` (simple-websocket's ``Server``) made to tell its :class:`ThreadedSocket`
    (``owner``, the first argument it is made with) when its reader thread got something: a
    message, the peer's close."""

    class Poking(server):  # type: ignore[misc]
        def __init__(self, environ: dict[str, Any], owner: ThreadedSocket, **options: Any):
            self.owner = owner
            super().__init__(environ, **options)

        def _handle_events(self) -> bool:
            keep_going: bool = super()._handle_events()
            self.owner.poke()
            return keep_going

        def _thread(self) -> None:
            try:
                super()._thread()
            finally:
                self.connected = False
                self.owner.poke()

    return Poking


def serve_threaded(
    runner: HubThread,
    resource: Resource,
    request: WebSocketRequest,
    *,
    server: type[Any],
    environ: dict[str, Any],
    closed: tuple[type[BaseException], ...],
    limits: WebSocketLimits,
    authorize: Callable[[str | None], Any] | None,
) -> bool:
    """Serve a WebSocket watch from a request thread, on ``server`` (a :func:`poking` server
    class, made as ``server(environ, owner, subprotocols=..., max_message_size=...)``, which
    writes the 101). Returns ``False`` when the hub refused it before anything was sent (the
    request is still answerable: a 400)."""
    max_bytes = limits.max_message_bytes

    def open_server(owner: ThreadedSocket, subprotocol: str | None) -> BlockingWebSocket:
        made: BlockingWebSocket = server(
            environ,
            owner,
            subprotocols=[subprotocol] if subprotocol else None,
            max_message_size=4 * max_bytes,  # the hub answers 1009
        )
        return made

    sock = ThreadedSocket(open_server, closed=closed, write_timeout=resource.hub.write_timeout)
    serve = functools.partial(
        resource.hub.serve_websocket,
        resource.name,
        request,
        sock,
        authorize=authorize,
        limits=limits,
    )
    try:
        runner.call(serve)
    except Exception:
        if sock.ws is not None:
            raise
        return False  # nothing sent
    finally:
        sock.finish()
    return True
