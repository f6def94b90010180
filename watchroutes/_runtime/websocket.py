"""WebSocket watches (protocol.md §4): the driver of a sans-IO
:class:`~watchroutes._core.wsprotocol.WebSocketProtocol`, two tasks per socket.

Every rule of the socket (handshake, ids, limits, rate, idle and duration, close codes) is the
protocol's; this module does what needs I/O: authentication, opening each subscription's
:class:`WatchSession` (the same sessions as SSE and JSON lines, so the same cursor: a client
can move between transports with the rv it last saw), the hub's bookkeeping, and the socket.
The reader feeds inbound messages to the protocol and opens or ends the subscriptions it
asks for; the writer steps the protocol under the hub's lock and sends what it wrote,
sleeping until a subscription wakes it or the protocol's deadline.

The adapter supplies a :class:`Socket` (accept, receive, send, close) and a
:class:`WebSocketRequest`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel

from .._core.access import Principal
from .._core.errors import ClientError, Forbidden, Unauthorized
from .._core.params import parse_request
from .._core.registry import CloseReason, Subscription
from .._core.websocket import IMPLICIT_ID, CloseCode, WebSocketLimits, WebSocketRequest
from .._core.wire.websocket import WebSocketWire
from .._core.wsprotocol import (
    Rejected,
    Subscribe,
    Unsubscribed,
    WebSocketProtocol,
    unknown_resource,
    url_timeout,
)
from .alarm import make_alarm
from .guard import Admission, access_of, admit, authenticate
from .meter import WatchMeter
from .stream import Disconnected, open_session

if TYPE_CHECKING:
    from .node import Node, ResourceSpec

__all__ = ["Authorize", "Socket", "WebSocketLimits", "WebSocketRequest", "serve_websocket"]

logger = logging.getLogger("watchroutes")

#: Checks a socket's credentials: receives the bearer token (from a ``bearer.<token>``
#: subprotocol, an ``Authorization: Bearer`` header or an ``access_token`` query parameter, in
#: that order; ``None`` when there is none) and raises ``Unauthorized`` (closes 4401) or
#: ``Forbidden`` (4403) to refuse it.
Authorize = Callable[[str | None], Awaitable[None] | None]


class Socket(Protocol):
    """What the runtime needs from a framework's WebSocket."""

    async def accept(self, subprotocol: str | None) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next message (text or binary), or ``None`` once the peer has gone."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raise :class:`Disconnected` when the peer has gone."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


async def serve_websocket(
    hub: Node,
    resource: str,
    request: WebSocketRequest,
    socket: Socket,
    *,
    authorize: Authorize | None = None,
    limits: WebSocketLimits | None = None,
    resources: Collection[str] = (),
) -> None:
    """Run one WebSocket from its handshake to its close. Its ``watch`` messages may name
    ``resource`` and the other ``resources`` the endpoint lists (each guarded by its own
    ``Access``), no other: a resource that only a route's own checks protect is never
    reachable from another route's socket."""
    protocol = WebSocketProtocol(resource, limits=limits, resources=resources)
    res = hub.specs.get(resource)
    handshake = protocol.handshake(request, known=res is not None)
    await socket.accept(handshake.subprotocol)
    principal: Principal | None = None
    if res is not None and not protocol.closed:
        principal = await _authenticate(hub, res, protocol, request, handshake.token, authorize)
    if not protocol.closed:
        now = hub.clock.now()
        protocol.accept(now, end_at=hub.end_at(url_timeout(request.query)), closing=hub.closing)
    code = protocol.close_code
    if code is not None:  # refused
        if code is not CloseCode.RESTART and code is not CloseCode.NOT_FOUND:
            hub.metrics.client_error(f"ws-{code.value}")
        await _close(socket, code, protocol.close_reason)
        return
    assert res is not None  # (an unknown resource was refused)
    await _Connection(hub, protocol, res, request, socket, principal).run()


