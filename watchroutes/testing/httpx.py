"""httpx transports that stream an ASGI app's response while it is being written.

httpx's own ``ASGITransport`` (and Starlette's ``TestClient``) wait for the whole body, so a
watch never returns. These run the app in an event loop (a blocking portal for the sync
transport) and hand each chunk to ``iter_raw()``/``aiter_raw()`` as it arrives; closing the
response tells the app the client disconnected::

    with httpx.Client(transport=StreamingASGITransport(app), base_url="http://test") as c:
        with c.stream("GET", "/orders", params={"watch": "1"}) as r:
            for chunk in r.iter_raw(): ...
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without httpx
    raise ImportError("watchroutes.testing.httpx needs httpx: pip install httpx") from exc

__all__ = ["AsyncStreamingASGITransport", "StreamingASGITransport"]

_END = object()
#: How long to wait for the app to start its response or to finish after a disconnect.
START_TIMEOUT = 10.0


def _scope(request: httpx.Request) -> dict[str, Any]:
    url = request.url
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "client": ("127.0.0.1", 50000),
        "server": (host, port),
        "state": {},
    }


class _Exchange:
    """One request/response between a client thread and the app running in the portal."""

    def __init__(self, app: Any, request: httpx.Request, body: bytes) -> None:
        self.app = app
        self.scope = _scope(request)
        self.body = body
        self.chunks: queue.Queue[object] = queue.Queue()
        self.started = threading.Event()
        self.start: dict[str, Any] = {}
        self.disconnect: anyio.Event | None = None
        self.finished = threading.Event()
        self.error: BaseException | None = None

    async def run(self) -> None:
        self.disconnect = anyio.Event()
        disconnect = self.disconnect
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.start = message
                self.started.set()
            elif message["type"] == "http.response.body":
                if disconnect.is_set():
                    raise OSError("the client disconnected")
                if message.get("body"):
                    self.chunks.put(bytes(message["body"]))
                if not message.get("more_body", False):
                    self.chunks.put(_END)

        try:
            await self.app(self.scope, receive, send)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.chunks.put(_END)
            self.started.set()
            self.finished.set()

    def response(self, stream: Any) -> httpx.Response:
        if not self.started.wait(START_TIMEOUT):
            raise TimeoutError("the app did not start a response")
        if not self.start:
            raise RuntimeError("the app returned without a response") from self.error
        return httpx.Response(
            self.start["status"], headers=list(self.start.get("headers", [])), stream=stream
        )


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, exchange: _Exchange, portal: anyio.from_thread.BlockingPortal) -> None:
        self.exchange = exchange
        self.portal = portal

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.exchange.chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk

    def close(self) -> None:
        exchange = self.exchange
        if exchange.disconnect is not None and not exchange.finished.is_set():
            with contextlib.suppress(anyio.RunFinishedError, RuntimeError):
                self.portal.call(exchange.disconnect.set)
        exchange.finished.wait(START_TIMEOUT)


class StreamingASGITransport(httpx.BaseTransport):
    """A sync httpx transport running the ASGI app in a background event loop."""

    def __init__(self, app: Any, *, backend: str = "asyncio") -> None:
        self.app = app
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        self.portal = self._portal_cm.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(self.app, request, request.read())
        self.portal.start_task_soon(exchange.run)
        return exchange.response(_SyncBody(exchange, self.portal))

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, chunks: anyio.abc.ObjectReceiveStream[bytes], disconnect: Any) -> None:
        self.chunks = chunks
        self.disconnect = disconnect

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.disconnect()
        await self.chunks.aclose()


class AsyncStreamingASGITransport(httpx.AsyncBaseTransport):
    """An async httpx transport; the app runs as a task of the caller's event loop.

    Use it inside ``async with anyio.create_task_group() as tg`` and pass ``tg``: the
    app's tasks must outlive ``handle_async_request``.
    """

    def __init__(self, app: Any, task_group: anyio.abc.TaskGroup) -> None:
        self.app = app
        self.task_group = task_group

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = _scope(request)
        send_chunk, recv_chunk = anyio.create_memory_object_stream[bytes](math.inf)
        disconnect = anyio.Event()
        started = anyio.Event()
        start: dict[str, Any] = {}
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                if disconnect.is_set():
                    raise OSError("the client disconnected")
                if message.get("body"):
                    send_chunk.send_nowait(bytes(message["body"]))
                if not message.get("more_body", False):
                    send_chunk.close()

        async def run() -> None:
            with send_chunk:
                try:
                    await self.app(scope, receive, send)
                finally:
                    started.set()

        self.task_group.start_soon(run)
        with anyio.fail_after(START_TIMEOUT):
            await started.wait()
        if not start:
            raise RuntimeError("the app returned without a response")
        return httpx.Response(
            start["status"],
            headers=list(start.get("headers", [])),
            stream=_AsyncBody(recv_chunk, disconnect.set),
        )
