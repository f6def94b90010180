"""The adapter contract: everything an adapter for a web framework imports, and all it imports.

An adapter translates; every rule lives in the hub. It reads a request into a
:class:`RequestInfo`, asks the hub for a :class:`Reply`, and writes the reply back:

* **In**: :class:`RequestInfo` (the query pairs, ``Accept``, ``Last-Event-ID``, the route's
  key), or a :class:`WebSocketRequest` for a WebSocket handshake.
* **Out**: ``await hub.answer(resource, info)`` (or ``answer_watch`` / ``answer_list``) is a
  :class:`Reply`: a status, headers and a body. When ``reply.stream`` is set, the body is the
  stream's first chunk (send it with the headers, at once) and the stream is a watch, to be
  written in one of three forms, whichever the framework takes:

  - *push*: ``await reply.stream.run(send)``, where ``send(data)`` writes and flushes and
    raises :class:`Disconnected` once the peer is gone; :func:`serve` races it against a
    ``wait_disconnect()`` for servers that report a departed peer only through a receive
    channel (ASGI). An adapter that owns the connection also passes a :class:`DirectWriter`
    (``run(send, direct)``): a publish then writes to an idle watch itself, without waking its
    task (the direct write path; :func:`http_chunk` frames a chunked body);
  - *pull*: ``async for chunk in stream_chunks(reply.stream)``, for responses that consume an
    async iterator (``aclose()`` it when the response ends);
  - *blocking*: :func:`wsgi_body` (a WSGI response iterable) with the hub's loop running in a
    :class:`HubThread`, for WSGI servers (one thread per request, no event loop).

  ``reply.chunked`` marks a complete body that must be framed as a stream (no
  ``Content-Length``): an SSE or JSON-lines answer that ends at once.
* **Errors**: :func:`status_reply` is the Status answer of any :class:`ClientError` raised
  while handling a request (a body too large, a bad body, an app's own ``Forbidden``).
* **Bodies**: :class:`BodyLimit` counts a body while it is read (``Content-Length`` first);
  :func:`decode_json` turns every way a body can be wrong into a 400.
* **WebSocket**: ``await hub.serve_websocket(resource, request, socket, limits=...)`` runs a
  WebSocket watch on any object that has the four methods of :class:`Socket`.
* **Lifecycle**: ``async with hub`` where the framework has a lifespan (or
  :class:`HubThread`); ``hub.begin_shutdown()`` from the server's exit signal, before it waits
  for open connections, then ``await hub.aclose()``. A server that watchroutes starts calls
  :func:`freeze_startup_objects` once the app is up (shorter collector pauses).
* **Metrics**: :func:`mounted` when a resource is mounted on a route (its series exist at 0).
* **CORS**: :func:`cors_on` says whether an ``OPTIONS`` is a preflight for the hub to answer.
* **WSGI servers**: :class:`WSGIBody` (a watch's response body, released when its client
  leaves, noticed on :func:`server_socket` where the server gives it), :func:`answer_watched`
  (a long poll cancelled when its client leaves), :func:`read_wsgi_body`,
  :func:`chain_sigterm` (gunicorn's exit signal), :class:`HubThreads` (one loop thread per
  hub, started on first use), and :func:`serve_threaded`, a WebSocket
  watch over a blocking WebSocket (simple-websocket's, made :func:`poking`) through
  :class:`ThreadedSocket`, after :func:`valid_handshake`; :func:`offered_subprotocols`.
* **ASGI around a handler that refuses lifespan and WebSocket scopes** (Django's):
  :func:`asgi_wrapper`, :class:`ASGISocket`, :func:`asgi_websocket_request`; and
  :func:`reply_chunks`, a watch reply's whole body as an async iterator.

An adapter imports this module, the public ``watchroutes`` namespace and its own framework;
never a private module (a test checks). ``docs/adapters.md`` writes one in about 100 lines.
"""

from __future__ import annotations

