"""One in-memory HTTP exchange with an ASGI app: the part every test transport shares.

The app gets the request body, then ``http.disconnect`` once the client goes away; the
response start and every body chunk go to a :class:`Sink` as the app sends them.

With ``direct`` (the clients' default), a GET is served as ``watchroutes.adapters.uvicorn``'s
protocols serve it: the exchange offers its connection to the direct write path (a publish
writes to an idle watch's sink itself) and runs a watch the app hands over, so tests see what
that server does. ``direct=False`` is any other ASGI server: a task per watch, in the app.
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio

from ..adapters import DIRECT_EXTENSION, AsgiDirect, run_app

__all__ = ["Disconnect", "Exchange", "Sink", "http_scope"]


class Sink(Protocol):
    def start(self, message: dict[str, Any]) -> None:
        """``http.response.start`` arrived (``status``, ``headers``)."""
        ...

    def chunk(self, data: bytes) -> None: ...

    def end(self) -> None:
        """The body ended, or the app returned (called at least once, maybe twice)."""
        ...


def http_scope(
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    scheme: str = "http",
    server: tuple[str, int] = ("testserver", 80),
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": server,
        "state": {},
    }


class Disconnect:
    """The client's "I left": an event that also tells the direct write path at once."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.direct: _Direct | None = None

    def set(self) -> None:
        self._event.set()
        if self.direct is not None:
            self.direct.lost()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class _Direct(AsgiDirect):
    """The exchange's connection on the direct write path (its rules: ``AsgiDirect``)."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(exchange.send)
        self._exchange = exchange

    def connected(self) -> bool:
        exchange = self._exchange
        return exchange.started and not exchange.ended and not exchange.disconnect.is_set()

    def disconnected(self) -> bool:
        return self._exchange.disconnect.is_set()

    def write(self, data: bytes) -> None:
        if self._exchange.disconnect.is_set():
            raise OSError("the test client disconnected")
        self._exchange.sink.chunk(bytes(data))


class Exchange:
    """Create inside the event loop that runs the app."""

    def __init__(self, body: bytes, sink: Sink, *, direct: bool = True) -> None:
        self.body = body
        self.sink = sink
        self.disconnect = Disconnect()
        self.started = False
        self.ended = False
        self.direct = direct
        self._request_sent = False
        self._gone: OSError | None = None

    async def receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.sink.start(message)
        elif message["type"] == "http.response.body":
            if self.disconnect.is_set():
                # ASGI 2.4: a send on a closed connection raises a subclass of OSError
                self._gone = OSError("the test client disconnected")
                raise self._gone
            if message.get("body"):
                self.sink.chunk(bytes(message["body"]))
            if not message.get("more_body", False):
                self.ended = True
                self.sink.end()

    async def run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            if self.direct and scope["method"] == "GET":
                direct = _Direct(self)
                scope.setdefault("extensions", {})[DIRECT_EXTENSION] = direct
                self.disconnect.direct = direct
                await run_app(app, scope, self.receive, direct.send)
            else:
                await app(scope, self.receive, self.send)
        except OSError as exc:
            # An app that lets the failed write to a departed client through (Starlette's
            # BaseHTTPMiddleware does) ends as it would on a server, which drops that error;
            # any other error reaches the test.
            if exc is not self._gone:
                raise
        finally:
            self.sink.end()
