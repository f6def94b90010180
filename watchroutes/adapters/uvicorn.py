"""Hubs' lifecycle and graceful shutdown under uvicorn run from Python (protocol.md §5.6).

This ``Server`` starts its hubs before serving (a hub on a shared log loads it and starts its
follower), ends the hubs' streams (final bookmark, then the end; clients resume elsewhere) as
soon as the exit signal arrives, before uvicorn starts waiting for connections, and can print
a readiness line (``announce=True``). A hub entered in the app's lifespan does the same on its
own under plain ``uvicorn app:app`` (it chains the exit signals' handlers while it runs, see
``watchroutes._runtime.signals``); both together are fine, since beginning a shutdown twice is
harmless::

    config = uvicorn.Config(app, host="127.0.0.1", port=8000)
    Server(config, hubs=[hub]).run()

It also serves on the **direct write path** (``docs/operations.md``): its HTTP protocols
(:class:`HttpToolsProtocol`, :class:`H11Protocol`, uvicorn's own with one addition) offer each
request's connection to the app as the ASGI extension ``watchroutes.direct``, and the
Starlette adapter's watches then take a publish's frame straight to the socket of an idle
watcher instead of waking its task. Under the ``uvicorn`` command the same protocols are one
option away::

    uvicorn app:app --http watchroutes.adapters.uvicorn:HttpToolsProtocol

Any other server (hypercorn, daphne) or a middleware that changes response bodies leaves the
watches on the plain ASGI path, which behaves the same, a task per watcher.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
from collections.abc import Awaitable, Iterable
from typing import Any

try:
    import h11
    import uvicorn
    from uvicorn.protocols.http import h11_impl
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.uvicorn needs uvicorn: pip install 'watchroutes[server]'"
    ) from exc

from . import DIRECT_EXTENSION, AsgiDirect, Hub, freeze_startup_objects, http_chunk, run_app

__all__ = ["H11Protocol", "HttpToolsProtocol", "Server"]


class _Direct(AsgiDirect):
    """One uvicorn response's connection on the direct write path (its rules: the contract's
    ``AsgiDirect``)."""

    __slots__ = ("_cycle", "_frame")

    def __init__(self, cycle: Any, h11_conn: h11.Connection | None) -> None:
        super().__init__(cycle.send)
        self._cycle = cycle
        #: h11 frames the body itself (its state must see every byte); httptools' cycle
        #: writes HTTP/1.1 chunks, as :func:`http_chunk` does.
        self._frame = h11_conn
        cycle.send = self.send

    def connected(self) -> bool:
        cycle = self._cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused  # over the transport's high-water mark
            and not cycle.transport.is_closing()
            and (self._frame is not None or cycle.chunked_encoding is True)
        )

    def disconnected(self) -> bool:
        return bool(self._cycle.disconnected)

    def write(self, data: bytes) -> None:
        conn = self._frame
        if conn is None:
            self._cycle.transport.write(http_chunk(data))
            return
        framing = _h11_framing(conn)
        if framing is _CHUNKED:
            self._cycle.transport.write(http_chunk(data))
        elif framing is _UNTIL_CLOSE:
            self._cycle.transport.write(data)
        else:
            self._cycle.transport.write(conn.send(h11.Data(data=data)))


_CHUNKED = "chunked"
_UNTIL_CLOSE = "until-close"


def _h11_framing(conn: h11.Connection) -> str | None:
    """How h11 frames this response's body, when it keeps no count of it: chunks (HTTP/1.1)
    or the bytes as they are until the connection closes (HTTP/1.0); ``None`` otherwise
    (then ``conn.send`` frames it, at several µs a write)."""
    writer = type(getattr(conn, "_writer", None)).__name__
    if writer == "ChunkedWriter":
        return _CHUNKED
    if writer == "Http10Writer":
        return _UNTIL_CLOSE
    return None


class _Detaching:
    """The app as the protocols call it: the app, then the watch it handed over."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return run_app(self.app, scope, receive, send)


def _offer(protocol: Any, scope: Any, cycle: Any, h11_conn: h11.Connection | None) -> None:
    if cycle is not None and cycle.scope is scope and scope.get("method") == "GET":
        direct = _Direct(cycle, h11_conn)
        scope.setdefault("extensions", {})[DIRECT_EXTENSION] = direct
        protocol.watchroutes_direct = direct


def _detaching(config: Any) -> _Detaching:
    """The config's app wrapped once (every connection's protocol shares it)."""
    app = getattr(config, "_watchroutes_detaching", None)
    if app is None or app.app is not config.loaded_app:
        app = _Detaching(config.loaded_app)
        config._watchroutes_detaching = app
    return app


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol, offering each GET's connection to the direct write path."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.app = _detaching(config)
        #: The current request's connection on the direct write path (set in __init__, so
        #: the instance dict keeps its shared keys: adding it later cost 1.5 KiB).
        self.watchroutes_direct: _Direct | None = None

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not before:  # (at most one request starts per call: h11 pauses after it)
            _offer(self, self.scope, cycle, self.conn)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.watchroutes_direct is not None:
            self.watchroutes_direct.lost()


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http import httptools_impl

    class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
        """uvicorn's httptools protocol, offering each GET's connection to the direct write
        path."""

        def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.app = _detaching(config)
            self.watchroutes_direct: _Direct | None = None

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            _offer(self, self.scope, self.cycle, None)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if self.watchroutes_direct is not None:
                self.watchroutes_direct.lost()

else:  # pragma: no cover - uvicorn without httptools
    HttpToolsProtocol = H11Protocol  # type: ignore[misc,assignment]


def _direct_protocol(http: object) -> object:
    """The protocol with the direct write path that stands for uvicorn's ``http`` setting."""
    if http == "h11":
        return H11Protocol
    if http in ("auto", "httptools"):
        return HttpToolsProtocol
    return http  # the app's own protocol class: left as it is


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that shuts its hubs down first, can announce readiness, serves
    watches on the direct write path (``direct=False``: uvicorn's own protocols), and freezes
    the objects of start-up out of the garbage collector's way (``freeze_gc=False``: not)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        hubs: Iterable[Hub],
        announce: bool = False,
        direct: bool = True,
        freeze_gc: bool = True,
    ) -> None:
        if direct:
            config.http = _direct_protocol(config.http)  # type: ignore[assignment]
        super().__init__(config)
        self.hubs = list(hubs)
        self.announce = announce
        self.freeze_gc = freeze_gc

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the first listening socket (the real port for port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                if sock.family == socket.AF_INET6:
                    host = f"[{host}]"
                return f"http://{host}:{port}"
        return f"http://{self.config.host}:{self.config.port}"

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for hub in self.hubs:
                await stack.enter_async_context(hub)
            await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        for hub in self.hubs:
            hub.bind()
        await super().startup(sockets)
        if self.started and self.freeze_gc:
            freeze_startup_objects()
        if self.started and self.announce:
            print(f"ready {self.url}", flush=True)
            sys.stdout.flush()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for hub in self.hubs:
            await hub.aclose()
        await super().shutdown(sockets)
