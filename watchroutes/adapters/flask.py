"""Flask adapter: make a Flask route watchable, on a threaded WSGI server.

::

    hub = Hub(max_watches=48)              # below the server's thread count (see below)
    orders = hub.resource("orders", kind="Order")
    watch = WatchRoutes(app, hub)          # or watch.init_app(app) in an app factory

    @app.get("/orders")
    @watchable(orders)                     # a watch when the client asks for one
    def list_orders(): ...                 # runs only for a plain GET

    app.add_url_rule("/orders/<name>", view_func=watch_view(orders, key="name"))

A watch holds its request thread for its whole life (WSGI has no other way to stream), so the
server must be threaded and must not buffer: gunicorn ``-k gthread --threads N`` (or waitress
with ``send_bytes=1``). ``Hub(max_watches=...)`` keeps watches below N so that plain requests
always find a thread; past it a watch gets a retryable 503 (SSE: 200, ``retry:``, ERROR).

Everything a watch needs is read from the request before the response starts, and the stream
never runs inside the request context (no ``stream_with_context``): teardown, and the release
of the app's database session, happen before the first event. The hub's loop runs in one
background thread per process (:class:`HubThread`), started on first use or by
:func:`post_worker_init`; a departed client is noticed when a write fails, which heartbeats
bound to one heartbeat interval. A WebSocket upgrade on the same URL is served through
simple-websocket (the package behind flask-sock), with the Origin and subprotocol rules of the
hub; gunicorn hooks: ``from watchroutes.adapters.flask import post_worker_init, worker_int``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import selectors
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

try:
    import simple_websocket
    from flask import Flask, Response, current_app, has_request_context, request
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.flask needs Flask and simple-websocket: "
        "pip install 'watchroutes[flask]'"
    ) from exc

from watchroutes import BadRequest, ClientError

from . import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    BodyLimit,
    Disconnected,
    Hub,
    HubThread,
    Reply,
    RequestInfo,
    Resource,
    WebSocketLimits,
    WebSocketRequest,
    decode_json,
    is_watch,
    mounted,
    status_reply,
    wsgi_body,
)

__all__ = [
    "WatchRoutes",
    "error_response",
    "list_response",
    "post_worker_init",
    "read_body",
    "read_json",
    "reply_response",
    "request_info",
    "watch_view",
    "watchable",
    "websocket_view",
    "worker_int",
]

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSION = "watchroutes"
#: A refused body declared at most this many times the limit is read (and dropped) before
#: the 413 goes out (see :func:`read_body`).
DRAIN_FACTOR = 16
_INSTANCES: weakref.WeakSet[WatchRoutes] = weakref.WeakSet()


class WatchRoutes:
    """The Flask extension: runs ``hub`` in a :class:`HubThread` for the app's process.

    The thread starts on the first request that needs it (after a fork, never before) or at
    :meth:`start`; it stops at interpreter exit, from the gunicorn hooks, or at :meth:`stop`,
    which ends every watch with a final bookmark. ``limits`` and ``authorize`` (called with the
    bearer token a WebSocket presented; raise ``Unauthorized`` or ``Forbidden``) apply to
    WebSocket watches.
    """

    def __init__(
        self,
        app: Flask | None = None,
        hub: Hub | None = None,
        *,
        limits: WebSocketLimits | None = None,
        authorize: Callable[[str | None], None] | None = None,
    ) -> None:
        self.hub = hub
        self.limits = limits
        self.authorize = authorize
        self.runner: HubThread | None = None
        self._lock = threading.Lock()
        _INSTANCES.add(self)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, hub: Hub | None = None) -> None:
        self.hub = hub or self.hub
        if self.hub is None:
            raise TypeError("WatchRoutes needs a hub: WatchRoutes(app, hub) or init_app(app, hub)")
        app.extensions[_EXTENSION] = self

    def start(self) -> HubThread:
        """Start the hub's thread (once); returns it."""
        with self._lock:
            if self.runner is None:
                assert self.hub is not None, "init_app(app, hub) first"
                self.runner = HubThread(self.hub).start()
                atexit.register(self.stop, 8.0)  # (a no-op once stopped)
            return self.runner

    def stop(self, timeout: float | None = None) -> None:
        """End every watch resumably and stop the hub's thread."""
        with self._lock:
            runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop(timeout)

    def answer(self, resource: Resource, info: RequestInfo, *, list_: bool = True) -> Reply:
        return self.start().answer(resource.name, info, list_=list_)


def _extension() -> WatchRoutes:
    ext = current_app.extensions.get(_EXTENSION)
    if not isinstance(ext, WatchRoutes):
        raise RuntimeError("watchroutes is not set up on this app: WatchRoutes(app, hub)")
    return ext


