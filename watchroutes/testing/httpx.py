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
import anyio.abc
import anyio.from_thread
from anyio.from_thread import BlockingPortal

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without httpx
    raise ImportError("watchroutes.testing.httpx needs httpx: pip install httpx") from exc

from ._asgi import Exchange, http_scope

__all__ = ["AsyncStreamingASGITransport", "StreamingASGITransport"]

_END = object()
#: How long to wait for the app to start its response or to finish after a disconnect.
START_TIMEOUT = 10.0


def _scope(request: httpx.Request) -> dict[str, Any]:
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    return http_scope(
        request.method,
        url.path,
        url.query,
        [(k.lower(), v) for k, v in request.headers.raw],
        scheme=url.scheme,
        server=(url.host, port),
    )


class _QueueSink:
    """Chunks into a thread-safe queue, for a client in another thread."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[object] = queue.Queue()
        self.started = threading.Event()
        self.finished = threading.Event()
        self.head: dict[str, Any] = {}

    def start(self, message: dict[str, Any]) -> None:
        self.head = message
        self.started.set()

    def chunk(self, data: bytes) -> None:
        self.chunks.put(data)

    def end(self) -> None:
        self.chunks.put(_END)
        self.started.set()


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, sink: _QueueSink, exchange: Exchange, portal: BlockingPortal) -> None:
        self.sink = sink
        self.exchange = exchange
        self.portal = portal

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.sink.chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk

    def close(self) -> None:
        if not self.sink.finished.is_set():
            with contextlib.suppress(anyio.RunFinishedError, RuntimeError):
                self.portal.call(self.exchange.disconnect.set)
        self.sink.finished.wait(START_TIMEOUT)


def _response(head: dict[str, Any], stream: Any) -> httpx.Response:
    if not head:
        raise RuntimeError("the app returned without a response")
    return httpx.Response(head["status"], headers=list(head.get("headers", [])), stream=stream)


class StreamingASGITransport(httpx.BaseTransport):
    """A sync httpx transport running the ASGI app in a background event loop."""

    def __init__(self, app: Any, *, backend: str = "asyncio", direct: bool = True) -> None:
        self.app = app
        #: As ``WatchClient``'s: serve GETs as watchroutes' uvicorn protocols do.
        self.direct = direct
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        self.portal = self._portal_cm.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sink = _QueueSink()
        scope = _scope(request)
        body = request.read()

        async def make() -> Exchange:
            return Exchange(body, sink, direct=self.direct)

        exchange = self.portal.call(make)

        async def run() -> None:
            try:
                await exchange.run(self.app, scope)
            finally:
                sink.finished.set()

        self.portal.start_task_soon(run)
        if not sink.started.wait(START_TIMEOUT):
            raise TimeoutError("the app did not start a response")
        return _response(sink.head, _SyncBody(sink, exchange, self.portal))

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, sink: _MemorySink, exchange: Exchange) -> None:
        self.sink = sink
        self.exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.sink.receiver:
            yield chunk

    async def aclose(self) -> None:
        self.exchange.disconnect.set()
        await self.sink.receiver.aclose()


class _MemorySink:
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


class AsyncStreamingASGITransport(httpx.AsyncBaseTransport):
    """An async httpx transport; the app runs as a task of the caller's event loop.

    Use it inside ``async with anyio.create_task_group() as tg`` and pass ``tg``: the
    app's tasks must outlive ``handle_async_request``.
    """

    def __init__(self, app: Any, task_group: anyio.abc.TaskGroup, *, direct: bool = True) -> None:
        self.app = app
        self.task_group = task_group
        self.direct = direct

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sink = _MemorySink()
        exchange = Exchange(await request.aread(), sink, direct=self.direct)
        self.task_group.start_soon(exchange.run, self.app, _scope(request))
        with anyio.fail_after(START_TIMEOUT):
            await sink.started.wait()
        return _response(sink.head, _AsyncBody(sink, exchange))
