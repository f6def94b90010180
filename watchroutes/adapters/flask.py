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
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

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
    Hub,
    HubThread,
    Reply,
    RequestInfo,
    Resource,
    WebSocketLimits,
    WebSocketRequest,
    WSGIBody,
    answer_watched,
    chain_sigterm,
    cors_on,
    decode_json,
    is_watch,
    mounted,
    offered_subprotocols,
    poking,
    read_wsgi_body,
    serve_threaded,
    server_socket,
    status_reply,
    valid_handshake,
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


def reply_response(reply: Reply) -> Response:
    """A Flask response for a :class:`Reply`; a watch streams from the request thread."""
    if reply.stream is None and not reply.chunked:
        return Response(reply.body, reply.status, reply.headers)
    if reply.stream is None:
        body: Any = iter((reply.body,))
    else:
        body = WSGIBody(reply, server_socket(request.environ) if has_request_context() else None)
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
    longpoll = request.args.get("feed") == "longpoll"
    sock = server_socket(request.environ)
    reply, left = answer_watched(ext.start(), answer, resource.name, info, sock, longpoll=longpoll)
    if left:
        return Response(status=204)  # (nobody reads it)
    return None if reply is None else reply_response(reply)


def _add_vary(response: Response) -> None:
    if "accept" not in (response.headers.get("vary") or "").lower():
        response.vary.add("Accept")


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
            if request.method == "OPTIONS" and cors_on(resource):  # a CORS preflight
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
    headers = request.headers
    declared = request.content_length
    return read_wsgi_body(request.stream.read, headers.get("content-length"), declared, limit)


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
    chain_sigterm(_stop_all)


def worker_int(worker: Any) -> None:
    """gunicorn hook (``worker_int = ...``): SIGINT/SIGQUIT end the worker at once, so end
    the watches first."""
    _stop_all()


def _stop_all() -> None:
    for ext in list(_INSTANCES):
        with contextlib.suppress(Exception):  # a hub that failed to start has nothing to end
            ext.stop(timeout=8.0)


# -- WebSocket: simple-websocket (the package behind flask-sock) on the request's socket


_Server = poking(simple_websocket.Server)


class _Upgraded(Response):
    """What the view returns once the socket is done: nothing more goes on the wire."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration  # gunicorn closes the connection quietly (as flask-sock does)
        return super().__call__(environ, start_response)


def _serve_websocket(ext: WatchRoutes, resource: Resource, key: str | None) -> Response:
    headers = request.headers
    if not valid_handshake(headers.get("sec-websocket-key"), headers.get("sec-websocket-version")):
        return error_response(BadRequest("not a valid WebSocket handshake"))
    ws_request = WebSocketRequest(
        query=list(request.args.items(multi=True)),
        subprotocols=offered_subprotocols(headers.getlist("sec-websocket-protocol")),
        origin=headers.get("origin"),
        host=headers.get("host"),
        secure=request.scheme == "https",
        key=None if key is None else str((request.view_args or {})[key]),
        authorization=headers.get("authorization"),
        headers={name.lower(): value for name, value in headers.items()},
        cookies=request.cookies.to_dict(),
        client=request.remote_addr,
    )
    served = serve_threaded(
        ext.start(),
        resource,
        ws_request,
        server=_Server,
        environ=request.environ,
        closed=(simple_websocket.ConnectionClosed, OSError),
        limits=ext.limits or WebSocketLimits(),
        authorize=ext.authorize,
    )
    if not served:
        return error_response(BadRequest("not a valid WebSocket handshake"))  # nothing sent
    return _Upgraded()