def request_info(key: str | None = None) -> RequestInfo:
    """The current request, framework-neutral; ``key`` names the view argument of an object
    route."""
    headers = request.headers
    return RequestInfo(
        query=list(request.args.items(multi=True)),
        accept=headers.get("accept"),
        last_event_id=headers.get("last-event-id"),
        key=None if key is None else str((request.view_args or {})[key]),
        headers={name.lower(): value for name, value in headers.items()},
        cookies=request.cookies.to_dict(),
        client=request.remote_addr,
        method=request.method,
    )


class _Body:
    """``wsgi_body(reply)``, with the reply's first chunk always yielded, even when empty: a
    JSON-lines watch that has nothing to send yet still flushes its headers at once on
    gunicorn (which sends them on any write). While it streams, its socket (gunicorn's) is
    watched for the client's close (see :class:`_Departures`). Closing it releases the watch."""

    def __init__(self, reply: Reply, sock: socket.socket | None) -> None:
        self.first = reply.body
        self.body = wsgi_body(reply)
        self.stream = reply.stream
        self.sock = sock

    def __iter__(self) -> Iterator[bytes]:
        if self.sock is not None and self.stream is not None:
            _departures.watch(self.sock, self.stream)
        if not self.first:
            yield b""
        yield from self.body

    def close(self) -> None:
        if self.sock is not None:
            _departures.forget(self.sock)
        getattr(self.body, "close")()  # noqa: B009 - WatchBody always has it


#: How often the sockets of open watches are looked at for a client that closed.
DEPARTURE_POLL_SECONDS = 0.5


class _Departures:
    """Notices a client that closed its connection while its watch writes nothing (a JSON-lines
    watch without bookmarks, a long poll, between heartbeats): WSGI reports a departed client
    only when a write fails. One thread per process looks at the open watches' sockets every
    ``DEPARTURE_POLL_SECONDS``; a socket at end-of-file (or reset) ends its watch, as a failed
    write would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[socket.socket, Any] = {}
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, stream: Any) -> None:
        with self._lock:
            self._watched[sock] = stream
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
                for sock, stream in watched:
                    with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                        selector.register(sock, selectors.EVENT_READ, stream)
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


_departures = _Departures()


def reply_response(reply: Reply) -> Response:
    """A Flask response for a :class:`Reply`; a watch streams from the request thread."""
    if reply.stream is None and not reply.chunked:
        return Response(reply.body, reply.status, reply.headers)
    if reply.stream is None:
        body: Any = iter((reply.body,))
    else:
        sock = request.environ.get("gunicorn.socket") if has_request_context() else None
        body = _Body(reply, sock if isinstance(sock, socket.socket) else None)
    return Response(body, reply.status, reply.headers, direct_passthrough=True)


def error_response(exc: ClientError) -> Response:
    """A ``ClientError`` as its HTTP status and Status body."""
    return reply_response(status_reply(exc))


def _is_websocket() -> bool:
    return request.headers.get("upgrade", "").lower() == "websocket"


def _answer(resource: Resource, key: str | None, list_: bool) -> Response | None:
    """The watch (or, with ``list_``, the list) answer; ``None`` for a plain GET."""
    ext = _extension()
    if _is_websocket():
        return _serve_websocket(ext, resource, key)
    if request.method != "GET":  # HEAD is a plain GET without its body
        return list_response(resource, key=key) if list_ else None
    hub = resource.hub
    answer = hub.answer if list_ else hub.answer_watch
    info = request_info(key)
    sock = request.environ.get("gunicorn.socket")
    if request.args.get("feed") != "longpoll" or not isinstance(sock, socket.socket):
        reply = ext.start().call(answer, resource.name, info)
        return None if reply is None else reply_response(reply)
    pending = _LongPoll()  # it waits on the hub's loop: cancelled if its client leaves
    _departures.watch(sock, pending)
    try:
        reply = ext.start().call(pending.run, answer, resource.name, info)
    finally:
        _departures.forget(sock)
    if pending.left:
        return Response(status=204)  # (nobody reads it)
    return None if reply is None else reply_response(reply)


class _LongPoll:
    """A long poll waiting for its answer on the hub's loop; ``interrupt()`` (from the thread
    that noticed its client left) cancels the wait, which releases the watch."""

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


def _add_vary(response: Response) -> None:
    if "accept" not in (response.headers.get("vary") or "").lower():
        response.vary.add("Accept")


def _cors_on(resource: Resource) -> bool:
    """Whether the resource (or its hub) allows cross-origin access: only then is an
    ``OPTIONS`` the CORS preflight (otherwise it goes to the view, as before)."""
    return resource.cors is not None or resource.hub.cors is not None


def _preflight(resource: Resource, key: str | None) -> Response:
    return reply_response(resource.hub.answer_preflight(resource.name, request_info(key)))


def watchable(
    resource: Resource, *, key: str | None = None, run_endpoint: bool = True
) -> Callable[[F], F]:
    """Decorate a view so that it serves watches; it runs for plain GETs (and HEAD), and its
    responses get ``Vary: Accept``. ``key`` names the view argument of an object route.

    A watch never bypasses the view's own checks: with ``run_endpoint`` (the default) the
    view runs first for a watch or a WebSocket too, and an ``abort(401)`` it raises or a
    response it returns with a status of 300 or more (a redirect to a login page) is the
    answer; otherwise its response is discarded and the watch served. Pass
    ``run_endpoint=False`` when the view has no checks of its own (the resource's
    ``Access`` hooks guard the watch)."""
    mounted(resource)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS" and _cors_on(resource):  # a CORS preflight
                return _preflight(resource, key)
            websocket = _is_websocket()
            if request.method == "GET" or websocket:
                if run_endpoint and (websocket or is_watch(request_info(key))):
                    checked = current_app.make_response(view(*args, **kwargs))
                    if checked.status_code >= 300:  # its own checks refused
                        _add_vary(checked)
                        return checked
                answered = _answer(resource, key, list_=False)
                if answered is not None:
                    return answered
            response = current_app.make_response(view(*args, **kwargs))
            _add_vary(response)
            return response

        return wrapper  # type: ignore[return-value]

    return decorate


def watch_view(resource: Resource, *, key: str | None = None) -> Callable[..., Response]:
    """A complete view: the library's list (or object) body, or a watch."""
    mounted(resource)

    def view(**_: Any) -> Response:
        if request.method == "OPTIONS":  # a CORS preflight
            return _preflight(resource, key)
        answered = _answer(resource, key, list_=True)
        assert answered is not None
        return answered

    view.__name__ = f"watch_{resource.name}" + ("" if key is None else "_object")
    return view


