"""aiohttp adapter: make an existing route watchable.

::

    hub = Hub()
    orders = hub.resource("orders", kind="Order")

    @watchable(orders)                  # GET /orders: list, watch, or a WebSocket upgrade
    async def list_orders(request):    # runs only for a plain GET
        ...

    @watchable(orders, key="name")      # GET /orders/{name}: the object, or a watch of it
    async def get_order(request): ...

    app = web.Application()
    setup(app, hub)                     # start the hub; end its streams on shutdown
    app.router.add_get("/orders", list_orders)
    app.router.add_get("/orders/{name}", get_order)

One route serves every transport: aiohttp routes a WebSocket handshake like any GET, so the
decorated handler answers an ``Upgrade: websocket`` request with a WebSocket watch (protocol.md §4)
unless ``websocket=False``. Without a handler of your own, ``watch_handler(orders)`` answers
plain GETs with the Kubernetes-style list body.

The adapter only translates: request -> :class:`RequestInfo`, :class:`Reply` -> a response
written through the response's own payload writer, and aiohttp's ``WebSocketResponse`` to and
from the runtime's socket. A watch runs in aiohttp's handler task and needs no second task:
aiohttp reports a peer that left as the failure of the next write, so a closed or reset
connection is released at the latest by the next heartbeat (protocol.md §5.4); with
``handler_cancellation=True`` (``web.run_app``, ``AppRunner``) at once.

:func:`setup` ties the hubs to the application: entered on startup (a hub on a shared log
loads it and starts following it) and shut down from ``on_shutdown``, which aiohttp runs
after it stops accepting connections and before it waits for the open ones, so every stream
ends with its final bookmark and clients resume elsewhere (protocol.md §5.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

try:
    from aiohttp import WSMsgType, hdrs, web
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.http_writer import StreamWriter
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.aiohttp needs aiohttp: pip install 'watchroutes[aiohttp]'"
    ) from exc

from .. import BadRequest, ClientError
from . import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    BodyLimit,
    Disconnected,
    Hub,
    Reply,
    RequestInfo,
    Resource,
    WebSocketLimits,
    WebSocketRequest,
    cors_on,
    decode_json,
    freeze_startup_objects,
    http_chunk,
    is_watch,
    mounted,
    status_reply,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_FIELD_SIZE",
    "MAX_LINE_SIZE",
    "WebSocketAuthorize",
    "error_response",
    "is_websocket",
    "list_response",
    "read_body",
    "read_json",
    "reply_response",
    "request_info",
    "serve_websocket",
    "server_settings",
    "setup",
    "watch_handler",
    "watchable",
    "websocket_request",
]

#: How long a closing WebSocket waits for the peer's close frame (aiohttp waits in the
#: handler, and a shutdown waits for the handlers): a peer that does not answer is dropped.
CLOSE_TIMEOUT: Final = 1.0

#: The longest request line and header field the server reads (aiohttp's defaults: 8190
#: bytes): protocol.md §5.5 lets request lines and headers up to 64 KiB reach the app, so that a
#: long selector gets the library's 400 naming the parameter, not aiohttp's plain-text one.
MAX_LINE_SIZE: Final = 64 * 1024
MAX_FIELD_SIZE: Final = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])

#: Checks a WebSocket's credentials before any subscription opens: called with the request
#: and the bearer token it presented (``bearer.<token>`` subprotocol, ``Authorization:
#: Bearer``, or ``access_token`` on the query; ``None`` without one). Raise ``Unauthorized``
#: (closes 4401) or ``Forbidden`` (4403) to refuse it.
WebSocketAuthorize = Callable[[web.Request, str | None], Awaitable[None] | None]


def _joined(headers: Any) -> dict[str, str]:
    """Header names lowercased, a repeated header's values joined with ``,`` as WSGI servers
    join them (so a second ``Authorization`` is seen, and refused, not silently dropped)."""
    joined: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return joined


def request_info(request: web.Request, key: str | None = None) -> RequestInfo:
    """Translate an aiohttp request; ``key`` names the path parameter of an object route."""
    headers = request.headers
    return RequestInfo(
        query=list(request.query.items()),
        accept=headers.get(hdrs.ACCEPT),
        last_event_id=headers.get("Last-Event-ID"),
        key=None if key is None else request.match_info[key],
        headers=_joined(headers),
        cookies=dict(request.cookies),
        client=request.remote,
        method=request.method,
    )


def is_websocket(request: web.Request) -> bool:
    """Whether ``request`` is a WebSocket handshake."""
    return (
        request.method == hdrs.METH_GET
        and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    )


async def reply_response(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Send ``reply``: a plain response, or a stream run until it ends (then returned, sent)."""
    stream = reply.stream
    if stream is None and not reply.chunked:
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    try:
        # The writer frames the body (chunked on HTTP/1.1); its first write flushes the
        # headers, even when the chunk is empty.
        writer = await response.prepare(request)
        assert writer is not None
        await writer.write(reply.body)
    except BaseException:
        if stream is not None:
            stream.discard()
        raise
    if stream is not None:
        # (a peer that left makes the writer raise ConnectionResetError, an OSError, which
        # ends the watch; see the module docstring)
        await stream.run(writer.write, _DirectWriter.of(writer))
    with contextlib.suppress(OSError):
        await response.write_eof()
    return response