async def _authenticate(
    hub: Node,
    res: ResourceSpec,
    protocol: WebSocketProtocol,
    request: WebSocketRequest,
    token: str | None,
    authorize: Authorize | None,
) -> Principal | None:
    """The socket's principal (once per socket, protocol.md §7), then the route's own
    ``authorize`` hook; a refusal goes to the protocol, which closes with its code."""
    principal: Principal | None = None
    access = access_of(hub, res)
    if access is not None:
        try:
            principal = await authenticate(access, request.auth(), hub.clock.time_us() / 1e6)
        except ClientError as exc:
            protocol.refuse(exc)
            return None
    if authorize is not None:
        try:
            result = authorize(token)
            if inspect.isawaitable(result):
                await result
        except (Unauthorized, Forbidden) as exc:
            protocol.refuse(exc)
    return principal


async def _close(socket: Socket, code: int, reason: str) -> None:
    try:
        await socket.close(code, reason)
    except Exception:  # the peer went first
        logger.debug("closing a WebSocket that was already gone", exc_info=True)


class _Connection:
    """One accepted socket: its protocol, its subscriptions' hub side, reader and writer."""

    def __init__(
        self,
        hub: Node,
        protocol: WebSocketProtocol,
        res: ResourceSpec,
        request: WebSocketRequest,
        socket: Socket,
        principal: Principal | None = None,
    ) -> None:
        self.hub = hub
        self.protocol = protocol
        self.res = res
        self.request = request
        self.socket = socket
        #: Who the socket acts for (authenticated once, at the handshake).
        self.principal = principal
        #: Each subscription's place in the per-principal and per-address limits.
        self.admissions: dict[str, Admission] = {}
        self.meters: dict[str, WatchMeter] = {}
        self.scope: anyio.CancelScope | None = None
        self._cancelled = False
        self._finished = False
        #: Around the writer's rounds: cancelled to give up a stuck write.
        self._writing: anyio.CancelScope | None = None
        self.alarm = make_alarm(hub.clock, hub.write_timeout, self._give_up_write)

    # -- the hub's view -------------------------------------------------------------------

    @property
    def watches(self) -> int:
        return len(self.protocol.sessions)

    def wake(self) -> None:
        self.alarm.set()

    def _give_up_write(self) -> None:
        if self._writing is not None:
            self._writing.cancel()

    def _closed(self) -> None:
        """A subscription was closed (slow, shutdown, lost log)."""
        if self.alarm.writing:
            # while a write is stuck behind a peer that does not read: give up that write
            # and close the socket now
            self._give_up_write()

    def on_shutdown(self) -> None:
        self.wake()  # a socket without subscriptions learns of the shutdown here

    def on_revoke(self, principal: str) -> None:
        if self.principal is not None and self.principal.name == principal:
            self.protocol.revoke()
            self.wake()

    def cancel(self) -> None:
        self._cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        hub = self.hub
        protocol = self.protocol
        hub.track(self)
        try:
            await self._open(IMPLICIT_ID, self.res, self.request.query, self.request.key)
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self._cancelled:
                    scope.cancel()
                async with anyio.create_task_group() as tg:

                    async def reader() -> None:
                        await self._read()
                        tg.cancel_scope.cancel()

                    tg.start_soon(reader)
                    await self._write()
                    tg.cancel_scope.cancel()
            if self._cancelled:
                protocol.abort()
            code = protocol.close_code
            if code is not None:
                with anyio.move_on_after(hub.write_timeout, shield=True):
                    await _close(self.socket, code, protocol.close_reason)
        finally:
            self.alarm.close()
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        with self.hub.lock:
            for ended in self.protocol.end():
                self._release(ended.id, ended.subscription, ended.reason)
        self.hub.untrack(self)

    def _release(self, sub_id: str, sub: Subscription, reason: CloseReason) -> None:
        """The hub's side of a subscription's end (under the hub's lock)."""
        self.hub.state.close_watch(sub, reason)
        self.meters.pop(sub_id).closed(reason.value)
        admission = self.admissions.pop(sub_id, None)
        if admission is not None:
            admission.release()

    async def _open(
        self, sub_id: str, res: ResourceSpec, query: Sequence[tuple[str, str]], key: str | None
    ) -> None:
        """Open a subscription, or have the protocol queue its ERROR envelope."""
        hub = self.hub
        try:
            parsed = parse_request(query, websocket=True, key=key)
            wire = WebSocketWire(
                res.kind, res.api_version, sub_id, bookmarks=parsed.allow_watch_bookmarks
            )
            end_at = self.protocol.end_at if sub_id == IMPLICIT_ID else None
            same = access_of(hub, res) is access_of(hub, self.res)
            parsed, admission = await admit(
                hub,
                res,
                self.request.auth(),
                parsed,
                key=key,
                transport="websocket",
                principal=self.principal if same else None,  # else: its own authentication
            )
            try:
                session = await open_session(
                    hub, res, parsed, wire, end_at=end_at, admission=admission
                )
            except BaseException:
                admission.release()
                raise
        except ClientError as exc:
            self._refuse(sub_id, exc)
            return
        self.admissions[sub_id] = admission
        session.subscription.waker = hub.on_loop(self.alarm.set)
        session.subscription.on_close = hub.on_loop(self._closed)
        self.protocol.subscribed(sub_id, session)
        self.meters[sub_id] = WatchMeter(
            hub.metrics, hub.clock, res.name, "websocket", session.subscription
        )
        self.wake()

    def _refuse(self, sub_id: str, exc: ClientError) -> None:
        self.hub.metrics.client_error(exc.reason)
        self.protocol.refuse(exc, sub_id)
        self.wake()

    async def _read(self) -> None:
        hub = self.hub
        clock = hub.clock
        protocol = self.protocol
        while True:
            data = await self.socket.receive()
            if data is None:
                return
            if protocol.closed:  # its close is being sent: the writer ends the socket
                continue
            event = protocol.receive(data, clock.now())
            if isinstance(event, Subscribe):
                res = hub.specs.get(event.resource)
                if res is None:
                    self._refuse(event.id, unknown_resource(event.resource))
                else:
                    await self._open(event.id, res, event.query, event.key)
            elif isinstance(event, Unsubscribed):
                with hub.lock:
                    self._release(event.id, event.subscription, CloseReason.CLIENT)
                self.wake()
            elif isinstance(event, Rejected):
                hub.metrics.client_error(event.error.reason)
                self.wake()
            else:  # a violation: the socket closes with its code
                hub.metrics.client_error(f"ws-{event.code.value}")
                return

    async def _write(self) -> None:
        """Run the writer's rounds until the socket ends; a write given up (stuck when a
        subscription closed, or past the write timeout) interrupts them."""
        alarm = self.alarm
        while True:
            with anyio.CancelScope() as scope:
                self._writing = scope
                try:
                    await self._rounds()
                    return
                except TimeoutError:  # the portable alarm's write timeout
                    alarm.timed_out = True
                finally:
                    self._writing = None
            if alarm.timed_out:
                logger.info("WebSocket write timed out")
                self.protocol.write_timed_out()
                return
            # a subscription closed behind a stuck write: the next round ends the socket

    async def _rounds(self) -> None:
        hub = self.hub
        clock = hub.clock
        lock = hub.lock
        state = hub.state
        socket = self.socket
        alarm = self.alarm
        protocol = self.protocol
        meters = self.meters
        while not protocol.closed:
            with lock:
                now = clock.now()
                out = protocol.step(now, state.head, closing=state.closing)
                written = [(meters[w.id], w.nbytes, w.oldest) for w in out.written]
                for ended in out.ended:
                    self._release(ended.id, ended.subscription, ended.reason)
            try:
                for message in out.messages:
                    await alarm.write(socket.send, message)
            except (Disconnected, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                protocol.peer_gone()
                return
            for meter, nbytes, oldest in written:
                meter.wrote(nbytes, oldest)
            if protocol.closed:
                return
            if protocol.ready:
                await anyio.lowlevel.checkpoint()
                continue
            await alarm.wait(protocol.deadline())