def websocket_view(resource: Resource, *, key: str | None = None) -> Callable[..., Response]:
    """A view for WebSocket watches, registered on the same path with ``websocket=True``
    (werkzeug routes an upgrade only to such a rule)::

        app.add_url_rule("/orders", "orders_ws", websocket_view(orders), websocket=True)
    """
    mounted(resource)

    def view(**_: Any) -> Response:
        return _serve_websocket(_extension(), resource, key)

    view.__name__ = f"websocket_{resource.name}" + ("" if key is None else "_object")
    return view


def list_response(resource: Resource, *, key: str | None = None) -> Response:
    """The library's plain-GET answer: the Kubernetes-style list, or the object that the view
    argument ``key`` names (404 when missing)."""
    runner = _extension().start()
    return reply_response(runner.call(resource.hub.answer_list, resource.name, request_info(key)))


def read_body(*, limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The request's body, limited while it is read (413 past ``limit``, before reading when
    ``Content-Length`` says so); a body that cannot be read to its end (the client left, a
    malformed chunk) is a 400.

    A refused body whose declared length is at most ``DRAIN_FACTOR`` times the limit is read
    and dropped first: gunicorn drains only 64 KiB of an unread body before it closes the
    connection, and a close with unread data resets it, so a client still sending would lose
    the 413. Larger or chunked bodies are refused at once."""
    stream = request.stream
    try:
        declared = request.content_length
        counter = BodyLimit(limit, request.headers.get("content-length"))
        while chunk := stream.read(65536):
            counter.feed(chunk)
    except ClientError:
        if declared is not None and declared <= DRAIN_FACTOR * limit:
            with contextlib.suppress(Exception):  # (the client may leave meanwhile)
                while stream.read(65536):
                    pass
        raise
    except Exception:  # the server's own: the client left mid-body, or a malformed chunk
        raise BadRequest("the request body could not be read to its end") from None
    return counter.body()


def read_json(
    *, limit: int = DEFAULT_MAX_BODY_BYTES, max_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> Any:
    """The request's JSON body; anything but JSON is a 400 Status."""
    return decode_json(read_body(limit=limit), max_depth=max_depth)


# -- gunicorn: the hub starts in each worker and ends its watches on the worker's exit signal


def post_worker_init(worker: Any) -> None:
    """gunicorn hook (``post_worker_init = ...`` in its config): start every hub in the
    worker, and on SIGTERM end its watches with final bookmarks before the worker waits for
    its requests (gunicorn's own SIGTERM handler only stops accepting)."""
    for ext in list(_INSTANCES):
        ext.start()

    def chain(signum: int) -> None:
        previous = signal.getsignal(signum)

        def handler(number: int, frame: Any) -> None:
            threading.Thread(target=_stop_all, name="watchroutes-stop", daemon=True).start()
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, handler)

    chain(signal.SIGTERM)


