"""Answering requests: a GET of a watchable route is a list, an object, or a watch
(protocol.md §3.1), and a WebSocket handshake is a WebSocket watch (§4).

Every answer is a :class:`~.reply.Reply` (the adapter contract's "out"), built here from the
request's :class:`RequestInfo` (its "in"); the drivers (stream, long poll, WebSocket) do the
rest. A :class:`~watchroutes._core.errors.ClientError` raised on the way becomes its Status
answer, in the form the request's transport needs (``error_reply``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final, NamedTuple

from .._core.access import AuthRequest
from .._core.errors import ClientError, Expired, NotFound, ServiceUnavailable
from .._core.params import Mode, WatchRequest, parse_request
from .._core.state import StateSource
from .guard import OPEN, Admission, admit
from .longpoll import answer_longpoll
from .node import Node, ResourceSpec
from .reply import Reply, error_reply, json_reply
from .stream import WatchStream, open_session, wire_for
from .websocket import Authorize, Socket, WebSocketLimits, WebSocketRequest
from .websocket import serve_websocket as run_websocket

__all__ = [
    "CAPACITY_RETRY_AFTER",
    "RequestInfo",
    "answer",
    "answer_list",
    "answer_watch",
    "open_stream",
    "serve_websocket",
]

#: Seconds a watch refused for capacity (``max_watches``) is told to wait before retrying.
CAPACITY_RETRY_AFTER: Final = 2


class RequestInfo(NamedTuple):
    """What an adapter reads off a request, framework-neutral: the query pairs, ``Accept``,
    ``Last-Event-ID``, the route's key; and, for authentication (protocol.md §7), the headers
    (names lowercase), the cookies, the client's address and the method."""

    query: list[tuple[str, str]]
    accept: str | None = None
    last_event_id: str | None = None
    key: str | None = None
    headers: Mapping[str, str] | None = None
    cookies: Mapping[str, str] | None = None
    client: str | None = None
    method: str = "GET"

    def auth(self) -> AuthRequest:
        """The request as the ``authenticate`` hook sees it."""
        return AuthRequest(
            headers=self.headers or {},
            query=self.query,
            cookies=self.cookies or {},
            client=self.client,
            method=self.method,
        )


async def answer(node: Node, resource: str, request: RequestInfo, *, list_: bool = True) -> Reply:
    """The complete answer to a GET of a watchable route (protocol.md §3.1)."""
    reply = await answer_watch(node, resource, request)
    if reply is not None:
        return reply
    if list_:
        return await answer_list(node, resource, request)
    return _cors(node, resource, request, Reply(200, []))


def _cors(node: Node, resource: str, request: RequestInfo, reply: Reply) -> Reply:
    """``reply`` with the CORS headers its request's ``Origin`` gets (protocol.md §7)."""
    spec = node.specs.get(resource)
    cors = spec.cors if spec is not None and spec.cors is not None else node.cors
    if cors is not None and request.headers is not None:
        reply.headers.extend(cors.headers(request.headers.get("origin")))
    return reply


def answer_preflight(node: Node, resource: str, request: RequestInfo) -> Reply:
    """The answer to a CORS preflight (``OPTIONS``) of a watchable route: 204, with the
    allowed origin, method and headers when the origin is listed (protocol.md §7)."""
    spec = node.specs.get(resource)
    cors = spec.cors if spec is not None and spec.cors is not None else node.cors
    origin = None if request.headers is None else request.headers.get("origin")
    headers = [] if cors is None else cors.preflight(origin)
    return Reply(204, headers)


async def answer_watch(node: Node, resource: str, request: RequestInfo) -> Reply | None:
    """The answer when ``request`` is a watch; ``None`` when it is a plain GET."""
    reply = await _answer_watch(node, resource, request)
    return None if reply is None else _cors(node, resource, request, reply)


