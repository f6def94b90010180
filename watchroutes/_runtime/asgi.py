"""An ASGI wrapper around an application whose handler refuses lifespan and WebSocket scopes
(Django's): the lifespan enters and leaves the hubs, a WebSocket goes to the adapter's own
handler (over :class:`ASGISocket`), and HTTP goes to the application with its body limited
while it is read and every write bounded by the hubs' write timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio

from .._core.errors import ClientError
from .._core.params import Mode
from .reply import BodyLimit, error_reply
from .stream import Disconnected, stream_chunks
from .websocket import WebSocketRequest

if TYPE_CHECKING:
    from .hub import Hub
    from .reply import Reply

__all__ = [
    "ASGIApp",
    "ASGISocket",
    "Scope",
    "asgi_websocket_request",
    "asgi_wrapper",
    "reply_chunks",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Any]


class ASGISocket:
    """An ASGI WebSocket as the runtime's socket."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.gone = False

    async def accept(self, subprotocol: str | None) -> None:
        await self._receive()  # websocket.connect
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})

    async def receive(self) -> str | bytes | None:
        if self.gone:
            return None
        message = await self._receive()
        if message["type"] != "websocket.receive":
            self.gone = True
            return None
        if message.get("text") is not None:
            return str(message["text"])
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        if self.gone:
            raise Disconnected
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:  # uvicorn's ClientDisconnected
            self.gone = True
            raise Disconnected from exc

    async def close(self, code: int, reason: str) -> None:
        if not self.gone:
            self.gone = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


async def reply_chunks(reply: Reply) -> AsyncIterator[bytes]:
    """A watch reply's whole body as an async iterator: its first chunk, even empty (the
    headers go out at once), then the stream's (released when the iterator is closed)."""
    assert reply.stream is not None
    chunks = stream_chunks(reply.stream)
    try:
        yield reply.body
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()


def asgi_websocket_request(
    scope: Scope, key: str | None, cookies: Callable[[str], dict[str, str]]
) -> WebSocketRequest:
    """A WebSocket scope, framework-neutral; ``cookies`` parses a ``Cookie`` header."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    cookie = headers.get("cookie")
    return WebSocketRequest(
        query=parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True),
        subprotocols=tuple(scope.get("subprotocols") or ()),
        origin=headers.get("origin"),
        host=headers.get("host"),
        secure=scope.get("scheme") == "wss",
        key=key,
        authorization=headers.get("authorization"),
        headers=headers,
        cookies=cookies(cookie) if cookie else {},
        client=(scope.get("client") or (None,))[0],
    )


def asgi_wrapper(
    application: ASGIApp,
    hubs: Sequence[Hub],
    *,
    websocket: Callable[[Scope, Receive, Send], Awaitable[None]],
    max_body: int,
    aborted: type[BaseException],
) -> ASGIApp:
    """``application`` with the hubs' lifespan, ``websocket`` for WebSocket scopes, and HTTP
    bodies limited to ``max_body`` (the application's handler may read a whole body without a
    limit). A write that takes longer than the hubs' write timeout raises ``aborted`` (the
    exception by which the handler ends a response quietly): a peer that stopped reading is
    let go, as under the other adapters."""
    write_timeout = max(h.write_timeout for h in hubs)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(hubs, receive, send)
        elif scope["type"] == "websocket":
            await websocket(scope, receive, send)
        else:
            deadline = _WriteDeadline(write_timeout, aborted)
            try:
                await _limited(application, max_body, scope, receive, deadline.bind(send))
            finally:
                deadline.close()

    return app


class _WriteDeadline:
    """The time limit of each write of one response. On asyncio one timer serves all its
    writes: a write only stamps its deadline, and the timer, when it fires, cancels a write
    still running past its deadline or moves on to the current deadline (a timer and a cancel
    scope per write cost ten times the write). Elsewhere, a cancel scope per write."""

    def __init__(self, timeout: float, aborted: type[BaseException]) -> None:
        self.timeout = timeout
        self.aborted = aborted
        self.loop = _running_asyncio_loop()
        self.due: float | None = None  # the running write's deadline (None: no write)
        self.timer: asyncio.TimerHandle | None = None
        self.writer: asyncio.Task[Any] | None = None
        self.expired = False

    def bind(self, send: Send) -> Send:
        loop = self.loop
        if loop is None:

            async def scoped_send(message: Any) -> None:
                try:
                    with anyio.fail_after(self.timeout):
                        await send(message)
                except TimeoutError:
                    raise self.aborted from None

            return scoped_send

        async def timed_send(message: Any) -> None:
            self.due = due = loop.time() + self.timeout
            if self.timer is None:
                self.timer = loop.call_at(due, self._check)
            self.writer = asyncio.current_task()
            try:
                await send(message)
            except asyncio.CancelledError:
                if not self.expired:
                    raise
                self.expired = False
                if self.writer is not None:
                    self.writer.uncancel()
                raise self.aborted from None
            finally:
                self.due = self.writer = None

        return timed_send

    def _check(self) -> None:
        assert self.loop is not None
        self.timer = None
        due = self.due
        if due is None:  # no write running: the next one arms the timer again
            return
        if self.loop.time() < due:  # an earlier write ended; this one has time left
            self.timer = self.loop.call_at(due, self._check)
        elif self.writer is not None:
            self.expired = True
            self.writer.cancel()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return None


async def _limited(
    application: ASGIApp, limit: int, scope: Scope, receive: Receive, send: Send
) -> None:
    headers = dict(scope.get("headers") or ())
    try:
        length = headers.get(b"content-length")
        counter = BodyLimit(limit, None if length is None else length.decode("latin-1"))
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            counter.feed(message.get("body", b""))
            more = message.get("more_body", False)
    except ClientError as exc:
        reply = error_reply(exc, Mode.LIST, retry_ms=0)
        raw = [(k.encode(), v.encode()) for k, v in reply.headers]
        raw.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        await send({"type": "http.response.body", "body": reply.body})
        return
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": counter.body(), "more_body": False}
        return await receive()

    await application(scope, replay, send)


async def _lifespan(hubs: Sequence[Hub], receive: Receive, send: Send) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await receive()  # lifespan.startup
        try:
            for hub in hubs:
                await stack.enter_async_context(hub)
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)[:200]})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})