class _DirectWriter:
    """The direct write path on aiohttp's own response writer: a publish frames the event and
    hands it to the transport, as ``StreamWriter.write`` would, without waking the watch."""

    __slots__ = ("_writer",)

    def __init__(self, writer: StreamWriter) -> None:
        self._writer = writer

    @classmethod
    def of(cls, writer: AbstractStreamWriter) -> _DirectWriter | None:
        """The direct writer of ``writer`` when it writes bytes as they are given (aiohttp's
        own writer, headers sent, no compression, no declared length, no per-write hooks);
        ``None`` otherwise, and the watch writes through ``writer.write`` alone."""
        if type(writer) is not StreamWriter:
            return None
        plain = (
            getattr(writer, "_compress", True) is None
            and getattr(writer, "_on_chunk_sent", True) is None
            and getattr(writer, "on_body_write", True) is None
            and getattr(writer, "_headers_written", False)
            and writer.length is None
        )
        return cls(writer) if plain else None

    def writable(self) -> bool:
        writer = self._writer
        transport = writer.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not writer.protocol.writing_paused  # over the transport's high-water mark
        )

    def write(self, data: bytes) -> None:
        writer = self._writer
        transport = writer.transport
        if transport is None:
            raise ConnectionResetError("the connection is closed")
        writer.output_size += len(data)  # (what the access log reports)
        transport.write(http_chunk(data) if writer.chunked else data)


def _add_vary(response: web.StreamResponse) -> None:
    vary = response.headers.get(hdrs.VARY, "")
    if "accept" not in vary.lower():
        response.headers[hdrs.VARY] = f"{vary}, Accept" if vary else "Accept"


def watchable(
    resource: Resource,
    *,
    key: str | None = None,
    websocket: bool = True,
    authorize: WebSocketAuthorize | None = None,
    limits: WebSocketLimits | None = None,
    run_endpoint: bool = True,
) -> Callable[[H], H]:
    """Decorate an aiohttp handler so that its route serves watches.

    ``key`` is the name of the path parameter holding the object's key on an object route.
    The decorated handler runs only for plain GETs (and other methods, when the route has
    them); its responses get ``Vary: Accept``. A WebSocket handshake on the route becomes a
    WebSocket watch (``authorize`` and ``limits`` as in :func:`serve_websocket`) unless
    ``websocket`` is false. Works on a handler that takes the request as its last positional
    argument (also a method of a class), and on the ``get`` method of a ``web.View``.

    A watch never bypasses the handler's own checks: with ``run_endpoint`` (the default)
    the handler runs first for a watch and a WebSocket handshake too, and an exception it
    raises (``web.HTTPUnauthorized``) or a response it returns with a status of 300 or more
    is the answer; otherwise its response is discarded and the watch served. Pass
    ``run_endpoint=False`` when the handler has no checks of its own (the resource's
    ``Access`` hooks guard the watch) to skip computing its response per watch.
    """

    mounted(resource)  # its series exist from now on

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        async def wrapper(*args: Any) -> web.StreamResponse:
            request = args[-1]
            if isinstance(request, web.View):  # a class-based view's method
                request = request.request
            if request.method == hdrs.METH_OPTIONS and cors_on(resource):  # a CORS preflight
                info = request_info(request, key)
                preflight = resource.hub.answer_preflight(resource.name, info)
                return await reply_response(request, preflight)
            if request.method == hdrs.METH_GET:
                handshake = websocket and is_websocket(request)
                if run_endpoint and (handshake or is_watch(request_info(request, key))):
                    checked = await handler(*args)  # its own checks run for watches too
                    if checked.status >= 300 or checked.prepared:
                        return checked
                if handshake:
                    return await serve_websocket(
                        resource, request, key=key, authorize=authorize, limits=limits
                    )
                hub = resource.hub
                reply = await hub.answer_watch(resource.name, request_info(request, key))
                if reply is not None:
                    return await reply_response(request, reply)
            response = await handler(*args)
            if request.method == hdrs.METH_GET and not response.prepared:
                _add_vary(response)
            return response

        return wrapper  # type: ignore[return-value]

    return decorate