def worker_int(worker: Any) -> None:
    """gunicorn hook (``worker_int = ...``): SIGINT/SIGQUIT end the worker at once, so end
    the watches first."""
    _stop_all()


def _stop_all() -> None:
    for ext in list(_INSTANCES):
        with contextlib.suppress(Exception):  # a hub that failed to start has nothing to end
            ext.stop(timeout=8.0)


# -- WebSocket: simple-websocket (the package behind flask-sock) on the request's socket


class _Server(simple_websocket.Server):  # type: ignore[misc]
    """simple-websocket's server, telling the hub's loop when its reader thread got
    something (a message, the peer's close)."""

    def __init__(self, environ: dict[str, Any], owner: _Socket, **options: Any) -> None:
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


class _Socket:
    """The runtime's socket over simple-websocket. The handshake is written at the first
    read, write or close, once the hub has opened the socket's first subscription (a write
    made after the client saw the 101 reaches it); writes run in a worker thread, one at a
    time and in order, so that a slow peer never blocks the hub's loop."""

    def __init__(self, environ: dict[str, Any], max_bytes: int, write_timeout: float) -> None:
        self.environ = environ
        self.max_bytes = max_bytes
        self.write_timeout = write_timeout
        self.subprotocol: str | None = None
        self.ws: _Server | None = None
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

    async def _open(self) -> _Server:
        assert self.opening is not None
        async with self.opening:
            if self.ws is None:
                subprotocol = self.subprotocol
                self.ws = await self._call(
                    functools.partial(
                        _Server,
                        self.environ,
                        self,
                        subprotocols=[subprotocol] if subprotocol else None,
                        max_message_size=4 * self.max_bytes,  # the hub answers 1009
                    )
                )
            return self.ws

    async def receive(self) -> str | bytes | None:
        ws = await self._open()
        while True:
            if ws.input_buffer:
                message: str | bytes = ws.input_buffer.pop(0)
                return message
            if not ws.connected:
                return None
            self.wake = anyio.Event()
            if not ws.input_buffer and ws.connected:  # (or it came in just now)
                await self.wake.wait()

    def _send(self, ws: _Server, text: str) -> None:
        with self.writing:
            ws.send(text)

    async def send(self, text: str) -> None:
        try:
            await self._call(self._send, await self._open(), text)
        except (simple_websocket.ConnectionClosed, OSError) as exc:
            raise Disconnected from exc

    def _close(self) -> None:
        with self.writing:
            ws, pending, self.pending_close = self.ws, self.pending_close, None
            if ws is not None and pending is not None and ws.connected:
                with contextlib.suppress(simple_websocket.ConnectionClosed, OSError):
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


class _Upgraded(Response):
    """What the view returns once the socket is done: nothing more goes on the wire."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration  # gunicorn closes the connection quietly (as flask-sock does)
        return super().__call__(environ, start_response)


def _serve_websocket(ext: WatchRoutes, resource: Resource, key: str | None) -> Response:
    headers = request.headers
    try:  # a handshake simple-websocket would refuse with an exception: a 400 instead
        valid = len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) == 16
    except ValueError:
        valid = False
    if not valid or headers.get("sec-websocket-version") != "13":
        return error_response(BadRequest("not a valid WebSocket handshake"))
    offered = [
        item.strip()
        for value in headers.getlist("sec-websocket-protocol")
        for item in value.split(",")
        if item.strip()
    ]
    ws_request = WebSocketRequest(
        query=list(request.args.items(multi=True)),
        subprotocols=tuple(offered),
        origin=headers.get("origin"),
        host=headers.get("host"),
        secure=request.scheme == "https",
        key=None if key is None else str((request.view_args or {})[key]),
        authorization=headers.get("authorization"),
        headers={name.lower(): value for name, value in headers.items()},
        cookies=request.cookies.to_dict(),
        client=request.remote_addr,
    )
    limits = ext.limits or WebSocketLimits()
    sock = _Socket(request.environ, limits.max_message_bytes, resource.hub.write_timeout)
    serve = functools.partial(
        resource.hub.serve_websocket,
        resource.name,
        ws_request,
        sock,
        authorize=ext.authorize,
        limits=limits,
    )
    try:
        ext.start().call(serve)
    except Exception:
        if sock.ws is not None:
            raise
        return error_response(BadRequest("not a valid WebSocket handshake"))  # nothing sent
    finally:
        sock.finish()
    return _Upgraded()
