"""An in-memory ASGI client that reads endless streams as they are written.

Starlette's ``TestClient`` and httpx's ``ASGITransport`` collect the whole body before
returning, so they hang on a watch. This client runs the app in a task, hands each
``http.response.body`` chunk to the test as it arrives, and disconnects (``http.disconnect``)
when the test leaves the ``stream`` block or has read enough events.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import anyio
from anyio.abc import ObjectReceiveStream

from ._sse import SSEMessage, SSEParser

__all__ = ["StreamResponse", "TestResponse", "WatchClient"]

ASGIApp = Any  # Callable[[Scope, Receive, Send], Awaitable[None]]
Params = Mapping[str, str] | Sequence[tuple[str, str]] | None


@dataclass
class TestResponse:
    """A complete (non-streaming) response."""

    __test__ = False  # not a pytest test class

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StreamResponse:
    """A response whose body is read chunk by chunk while the app writes it."""

    status: int
    headers: dict[str, str]
    _chunks: ObjectReceiveStream[bytes]
    _disconnect: anyio.Event
    _buffer: bytes = b""
    _parser: SSEParser = field(default_factory=SSEParser)
    ended: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks exactly as the app sent them, until the body ends."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            yield data
        async for chunk in self._chunks:
            yield chunk
        self.ended = True

    async def read(self) -> bytes:
        """Everything until the app ends the body (for streams that end)."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def sse(self, limit: int | None = None) -> AsyncIterator[SSEMessage]:
        """Every SSE block (events, id-only bookmarks, comments, retry), parsed per WHATWG."""
        count = 0
        if limit == 0:
            return
        async for chunk in self.chunks():
            for message in self._parser.feed(chunk):
                yield message
                count += 1
                if limit is not None and count >= limit:
                    return

    async def json_lines(self, limit: int | None = None) -> AsyncIterator[Any]:
        """Each ``\\n``-terminated JSON line (a watch envelope), decoded."""
        count = 0
        pending = b""
        if limit == 0:
            return
        async for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield json.loads(line)
                count += 1
                if limit is not None and count >= limit:
                    self._buffer = pending
                    return

    async def events(self, limit: int | None = None) -> AsyncIterator[Any]:
        """Envelopes, whatever the format: SSE data blocks or JSON lines, decoded."""
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            count = 0
            async for message in self.sse():
                if message.data is None:
                    continue
                yield json.loads(message.data)
                count += 1
                if limit is not None and count >= limit:
                    return
        else:
            async for item in self.json_lines(limit):
                yield item

    async def take(self, n: int) -> list[Any]:
        """The next ``n`` envelopes (waits for them)."""
        return [e async for e in self.events(n)]

    def disconnect(self) -> None:
        """Tell the app the client went away (``http.disconnect``)."""
        self._disconnect.set()


class WatchClient:
    """Drive an ASGI app in memory: plain requests, and streams read as they are written."""

    __test__ = False

    def __init__(self, app: ASGIApp, *, host: str = "testserver") -> None:
        self.app = app
        self.host = host

    def _scope(
        self, method: str, path: str, params: Params, headers: Mapping[str, str] | None
    ) -> dict[str, Any]:
        path, _, query = path.partition("?")
        if params:
            extra = urlencode(list(params.items()) if isinstance(params, Mapping) else params)
            query = f"{query}&{extra}" if query else extra
        raw_headers = [(b"host", self.host.encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": (self.host, 80),
            "state": {},
        }

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> AsyncIterator[StreamResponse]:
        """Open a request and yield once its headers arrive; leaving the block disconnects."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        scope = self._scope(method, path, params, headers)
        disconnect = anyio.Event()
        send_chunk, recv_chunk = anyio.create_memory_object_stream[bytes](math.inf)
        started = anyio.Event()
        start: dict[str, Any] = {}
        request_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                if disconnect.is_set():
                    raise OSError("the test client disconnected")
                if message.get("body"):
                    send_chunk.send_nowait(message["body"])
                if not message.get("more_body", False):
                    send_chunk.close()

        async def run_app() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                send_chunk.close()
                started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_app)
            await started.wait()
            if not start:
                raise RuntimeError("the app returned without starting a response")
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
                tg.cancel_scope.cancel()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
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
        headers: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """Open a watch, read ``n`` envelopes, disconnect, return them."""
        async with self.stream("GET", path, params=params, headers=headers) as response:
            return await response.take(n)


async def _drain(stream: ObjectReceiveStream[bytes]) -> None:
    async for _ in stream:
        pass
