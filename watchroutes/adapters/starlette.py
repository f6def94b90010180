"""Starlette (and so FastAPI) adapter: make an existing route watchable.

::

    hub = Hub()
    orders = hub.resource("orders", kind="Order")

    @watchable(orders)                 # GET /orders: list, or a watch when the client asks
    async def list_orders(request):   # runs only for a plain GET
        ...

    @watchable(orders, key="name")     # GET /orders/{name}: the object, or a watch of it
    async def get_order(request): ...

The same decorator works on FastAPI path operations (it adds a ``Request`` parameter to the
signature when the function has none). Without an endpoint of your own,
``watch_endpoint(orders)`` answers plain GETs with the Kubernetes-style list body.

WebSocket watches (protocol.md §4) need a route of their own on the same path, since Starlette
routes by scope type: ``WebSocketRoute("/orders", websocket_endpoint(orders))`` (FastAPI:
``app.add_api_websocket_route("/orders", websocket_endpoint(orders))``).

The adapter only translates: request -> :class:`RequestInfo`, :class:`Reply` -> ASGI messages,
and the peer's ``http.disconnect`` -> the end of the pump; a WebSocket's handshake ->
:class:`WebSocketRequest`, and its messages to and from the runtime's socket.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

try:
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.starlette needs Starlette: pip install 'watchroutes[starlette]'"
    ) from exc

import contextlib

from .. import BadRequest, ClientError
from . import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    DIRECT_EXTENSION,
    AsgiDirectWriter,
    BodyLimit,
    Disconnected,
    Reply,
    RequestInfo,
    Resource,
    WatchStream,
    WebSocketLimits,
    WebSocketRequest,
    cors_on,
    decode_json,
    is_watch,
    mounted,
    serve,
    status_reply,
)

__all__ = [
    "ReplyResponse",
    "WebSocketAuthorize",
    "error_response",
    "list_response",
    "read_body",
    "read_json",
    "request_info",
    "request_validation_error",
    "watch_endpoint",
    "watchable",
    "websocket_endpoint",
    "websocket_request",
]

F = TypeVar("F", bound=Callable[..., Any])

_REQUEST_PARAM = "_watchroutes_request"
_RESPONSE_PARAM = "_watchroutes_response"


def request_info(request: Request, key: str | None = None) -> RequestInfo:
    """Translate a Starlette request; ``key`` names the path parameter of an object route."""
    headers = request.headers
    client = request.client
    return RequestInfo(
        query=request.query_params.multi_items(),
        accept=headers.get("accept"),
        last_event_id=headers.get("last-event-id"),
        key=None if key is None else str(request.path_params[key]),
        headers=headers,  # case-insensitive, names lowercase
        cookies=request.cookies,
        client=None if client is None else client.host,
        method=request.method,
    )


class ReplyResponse(Response):
    """An ASGI response for a :class:`Reply`, streaming when the reply has a stream."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.status_code = reply.status
        self.background = None
        self.body = reply.body
        self.raw_headers = [_header(k, v) for k, v in reply.headers]
        if reply.stream is None and not reply.chunked:
            self.raw_headers.append((b"content-length", str(len(reply.body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = self.reply
        stream = reply.stream
        start = {"type": "http.response.start", "status": reply.status, "headers": self.raw_headers}
        if stream is None:
            await send(start)
            if reply.chunked:  # no Content-Length: the server frames it as a stream
                await send({"type": "http.response.body", "body": reply.body, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": reply.body})
            return
        # A server that offers the connection (watchroutes.adapters.uvicorn's protocols)
        # lets a publish write to this watch while it is idle; each body sent here is named
        # to it first, so it can tell that the middleware between passes bodies unchanged.
        direct: AsgiDirectWriter | None = scope.get("extensions", {}).get(DIRECT_EXTENSION)
        try:
            await send(start)
            # The first chunk flushes the headers at once, even when it is empty.
            if direct is not None:
                direct.pushing(reply.body)
            await send({"type": "http.response.body", "body": reply.body, "more_body": True})
        except BaseException:
            stream.discard()
            raise
        if direct is not None:
            if direct.detach(functools.partial(_run_detached, stream, direct), stream.discard):
                return  # the server runs the watch once this app (and its middleware) returned
            direct.on_lost(stream.interrupt)
            pushing = direct.pushing

            def send_bytes(data: bytes) -> Awaitable[None]:
                pushing(data)
                return send({"type": "http.response.body", "body": data, "more_body": True})

            try:
                await serve(stream, send_bytes, None, direct)
            finally:
                direct.on_lost(None)
        else:

            def send_plain(data: bytes) -> Awaitable[None]:
                # (an OSError from the server, its way of saying the peer is gone, ends it)
                return send({"type": "http.response.body", "body": data, "more_body": True})

            async def wait_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass

            await serve(stream, send_plain, wait_disconnect)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _run_detached(stream: WatchStream, direct: AsgiDirectWriter) -> None:
    """A watch the server took over: written through the server's own ``send``."""
    direct.on_lost(stream.interrupt)
    try:
        await serve(stream, direct.send_body, None, direct)
    finally:
        direct.on_lost(None)
    with contextlib.suppress(OSError):
        await direct.end()


@functools.lru_cache(maxsize=256)
def _header(name: str, value: str) -> tuple[bytes, bytes]:
    """A header as ASGI bytes, shared by every response that sends it (a watch's response
    object lives as long as the watch)."""
    return name.encode("latin-1"), value.encode("latin-1")


def _add_vary(response: Response) -> None:
    vary = response.headers.get("vary", "")
    if "accept" not in vary.lower():
        response.headers["vary"] = f"{vary}, Accept" if vary else "Accept"


def watchable(
    resource: Resource, *, key: str | None = None, run_endpoint: bool = True
) -> Callable[[F], F]:
    """Decorate a Starlette endpoint or a FastAPI path operation so that it serves watches.

    ``key`` is the name of the path parameter holding the object's key on an object route.
    Only a GET can be a watch: the decorated function runs for plain GETs and for every other
    method the route takes (``HEAD`` is then the plain GET without its body); its responses
    get ``Vary: Accept``.

    A watch never bypasses the endpoint's own checks: FastAPI resolves its dependencies
    (``Depends(current_user)``) before the decorator sees the request, and with
    ``run_endpoint`` (the default) the function itself runs first for a watch too, so a
    check in its body (raising ``HTTPException(401)``, or returning an error response)
    refuses the watch as it refuses the GET. Its result is then discarded. Pass
    ``run_endpoint=False`` when the function has no checks of its own (its resource's
    ``Access`` hooks guard the watch), to skip computing a list per watch.
    """

    mounted(resource)  # its series exist from now on

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        try:  # resolve string annotations (``from __future__ import annotations``)
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable forward references: look at the raw annotations
            hints = {}
        params = list(signature.parameters.values())
        has_request = any(hints.get(p.name, p.annotation) in (Request, "Request") for p in params)
        added = [
            inspect.Parameter(_RESPONSE_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Response)
        ]
        if not has_request:
            added.insert(
                0,
                inspect.Parameter(
                    _REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request
                ),
            )
        positional = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]

        @functools.wraps(func)
        async def endpoint(*args: Any, **kwargs: Any) -> Any:
            temporal = kwargs.pop(_RESPONSE_PARAM, None)
            request = kwargs.pop(_REQUEST_PARAM, None)
            if request is None:
                request = next(
                    (a for a in (*args, *kwargs.values()) if isinstance(a, Request)), None
                )
            if request is None:  # pragma: no cover - a misconfigured route
                raise TypeError("watchable endpoint called without a Request")
            info = request_info(request, key)
            if request.method == "OPTIONS" and cors_on(resource):
                return ReplyResponse(resource.hub.answer_preflight(resource.name, info))
            if request.method == "GET" and is_watch(info):  # (HEAD: a GET without the body)
                if run_endpoint:  # the endpoint's own checks run for a watch too
                    checked = func(*args, **kwargs)
                    if inspect.isawaitable(checked):
                        checked = await checked
                    if isinstance(checked, Response) and checked.status_code >= 300:
                        return checked  # a refusal or a redirect (to a login page) is the answer
                reply = await resource.hub.answer_watch(resource.name, info)
                if reply is not None:
                    return ReplyResponse(reply)
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, Response):
                _add_vary(result)
            elif isinstance(temporal, Response):
                _add_vary(temporal)
            return result

        endpoint.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*positional, *added, *var_kw]
        )
        return endpoint  # type: ignore[return-value]

    return decorate


def watch_endpoint(
    resource: Resource, *, key: str | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """A complete endpoint: the library's list (or object) body, or a watch."""
    mounted(resource)

    async def endpoint(request: Request) -> Response:
        info = request_info(request, key)
        if request.method == "OPTIONS":  # a CORS preflight
            return ReplyResponse(resource.hub.answer_preflight(resource.name, info))
        if request.method != "GET":  # HEAD: the list's headers, never a watch
            return ReplyResponse(await resource.hub.answer_list(resource.name, info))
        return ReplyResponse(await resource.hub.answer(resource.name, info))

    return endpoint


def list_response(resource: Resource, request: Request, *, key: str | None = None) -> Response:
    """The library's plain-GET answer: the Kubernetes-style list or, on an object route whose
    path parameter ``key`` names the object, that object (404 when missing)."""
    return _ListResponse(resource, request_info(request, key))


class _ListResponse(ReplyResponse):
    """A list answer computed when it is sent (a snapshot callback may be async)."""

    def __init__(self, resource: Resource, info: RequestInfo) -> None:
        super().__init__(Reply(200, [("vary", "Accept")]))
        self.resource = resource
        self.info = info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = await self.resource.hub.answer_list(self.resource.name, self.info)
        await ReplyResponse(reply)(scope, receive, send)


def error_response(exc: ClientError) -> Response:
    """A ``ClientError`` as its HTTP status and Status body (protocol.md §3.5)."""
    return ReplyResponse(status_reply(exc))


async def read_body(request: Request, *, limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The request's body, limited while it is read: a ``Content-Length`` over ``limit`` is
    refused before reading (``RequestEntityTooLarge``, 413), a chunked body at the first chunk
    past it. A client that leaves mid-body is a ``BadRequest`` nobody will read, not a
    server error."""
    counter = BodyLimit(limit, request.headers.get("content-length"))
    try:
        async with contextlib.aclosing(request.stream()) as chunks:  # closed when refused
            async for chunk in chunks:
                counter.feed(chunk)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the end of the body") from None
    return counter.body()


async def read_json(
    request: Request,
    *,
    limit: int = DEFAULT_MAX_BODY_BYTES,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Any:
    """The request's JSON body (:func:`read_body`); anything but JSON is a 400 Status, deep
    nesting and invalid UTF-8 included."""
    return decode_json(await read_body(request, limit=limit), max_depth=max_depth)


async def request_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's ``RequestValidationError`` as a 400 Status naming the first invalid field,
    instead of FastAPI's own 422 ``{"detail": ...}``; the one line that installs it::

        app.add_exception_handler(RequestValidationError, request_validation_error)

    (The client's input is never echoed back, only where and what is wrong.)"""
    errors = getattr(exc, "errors", None)
    found = errors() if callable(errors) else []
    first = found[0] if found and isinstance(found[0], dict) else {}
    where = ".".join(str(part) for part in first.get("loc", ()))[:200]
    what = str(first.get("msg", "invalid"))[:200]
    message = f"{where}: {what}" if where else f"the request is invalid: {what}"
    return error_response(BadRequest(message))


#: Checks a WebSocket's credentials before any subscription opens: called with the socket and
#: the bearer token it presented (``bearer.<token>`` subprotocol, ``Authorization: Bearer``, or
#: ``access_token`` on the query; ``None`` without one). Raise ``Unauthorized`` (closes 4401)
#: or ``Forbidden`` (4403) to refuse it.
WebSocketAuthorize = Callable[[WebSocket, str | None], Awaitable[None] | None]


class _Socket:
    """A Starlette ``WebSocket`` as the runtime's socket."""

    __slots__ = ("gone", "ws")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.gone = False

    async def accept(self, subprotocol: str | None) -> None:
        await self.ws.accept(subprotocol=subprotocol)

    async def receive(self) -> str | bytes | None:
        if self.gone:
            return None
        try:
            message = await self.ws.receive()
        except (RuntimeError, OSError, WebSocketDisconnect):  # closed under us
            message = {"type": "websocket.disconnect"}
        if message["type"] != "websocket.receive":
            self.gone = True
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        if self.gone:
            raise Disconnected
        try:
            await self.ws.send({"type": "websocket.send", "text": text})
        except (RuntimeError, OSError, WebSocketDisconnect) as exc:
            # (uvicorn's ClientDisconnected is an OSError; Starlette turns it into a
            # WebSocketDisconnect(1006) on a socket the peer is closing)
            self.gone = True
            raise Disconnected from exc

    async def close(self, code: int, reason: str) -> None:
        if not self.gone:
            self.gone = True
            await self.ws.send({"type": "websocket.close", "code": code, "reason": reason})


def websocket_request(ws: WebSocket, key: str | None = None) -> WebSocketRequest:
    """Translate a WebSocket handshake; ``key`` names the path parameter of an object route."""
    headers = ws.headers
    return WebSocketRequest(
        query=ws.query_params.multi_items(),
        subprotocols=tuple(ws.scope.get("subprotocols") or ()),
        origin=headers.get("origin"),
        host=headers.get("host"),
        secure=ws.url.scheme == "wss",
        key=None if key is None else str(ws.path_params[key]),
        authorization=headers.get("authorization"),
        headers=headers,
        cookies=ws.cookies,
        client=None if ws.client is None else ws.client.host,
    )


def websocket_endpoint(
    resource: Resource,
    *,
    key: str | None = None,
    authorize: WebSocketAuthorize | None = None,
    limits: WebSocketLimits | None = None,
    resources: Collection[Resource] = (),
) -> Callable[[WebSocket], Awaitable[None]]:
    """A WebSocket endpoint serving watches of ``resource`` (protocol.md §4).

    ``key`` names the path parameter of an object route (``/orders/{name}``); ``authorize``
    checks credentials; ``limits`` overrides the per-socket limits and the ``Origin``
    allow-list (default: the request's own origin); ``resources`` are the other resources
    its ``watch`` messages may name (each guarded by its own ``Access``: a resource that
    only a route's checks protect must not be listed).
    """
    names = tuple(other.name for other in resources)
    mounted(resource)

    async def endpoint(websocket: WebSocket) -> None:
        check = None
        if authorize is not None:

            def check(token: str | None) -> Awaitable[None] | None:
                return authorize(websocket, token)

        await resource.hub.serve_websocket(
            resource.name,
            websocket_request(websocket, key),
            _Socket(websocket),
            authorize=check,
            limits=limits,
            resources=names,
        )

    return endpoint