def watch_handler(resource: Resource, *, key: str | None = None, websocket: bool = True) -> Handler:
    """A complete handler: the library's list (or object) body, a watch, or a WebSocket."""

    @watchable(resource, key=key, websocket=websocket, run_endpoint=False)
    async def handler(request: web.Request) -> web.StreamResponse:
        return await list_response(resource, request, key=key)

    return handler


async def list_response(
    resource: Resource, request: web.Request, *, key: str | None = None
) -> web.StreamResponse:
    """The library's plain-GET answer: the Kubernetes-style list or, on an object route whose
    path parameter ``key`` names the object, that object (404 when missing)."""
    reply = await resource.hub.answer_list(resource.name, request_info(request, key))
    return await reply_response(request, reply)


def error_response(exc: ClientError) -> web.Response:
    """A ``ClientError`` as its HTTP status and Status body (protocol.md §3.5)."""
    reply = status_reply(exc)
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


async def read_body(request: web.Request, *, limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The request's body, limited while it is read: a ``Content-Length`` over ``limit`` is
    refused before reading (``RequestEntityTooLarge``, 413), a chunked body at the first chunk
    past it. A body cut short (the client left) or malformed is a ``BadRequest``."""
    counter = BodyLimit(limit, request.headers.get(hdrs.CONTENT_LENGTH))
    try:
        async for chunk in request.content.iter_any():
            counter.feed(chunk)
    except (OSError, HttpProcessingError):
        raise BadRequest("the body ended early or is malformed") from None
    return counter.body()


async def read_json(
    request: web.Request,
    *,
    limit: int = DEFAULT_MAX_BODY_BYTES,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Any:
    """The request's JSON body (:func:`read_body`); anything but JSON is a 400 Status, deep
    nesting and invalid UTF-8 included."""
    return decode_json(await read_body(request, limit=limit), max_depth=max_depth)


class _ClientFaults(logging.Filter):
    """A malformed request is the client's fault: aiohttp logs it with ``logger.exception``,
    an ERROR with a traceback; this makes it a one-line WARNING (any other error stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionResetError):
            text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {' '.join(text.split())}"
            record.msg = record.msg[:300]
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: The server's logger under :func:`server_settings` (a child of aiohttp's, so a level set on
#: ``aiohttp.server`` applies to it).
server_logger: Final = logging.getLogger("aiohttp.server.watchroutes")
server_logger.addFilter(_ClientFaults())


def server_settings(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner(app, ...)`` or ``web.run_app(app, ...)``:

    - ``max_line_size`` and ``max_field_size`` of 64 KiB (:data:`MAX_LINE_SIZE`,
      :data:`MAX_FIELD_SIZE`), so a long query reaches the app;
    - ``logger``: one that logs a client's malformed request as a one-line warning.

    ``overrides`` replace or add settings.
    """
    return {
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        "logger": server_logger,
        **overrides,
    }


# -- WebSocket ------------------------------------------------------------------------------


def websocket_request(request: web.Request, key: str | None = None) -> WebSocketRequest:
    """Translate a WebSocket handshake; ``key`` names the path parameter of an object route."""
    headers = request.headers
    offered = headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
    return WebSocketRequest(
        query=list(request.query.items()),
        subprotocols=tuple(p.strip() for value in offered for p in value.split(",") if p.strip()),
        origin=headers.get(hdrs.ORIGIN),
        host=headers.get(hdrs.HOST),
        secure=request.secure,
        key=None if key is None else request.match_info[key],
        authorization=headers.get(hdrs.AUTHORIZATION),
        headers=_joined(headers),
        cookies=dict(request.cookies),
        client=request.remote,
    )


class _HandshakeRefused(Exception):
    def __init__(self, error: web.HTTPException) -> None:
        self.error = error


class _Socket:
    """An aiohttp ``WebSocketResponse`` as the runtime's socket."""

    __slots__ = ("gone", "max_bytes", "ping", "request", "ws")

    def __init__(self, request: web.Request, max_bytes: int, ping: float) -> None:
        self.request = request
        self.max_bytes = max_bytes
        self.ping = ping
        self.ws: web.WebSocketResponse | None = None
        self.gone = False

    async def accept(self, subprotocol: str | None) -> None:
        # Liveness: aiohttp pings every heartbeat interval and closes a peer that does not
        # answer within half of it (a half-open peer is released). Messages: one byte past
        # the runtime's limit, so a message just over it reaches the runtime, which closes
        # with 1009 and says the limit; aiohttp closes anything bigger with 1009 too, without
        # buffering it.
        ws = web.WebSocketResponse(
            protocols=() if subprotocol is None else (subprotocol,),
            max_msg_size=self.max_bytes + 1,
            timeout=CLOSE_TIMEOUT,
            heartbeat=self.ping,
        )
        try:
            await ws.prepare(self.request)
        except web.HTTPException as exc:  # a malformed handshake: aiohttp says what is wrong
            raise _HandshakeRefused(exc) from None
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        ws = self.ws
        if self.gone or ws is None:
            return None
        try:
            message = await ws.receive()
        except (RuntimeError, OSError):  # the socket was closed under us
            self.gone = True
            return None
        if message.type is WSMsgType.TEXT:
            return str(message.data)
        if message.type is WSMsgType.BINARY:
            return bytes(message.data)
        self.gone = True  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp closed it with its code)
        return None

    async def send(self, text: str) -> None:
        ws = self.ws
        if self.gone or ws is None or ws.closed:
            raise Disconnected
        try:
            await ws.send_str(text)
        except (RuntimeError, OSError) as exc:
            self.gone = True
            raise Disconnected from exc

    async def close(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws is not None and not self.gone:
            self.gone = True
            await ws.close(code=code, message=reason.encode())


async def serve_websocket(
    resource: Resource,
    request: web.Request,
    *,
    key: str | None = None,
    authorize: WebSocketAuthorize | None = None,
    limits: WebSocketLimits | None = None,
) -> web.StreamResponse:
    """Run a WebSocket watch of ``resource`` (protocol.md §4) on the handshake ``request``.

    ``key`` names the path parameter of an object route (``/orders/{name}``); ``authorize``
    checks credentials; ``limits`` overrides the per-socket limits and the ``Origin``
    allow-list (default: the request's own origin).
    """
    limits = limits or WebSocketLimits()
    check = None
    if authorize is not None:

        def check(token: str | None) -> Awaitable[None] | None:
            return authorize(request, token)

    socket = _Socket(request, limits.max_message_bytes, resource.hub.heartbeat)
    try:
        await resource.hub.serve_websocket(
            resource.name, websocket_request(request, key), socket, authorize=check, limits=limits
        )
    except _HandshakeRefused as refused:  # aiohttp refuses a handshake with 400 and a reason
        text = refused.error.text or "invalid WebSocket handshake"
        return error_response(BadRequest(f"invalid WebSocket handshake: {text[:200]}"))
    assert socket.ws is not None  # the runtime accepts first
    return socket.ws


# -- the application's lifecycle ------------------------------------------------------------


def setup(app: web.Application, *hubs: Hub, freeze_gc: bool = False) -> None:
    """Run ``hubs`` with ``app``: entered on startup, their streams ended on shutdown.

    Each hub runs in a task of its own from startup to cleanup, so aiohttp may run its
    startup and cleanup signals in different tasks. With ``freeze_gc`` (for the process that
    serves, not for a test suite: frozen objects are hidden from ``gc.get_referrers``), the
    objects alive once the app has started are frozen out of the garbage collector's way
    (``docs/operations.md``, "The garbage collector").
    """
    for hub in hubs:
        for resource in hub.resources.values():
            mounted(resource)
    app.cleanup_ctx.append(functools.partial(_run_hubs, hubs))
    if freeze_gc:

        async def freeze(app: web.Application) -> None:
            freeze_startup_objects()

        app.on_startup.append(freeze)

    async def end_streams(app: web.Application) -> None:
        for hub in hubs:
            await hub.aclose()

    app.on_shutdown.append(end_streams)


async def _run_hubs(hubs: Iterable[Hub], app: web.Application) -> AsyncIterator[None]:
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                for hub in hubs:
                    await stack.enter_async_context(hub)
                started.set_result(None)
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    task = asyncio.ensure_future(run())
    try:
        await started
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    try:
        yield
    finally:
        stop.set()
        await task