from .._core.errors import ClientError as _ClientError
from .._core.metrics import declare_resource as _declare_resource
from .._core.params import Mode as _Mode
from .._core.params import is_watch as _is_watch
from .._public import present_as_public as _present_as_public
from .._runtime.answers import RequestInfo as RequestInfo
from .._runtime.asgi import ASGISocket as ASGISocket
from .._runtime.asgi import asgi_websocket_request as asgi_websocket_request
from .._runtime.asgi import asgi_wrapper as asgi_wrapper
from .._runtime.asgi import reply_chunks as reply_chunks
from .._runtime.asgi_direct import AsgiDirect as AsgiDirect
from .._runtime.asgi_direct import run_app as run_app
from .._runtime.blocking import HubThread as HubThread
from .._runtime.blocking import wsgi_body as wsgi_body
from .._runtime.hub import Hub as Hub
from .._runtime.hub import Resource as Resource
from .._runtime.lifecycle import freeze_startup_objects as freeze_startup_objects
from .._runtime.reply import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from .._runtime.reply import DEFAULT_MAX_JSON_DEPTH as DEFAULT_MAX_JSON_DEPTH
from .._runtime.reply import BodyLimit as BodyLimit
from .._runtime.reply import Reply as Reply
from .._runtime.reply import decode_json as decode_json
from .._runtime.reply import error_reply as _error_reply
from .._runtime.stream import DIRECT_EXTENSION as DIRECT_EXTENSION
from .._runtime.stream import AsgiDirectWriter as AsgiDirectWriter
from .._runtime.stream import DirectWriter as DirectWriter
from .._runtime.stream import Disconnected as Disconnected
from .._runtime.stream import WatchStream as WatchStream
from .._runtime.stream import http_chunk as http_chunk
from .._runtime.stream import serve as serve
from .._runtime.stream import stream_chunks as stream_chunks
from .._runtime.threaded_socket import ThreadedSocket as ThreadedSocket
from .._runtime.threaded_socket import offered_subprotocols as offered_subprotocols
from .._runtime.threaded_socket import poking as poking
from .._runtime.threaded_socket import serve_threaded as serve_threaded
from .._runtime.threaded_socket import valid_handshake as valid_handshake
from .._runtime.websocket import Socket as Socket
from .._runtime.websocket import WebSocketLimits as WebSocketLimits
from .._runtime.websocket import WebSocketRequest as WebSocketRequest
from .._runtime.wsgi import DRAIN_FACTOR as DRAIN_FACTOR
from .._runtime.wsgi import HubThreads as HubThreads
from .._runtime.wsgi import WSGIBody as WSGIBody
from .._runtime.wsgi import answer_watched as answer_watched
from .._runtime.wsgi import chain_sigterm as chain_sigterm
from .._runtime.wsgi import read_limited as read_limited
from .._runtime.wsgi import read_wsgi_body as read_wsgi_body
from .._runtime.wsgi import server_socket as server_socket

__all__ = (
    "ASGISocket",
    "AsgiDirect",
    "AsgiDirectWriter",
    "BodyLimit",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_JSON_DEPTH",
    "DIRECT_EXTENSION",
    "DRAIN_FACTOR",
    "DirectWriter",
    "Disconnected",
    "Hub",
    "HubThread",
    "HubThreads",
    "Reply",
    "RequestInfo",
    "Resource",
    "Socket",
    "ThreadedSocket",
    "WSGIBody",
    "WatchStream",
    "WebSocketLimits",
    "WebSocketRequest",
    "answer_watched",
    "asgi_websocket_request",
    "asgi_wrapper",
    "chain_sigterm",
    "cors_on",
    "decode_json",
    "freeze_startup_objects",
    "http_chunk",
    "is_watch",
    "mounted",
    "offered_subprotocols",
    "poking",
    "read_limited",
    "read_wsgi_body",
    "reply_chunks",
    "run_app",
    "serve",
    "serve_threaded",
    "server_socket",
    "status_reply",
    "stream_chunks",
    "valid_handshake",
    "wsgi_body",
)


def status_reply(exc: _ClientError) -> Reply:
    """The JSON Status answer to ``exc`` (with ``Retry-After`` when it is retryable)."""
    return _error_reply(exc, _Mode.LIST, retry_ms=0)


def is_watch(request: RequestInfo) -> bool:
    """Whether a GET asks for a watch (``?watch=``, ``Accept: text/event-stream``, ``feed``)
    rather than the list: for an adapter that must run the app's own checks first."""
    return _is_watch(request.query, request.accept)


def mounted(resource: Resource) -> None:
    """A resource was mounted on a route: its metric series exist from now on (at 0)."""
    _declare_resource(resource.hub.metrics, resource.name)


def cors_on(resource: Resource) -> bool:
    """Whether the resource (or its hub) allows cross-origin access: only then is an
    ``OPTIONS`` the CORS preflight (otherwise it goes to the view, as before)."""
    return resource.cors is not None or resource.hub.cors is not None


_present_as_public(globals())  # the names' __module__ is this public module
