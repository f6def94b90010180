"""An in-memory ASGI client that reads endless streams as they are written.

Starlette's ``TestClient`` and httpx's ``ASGITransport`` collect the whole body before
returning, so they hang on a watch. This client runs the app in a task, hands each
``http.response.body`` chunk to the test as it arrives, and disconnects (``http.disconnect``)
when the test leaves the ``stream`` block or has read enough events.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import anyio
from anyio.abc import ObjectReceiveStream

from ._asgi import Disconnect, Exchange, http_scope
from ._sse import SSEMessage, SSEParser
from ._websocket import TestWebSocket, WebSocketClosed, websocket_scope

__all__ = ["Headers", "StreamResponse", "TestResponse", "WatchClient", "header_items", "target"]

T = TypeVar("T")
ASGIApp = Any  # Callable[[Scope, Receive, Send], Awaitable[None]]
Params = Mapping[str, str] | Sequence[tuple[str, str]] | None
#: Request headers: a mapping, or ``(name, value)`` pairs (to send a header more than once).
Headers = Mapping[str, str] | Sequence[tuple[str, str]] | None


def header_items(headers: Headers) -> list[tuple[str, str]]:
    """``headers`` as a list of pairs, repeats kept."""
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def target(path: str, params: Params) -> tuple[str, str]:
    """``(path, query)`` of ``path`` (which may carry a query) with ``params`` appended."""
    path, _, query = path.partition("?")
    if params:
        extra = urlencode(list(params.items()) if isinstance(params, Mapping) else params)
        query = f"{query}&{extra}" if query else extra
    return path, query


@dataclass
class TestResponse:
    """A complete (non-streaming) response."""

    __test__ = False  # not a pytest test class

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Items(Generic[T]):
    """An async iterator over ``next_item()`` results until it returns ``None``.

    A class rather than an async generator: leaving a loop early needs no ``aclosing``.
    """

    def __init__(self, next_item: Callable[[], Awaitable[T | None]], limit: int | None) -> None:
        self._next = next_item
        self._left = limit

    def __aiter__(self) -> _Items[T]:
        return self

    async def __anext__(self) -> T:
        if self._left is not None:
            if self._left <= 0:
                raise StopAsyncIteration
            self._left -= 1
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        return item


@dataclass
class StreamResponse:
    """A response whose body is read piece by piece while the app writes it.

    Read it as raw chunks, SSE blocks, JSON lines, or decoded envelopes (whatever the format);
    each reader consumes from the same body.
    """

    status: int
    headers: dict[str, str]
    _chunks: ObjectReceiveStream[bytes]
    _disconnect: Disconnect | anyio.Event
    _parser: SSEParser = field(default_factory=SSEParser)
    _messages: deque[SSEMessage] = field(default_factory=deque)
    _lines: deque[bytes] = field(default_factory=deque)
    _partial: bytes = b""
    ended: bool = False

    async def next_chunk(self) -> bytes | None:
        """The next body chunk exactly as the app sent it; ``None`` once the body ended."""
        try:
            return await self._chunks.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.ended = True
            return None

    async def next_sse(self) -> SSEMessage | None:
        """The next SSE block (events, id-only bookmarks, comments, ``retry``)."""
        while not self._messages:
            chunk = await self.next_chunk()
            if chunk is None:
                return None
            self._messages.extend(self._parser.feed(chunk))
        return self._messages.popleft()

    async def next_line(self) -> Any:
        """The next ``\\n``-terminated JSON line, decoded; ``None`` once the body ended."""
        while not self._lines:
            chunk = await self.next_chunk()
            if chunk is None:
                return None
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(lines)
        return json.loads(self._lines.popleft())

    async def next_event(self) -> Any:
        """The next envelope: an SSE block with data, or a JSON line; ``None`` at the end."""
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            return await self.next_line()
        while (message := await self.next_sse()) is not None:
            if message.data is not None:
                return json.loads(message.data)
        return None

    def chunks(self, limit: int | None = None) -> _Items[bytes]:
        return _Items(self.next_chunk, limit)

    def sse(self, limit: int | None = None) -> _Items[SSEMessage]:
        return _Items(self.next_sse, limit)

    def json_lines(self, limit: int | None = None) -> _Items[Any]:
        return _Items(self.next_line, limit)

    def events(self, limit: int | None = None) -> _Items[Any]:
        return _Items(self.next_event, limit)

    async def read(self) -> bytes:
        """Everything until the app ends the body (for responses that end)."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def take(self, n: int) -> list[Any]:
        """The next ``n`` envelopes (waits for them; fewer if the body ends)."""
        return [e async for e in self.events(n)]

    def disconnect(self) -> None:
        """Tell the app the client went away (``http.disconnect``)."""
        self._disconnect.set()


