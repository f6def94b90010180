"""Django adapter: make a Django view watchable, under ASGI (uvicorn) or WSGI (gunicorn).

::

    # urls.py
    urlpatterns = [
        path("orders", watch_view(orders)),                  # list, or a watch
        path("orders/<str:name>", watch_view(orders, key="name")),
    ]

    # asgi.py: lifespan (the hub starts and stops with the server) and WebSocket watches
    application = asgi(get_asgi_application(), hub)

A view decorated with :func:`watchable` (or :class:`WatchViewMixin` on a class-based view)
runs only for plain GETs. A watch's response streams the way the running handler needs:
under ASGI an async iterator (:func:`stream_chunks`; Django >= 5.0 cancels it when the client
leaves), under WSGI a plain iterator driven from the request thread with the hub's loop in a
:class:`HubThread` (a departed client is noticed at the next write; heartbeats bound it). A
mismatch would make Django consume the endless stream to its end, so the adapter decides by
the request it gets (``ASGIRequest`` or not), whatever kind of view it decorates. The
database connections of the request's thread are closed before the stream starts: a long
watch holds none. WebSocket upgrades are routed by :func:`asgi` through the same URLconf to
the watch views (Channels is not needed); :func:`publish_on_commit` publishes after commit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

try:
    from asgiref.sync import async_to_sync, sync_to_async
    from django.core.exceptions import RequestAborted
    from django.core.handlers.asgi import ASGIRequest
    from django.db import connections, transaction
    from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
    from django.http.cookie import parse_cookie
    from django.http.response import HttpResponse
    from django.urls import Resolver404, resolve
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.django needs Django: pip install 'watchroutes[django]'"
    ) from exc

from watchroutes import BadRequest, ClientError, MethodNotAllowed

from . import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    ASGISocket,
    Hub,
    HubThreads,
    Reply,
    RequestInfo,
    Resource,
    WebSocketLimits,
    WSGIBody,
    asgi_websocket_request,
    asgi_wrapper,
    chain_sigterm,
    cors_on,
    decode_json,
    is_watch,
    mounted,
    read_limited,
    reply_chunks,
    status_reply,
)

__all__ = [
    "WatchViewMixin",
    "asgi",
    "error_response",
    "list_response",
    "post_worker_init",
    "publish_on_commit",
    "read_json",
    "reply_response",
    "request_info",
    "stop",
    "watch_view",
    "watchable",
    "worker_int",
]

F = TypeVar("F", bound=Callable[..., Any])
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]

_runners = HubThreads()  # the hubs' loop threads under WSGI, started on first use


def stop(timeout: float | None = None) -> None:
    """Under WSGI: end every watch with a final bookmark and stop the hubs' threads (call it
    from the server's exit hook, e.g. gunicorn's ``worker_int`` or a SIGTERM handler)."""
    _runners.stop(timeout)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook under WSGI (``post_worker_init = ...`` in its config): on SIGTERM, end
    every watch with a final bookmark before the worker waits for its requests (gunicorn's
    own handler only stops accepting)."""
    chain_sigterm(functools.partial(stop, 8.0))


def worker_int(worker: Any) -> None:
    """gunicorn hook under WSGI (``worker_int = ...``): SIGINT/SIGQUIT end the worker at
    once, so end the watches first."""
    stop(8.0)


def request_info(request: HttpRequest, key: str | None = None, kwargs: Any = None) -> RequestInfo:
    """A Django request, framework-neutral; ``key`` names the URL argument of an object route."""
    headers = request.headers
    return RequestInfo(
        query=[(name, value) for name, values in request.GET.lists() for value in values],
        accept=headers.get("accept"),
        last_event_id=headers.get("last-event-id"),
        key=None if key is None else str((kwargs or {})[key]),
        headers={name.lower(): value for name, value in headers.items()},
        cookies=dict(request.COOKIES),
        client=request.META.get("REMOTE_ADDR") or None,
        method=str(request.method),
    )