async def _answer_watch(node: Node, resource: str, request: RequestInfo) -> Reply | None:
    node.bind()
    mode = Mode.LIST
    try:
        res = node.spec(resource)
        parsed = parse_request(
            request.query,
            accept=request.accept,
            last_event_id=request.last_event_id,
            key=request.key,
        )
        mode = parsed.mode
        if mode is Mode.LIST:
            return None
        if node.max_watches is not None and len(node.state.registry) >= node.max_watches:
            raise ServiceUnavailable(
                "this server is serving as many watches as it can; try again",
                retry_after=CAPACITY_RETRY_AFTER,
            )
        parsed, admission = await admit(
            node, res, request.auth(), parsed, key=request.key, transport=mode.value
        )
        try:
            if mode is Mode.LONGPOLL:
                return await answer_longpoll(node, res, parsed, admission)
            return await open_stream(node, res, parsed, admission)
        except BaseException:
            admission.release()
            raise
    except ClientError as exc:
        node.metrics.client_error(exc.reason)
        return error_reply(exc, mode, retry_ms=node.retry_ms)


async def open_stream(
    node: Node, res: ResourceSpec, parsed: WatchRequest, admission: Admission = OPEN
) -> Reply:
    """Register the watch and prepare its stream (protocol.md §3.3 for SSE, §3.4 for JSON
    lines); raises the ``ClientError`` that refuses it, which ``error_reply`` answers."""
    wire = wire_for(res, parsed, node.retry_ms)
    # A refusal (JSON lines' expired rv included) propagates to the caller's error_reply.
    session = await open_session(
        node, res, parsed, wire, end_at=node.end_at(parsed.timeout_seconds), admission=admission
    )
    stream = WatchStream(
        node,
        session,
        session.subscription,
        resource=res.name,
        transport=parsed.mode.value,
        admission=admission,
    )
    return Reply(200, list(wire.headers), session.preamble(), stream)


async def answer_list(node: Node, resource: str, request: RequestInfo) -> Reply:
    """The library's list body (Kubernetes style) or, for a key, the object.

    The objects come from the resource's state source: the watch cache, or the snapshot
    callback (with the rv read before calling it, as for a watch).
    """
    return _cors(node, resource, request, await _answer_list(node, resource, request))


async def _answer_list(node: Node, resource: str, request: RequestInfo) -> Reply:
    try:
        res = node.spec(resource)
        parsed = parse_request(request.query, key=request.key)
        parsed, admission = await admit(
            node, res, request.auth(), parsed, key=request.key, transport="list"
        )
        await node.sync(parsed)
        if res.source is StateSource.CALLBACK:
            head = node.state.head
            _check_not_ahead(parsed, head)
            items = await node.snapshot_objects(res, parsed)
        else:
            with node.lock:
                head = node.state.head
                _check_not_ahead(parsed, head)
                head, items = node.state.snapshot(res.name, parsed.filter)
        if request.key is not None:
            if not items:
                raise NotFound(f'{resource} "{request.key[:100]}" not found')
            return json_reply(200, items[0], *_private(admission))
        body: dict[str, Any] = {
            "kind": res.list_kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(head)},
            "items": items,
        }
        return json_reply(200, body, *_private(admission))
    except ClientError as exc:
        node.metrics.client_error(exc.reason)
        return error_reply(exc, Mode.LIST, retry_ms=node.retry_ms)


def _private(admission: Admission) -> tuple[tuple[str, str], ...]:
    """An answer that depends on who asked is never stored by a shared cache."""
    if admission.principal is None:
        return ()
    return (("cache-control", "private, no-store"),)


def _check_not_ahead(parsed: WatchRequest, head: int) -> None:
    rv = parsed.resource_version
    if rv and rv > head:  # "at least rv": this log is the truth, so rv never existed
        raise Expired(f"resource version {rv} is newer than this log's head ({head})")


async def serve_websocket(
    node: Node,
    resource: str,
    request: WebSocketRequest,
    socket: Socket,
    *,
    authorize: Authorize | None = None,
    limits: WebSocketLimits | None = None,
    resources: Collection[str] = (),
) -> None:
    """Run a WebSocket watch (protocol.md §4) on ``socket`` from its handshake to its close;
    its ``watch`` messages may name ``resource`` and the other ``resources`` listed."""
    node.bind()
    await run_websocket(
        node, resource, request, socket, authorize=authorize, limits=limits, resources=resources
    )