class InMemoryRequests:
    """What every in-memory client builds on its ``stream()``: whole requests and watches."""

    __test__ = False

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> AbstractAsyncContextManager[StreamResponse]:
        raise NotImplementedError

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> TestResponse:
        """A request whose body the app ends; returns it whole."""
        async with self.stream(
            method, path, params=params, headers=headers, body=body, json_body=json_body
        ) as response:
            data = await response.read()
        return TestResponse(response.status, response.headers, data)

    async def get(self, path: str, **kwargs: Any) -> TestResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> TestResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> TestResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return await self.request("DELETE", path, **kwargs)

    async def watch(
        self,
        path: str,
        n: int,
        *,
        params: Params = None,
        headers: Headers = None,
    ) -> list[Any]:
        """Open a watch, read ``n`` envelopes, disconnect, return them."""
        async with self.stream("GET", path, params=params, headers=headers) as response:
            return await response.take(n)


class WatchClient(InMemoryRequests):
    """Drive an ASGI app in memory: plain requests, and streams read as they are written."""

    __test__ = False

    def __init__(self, app: ASGIApp, *, host: str = "testserver", direct: bool = True) -> None:
        self.app = app
        self.host = host
        #: Serve GETs as ``watchroutes.adapters.uvicorn.Server`` does (the direct write path
        #: and the hand-over of a watch); False: as any other ASGI server.
        self.direct = direct

    def _scope(self, method: str, path: str, params: Params, headers: Headers) -> dict[str, Any]:
        path, query = target(path, params)
        raw_headers = [(b"host", self.host.encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in header_items(headers)]
        return http_scope(method, path, query.encode(), raw_headers, server=(self.host, 80))

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> AsyncIterator[StreamResponse]:
        """Open a request and yield once its headers arrive; leaving the block disconnects."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = [("content-type", "application/json"), *header_items(headers)]
        scope = self._scope(method, path, params, headers)
        sink = _StreamSink()
        async with anyio.create_task_group() as tg:
            exchange = Exchange(body, sink, direct=self.direct)
            tg.start_soon(exchange.run, self.app, scope)
            await sink.started.wait()
            if not sink.head:
                raise RuntimeError("the app returned without starting a response")
            start = sink.head
            recv_chunk = sink.receiver
            disconnect = exchange.disconnect
            response = StreamResponse(
                status=start["status"],
                headers={k.decode().lower(): v.decode() for k, v in start.get("headers", [])},
                _chunks=recv_chunk,
                _disconnect=disconnect,
            )
            try:
                yield response
            finally:
                disconnect.set()
                with anyio.move_on_after(5):
                    await _drain(recv_chunk)
                recv_chunk.close()
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def websocket(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        subprotocols: Sequence[str] = ("watchroutes.v1",),
    ) -> AsyncIterator[TestWebSocket]:
        """Open a WebSocket and yield once the app accepted it; leaving the block closes it.

        Raises :class:`WebSocketClosed` when the app closes before accepting.
        """
        http = self._scope("GET", path, params, headers)
        scope = websocket_scope(
            http["path"],
            http["query_string"],
            http["headers"],
            list(subprotocols),
            server=(self.host, 80),
        )
        socket = TestWebSocket()
        async with anyio.create_task_group() as tg:
            tg.start_soon(socket._run, self.app, scope)
            await socket.accepted.wait()
            try:
                if socket.was_accepted:
                    yield socket
            finally:
                if not socket.finished.is_set():
                    await socket.close()
                    with anyio.move_on_after(5):
                        await socket.finished.wait()
                tg.cancel_scope.cancel()
                socket._dispose()
        if not socket.was_accepted:
            raise WebSocketClosed(socket.close_code or 1006, socket.close_reason)


class _StreamSink:
    """Chunks into a memory stream for :class:`StreamResponse`."""

    def __init__(self) -> None:
        self.sender, self.receiver = anyio.create_memory_object_stream[bytes](math.inf)
        self.started = anyio.Event()
        self.head: dict[str, Any] = {}

    def start(self, message: dict[str, Any]) -> None:
        self.head = message
        self.started.set()

    def chunk(self, data: bytes) -> None:
        self.sender.send_nowait(data)

    def end(self) -> None:
        self.sender.close()
        self.started.set()


async def _drain(stream: ObjectReceiveStream[bytes]) -> None:
    async for _ in stream:
        pass