def _release_db() -> None:
    """Close this thread's database connections (outside a transaction): a watch holds none."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def reply_response(reply: Reply, *, asynchronous: bool) -> HttpResponseBase:
    """A Django response for ``reply``; a watch streams as the handler needs it (an async
    iterator under ASGI, a plain one under WSGI)."""
    headers = dict(reply.headers)
    if reply.stream is None and not reply.chunked:
        return HttpResponse(reply.body, status=reply.status, headers=headers)
    content: Any
    if reply.stream is None:
        content = [reply.body]
    elif asynchronous:
        content = reply_chunks(reply)
    else:
        content = WSGIBody(reply)
    return StreamingHttpResponse(content, status=reply.status, headers=headers)


def error_response(exc: ClientError) -> HttpResponseBase:
    """A ``ClientError`` as its HTTP status and Status body."""
    return reply_response(status_reply(exc), asynchronous=False)


def _add_vary(response: HttpResponseBase) -> None:
    vary = response.headers.get("Vary", "")
    if "accept" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Accept" if vary else "Accept"


#: What a GET asks the hub for: the watch or ``None`` (a decorated view answers the rest), the
#: watch or the list (a watch view), the list only (HEAD: a plain GET without its body).
_ASK = {"watch": "answer_watch", "full": "answer", "list": "answer_list"}


async def _answer_async(
    resource: Resource, request: HttpRequest, key: str | None, kwargs: Any, ask: str
) -> HttpResponseBase | None:
    if not isinstance(request, ASGIRequest):  # an async view under WSGI: the request thread
        return await sync_to_async(_answer_sync)(resource, request, key, kwargs, ask)
    hub = resource.hub
    reply = await getattr(hub, _ASK[ask])(resource.name, request_info(request, key, kwargs))
    if reply is None:
        return None
    if reply.stream is not None:
        await sync_to_async(_release_db)()
    return reply_response(reply, asynchronous=True)


def _answer_sync(
    resource: Resource, request: HttpRequest, key: str | None, kwargs: Any, ask: str
) -> HttpResponseBase | None:
    info = request_info(request, key, kwargs)
    hub = resource.hub
    call = getattr(hub, _ASK[ask])
    asynchronous = isinstance(request, ASGIRequest)
    if not asynchronous and request.headers.get("upgrade", "").lower() == "websocket":
        return error_response(BadRequest("WebSocket watches need the ASGI application"))
    if asynchronous:  # a sync view under ASGI: the hub runs on the server's loop
        reply = async_to_sync(call)(resource.name, info)
    else:
        reply = _runners.start(hub).call(call, resource.name, info)
    if reply is None:
        return None
    if reply.stream is not None:
        _release_db()
    return reply_response(reply, asynchronous=asynchronous)


def _preflight(
    resource: Resource, request: HttpRequest, key: str | None, kwargs: Any
) -> HttpResponseBase:
    """The answer to a CORS preflight: the resource's (or hub's) ``Cors`` decides."""
    info = request_info(request, key, kwargs)
    return reply_response(resource.hub.answer_preflight(resource.name, info), asynchronous=False)


def watchable(
    resource: Resource, *, key: str | None = None, run_endpoint: bool = True
) -> Callable[[F], F]:
    """Decorate a function view (sync or async) so that it serves watches; it runs for plain
    GETs (and the other methods it takes; an ``OPTIONS`` is the CORS preflight), and its
    responses get ``Vary: Accept``. ``key`` names the URL argument of an object route.

    A watch never bypasses the view's own checks: with ``run_endpoint`` (the default) the
    view runs first for a watch too, and an exception it raises (``PermissionDenied``) or a
    response with a status of 300 or more (``login_required``'s redirect) is the answer;
    otherwise its response is discarded and the watch served. ``run_endpoint=False`` skips
    that when the view has no checks of its own (the resource's ``Access`` hooks guard the
    watch). A decorator *around* ``watchable`` (``login_required(watchable(...)(view))``)
    guards HTTP watches as usual; WebSockets are routed past it (``asgi()``), so guard those
    with ``Access`` hooks."""
    mounted(resource)

    def decorate(view: F) -> F:
        wrapper: Any
        if inspect.iscoroutinefunction(view):

            async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method == "OPTIONS" and cors_on(resource):  # a CORS preflight
                    return _preflight(resource, request, key, kwargs)
                if request.method == "GET":
                    if run_endpoint and is_watch(request_info(request, key, kwargs)):
                        checked = await view(request, *args, **kwargs)
                        if checked.status_code >= 300:  # its own checks refused
                            return checked
                    answer = await _answer_async(resource, request, key, kwargs, "watch")
                    if answer is not None:
                        return answer
                response = await view(request, *args, **kwargs)
                _add_vary(response)
                return response

        else:

            def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method == "OPTIONS" and cors_on(resource):  # a CORS preflight
                    return _preflight(resource, request, key, kwargs)
                if request.method == "GET":
                    if run_endpoint and is_watch(request_info(request, key, kwargs)):
                        checked = view(request, *args, **kwargs)
                        if checked.status_code >= 300:  # its own checks refused
                            return checked
                    answer = _answer_sync(resource, request, key, kwargs, "watch")
                    if answer is not None:
                        return answer
                response = view(request, *args, **kwargs)
                _add_vary(response)
                return response

        functools.update_wrapper(wrapper, view)
        wrapper.watchroutes = (resource, key)  # for WebSocket routing (asgi())
        return wrapper  # type: ignore[no-any-return]

    return decorate


def watch_view(resource: Resource, *, key: str | None = None) -> Callable[..., Any]:
    """A complete (async) view: the library's list (or object) body, or a watch. Under WSGI
    Django runs it in a short event loop of its own and the watch still streams from the
    request thread."""
    mounted(resource)

    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        if request.method == "OPTIONS" and cors_on(resource):  # a CORS preflight
            return _preflight(resource, request, key, kwargs)
        if request.method not in ("GET", "HEAD"):
            response = error_response(_method_not_allowed(request))
            response.headers["Allow"] = "GET, HEAD"
            return response
        ask = "full" if request.method == "GET" else "list"
        answer = await _answer_async(resource, request, key, kwargs, ask)
        assert answer is not None
        return answer

    view.watchroutes = (resource, key)  # type: ignore[attr-defined]
    return view


def _method_not_allowed(request: HttpRequest) -> ClientError:
    return MethodNotAllowed(f"{str(request.method)[:20]} is not allowed here")


async def list_response(
    resource: Resource, request: HttpRequest, *, key: str | None = None, **kwargs: Any
) -> HttpResponseBase:
    """The library's plain-GET answer: the Kubernetes-style list or, on an object route, the
    object that the URL argument ``key`` (in ``kwargs``) names (404 when missing)."""
    answer = await _answer_async(resource, request, key, kwargs, "list")
    assert answer is not None
    return answer


class WatchViewMixin:
    """For class-based views: ``get()`` serves watches before the view's own ``get``.
    Set ``watch_resource`` (and ``watch_key`` on an object route)."""

    watch_resource: Resource
    watch_key: str | None = None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method == "GET":
            answer = _answer_sync(self.watch_resource, request, self.watch_key, kwargs, "watch")
            if answer is not None:
                return answer
        response = super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
        _add_vary(response)
        return response


def read_json(
    request: HttpRequest,
    *,
    limit: int = DEFAULT_MAX_BODY_BYTES,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Any:
    """The request's JSON body, limited while it is read (413); anything but JSON is a 400."""
    body = read_limited(request.read, request.headers.get("content-length"), limit)
    return decode_json(body, max_depth=max_depth)


def publish_on_commit(
    resource: Resource,
    type: str,  # noqa: A002 - as in Hub.publish
    obj: Any,
    *,
    key: str | None = None,
    using: str | None = None,
) -> None:
    """Publish ``obj`` once the current transaction commits (at once outside one), e.g. from
    a ``post_save`` receiver. A crash between the commit and the publish loses the event; on
    the PostgreSQL log, append inside the transaction instead (see docs/django.md)."""
    publish = functools.partial(resource.publish, type, obj, key=key)
    transaction.on_commit(publish, using=using, robust=True)


# -- ASGI: lifespan and WebSocket around Django's handler (which refuses both)


def asgi(
    application: ASGIApp,
    hub: Hub | Iterable[Hub],
    *,
    authorize: Callable[[str | None], Any] | None = None,
    limits: WebSocketLimits | None = None,
    max_body: int = DEFAULT_MAX_BODY_BYTES,
) -> ASGIApp:
    """Wrap Django's ASGI application: the lifespan enters and leaves the hubs, and a
    WebSocket on a path whose view is a watch view serves WebSocket watches (others are
    refused with 403). ``authorize`` gets the socket's bearer token (raise ``Unauthorized``
    or ``Forbidden``); ``limits`` holds the per-socket limits and the Origin allow-list.

    Django's handler reads a whole request body before the view runs, without a limit; this
    wrapper reads it first and answers 413 past ``max_body`` while reading (before reading,
    when ``Content-Length`` says so)."""
    hubs = [hub] if isinstance(hub, Hub) else list(hub)

    async def websocket(scope: Scope, receive: Any, send: Any) -> None:
        await _websocket(scope, receive, send, authorize, limits)

    # Django's handler writes a stream without a time limit: a peer that stopped reading is
    # let go after the hub's write timeout (RequestAborted: Django ends the response quietly).
    return asgi_wrapper(
        application, hubs, websocket=websocket, max_body=max_body, aborted=RequestAborted
    )


async def _websocket(scope: Scope, receive: Any, send: Any, authorize: Any, limits: Any) -> None:
    try:
        match = await sync_to_async(resolve)(scope["path"])
    except Resolver404:
        match = None
    target = getattr(match.func, "watchroutes", None) if match is not None else None
    if target is None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        return
    resource, key = target
    key_value = None if key is None else str(match.kwargs[key])
    request = asgi_websocket_request(scope, key_value, parse_cookie)
    await resource.hub.serve_websocket(
        resource.name, request, ASGISocket(receive, send), authorize=authorize, limits=limits
    )
