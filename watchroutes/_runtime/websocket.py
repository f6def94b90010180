"""WebSocket watches (protocol.md §4): several subscriptions on one socket, two tasks per socket.

The reader decodes inbound messages and opens or ends subscriptions; the writer steps every
subscription's :class:`WatchSession` and sends what they wrote, one envelope per text message,
sleeping until a subscription wakes it or the next session deadline. Both share the hub's
lock, the same sessions as SSE and JSON lines, and so the same cursor: a client can move
between transports with the rv it last saw.

The adapter supplies a :class:`Socket` (accept, receive, send, close) and a
:class:`WebSocketRequest`; every rule lives here and in :mod:`watchroutes._core.websocket`.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel

from .._core.access import CREDENTIALS_EXPIRED, REVOKED, AuthRequest, Principal
from .._core.errors import BadRequest, ClientError, Forbidden, NotFound, Unauthorized
from .._core.params import parse_request
from .._core.registry import CloseReason
from .._core.session import WatchSession
from .._core.websocket import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_MESSAGES_PER_SECOND,
    DEFAULT_MAX_SUBSCRIPTIONS,
    IMPLICIT_ID,
    CloseCode,
    ProtocolViolation,
    RateLimiter,
    UnwatchMessage,
    decode_message,
    negotiate,
    origin_allowed,
    watch_query,
)
from .._core.wire.websocket import WebSocketWire, control_message, error_message
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


@dataclass(frozen=True)
class WebSocketRequest:
    """A WebSocket handshake as an adapter read it."""

    query: Sequence[tuple[str, str]] = field(repr=False)  # an access_token may be in it
    subprotocols: Sequence[str] = field(default=(), repr=False)  # and a bearer.<token>
    origin: str | None = None
    host: str | None = None
    secure: bool = False
    key: str | None = None
    authorization: str | None = field(default=None, repr=False)
    #: For the ``authenticate`` hook (protocol.md §7): the handshake's headers (names
    #: lowercase), its cookies and the client's address (credentials: never in a repr).
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    cookies: Mapping[str, str] | None = field(default=None, repr=False)
    client: str | None = None

    def auth(self) -> AuthRequest:
        """The handshake as the ``authenticate`` hook sees it."""
        headers = dict(self.headers or {})
        if self.authorization is not None:
            headers.setdefault("authorization", self.authorization)
        return AuthRequest(
            headers=headers,
            query=self.query,
            cookies=self.cookies or {},
            subprotocols=self.subprotocols,
            client=self.client,
            method="WEBSOCKET",
        )


@dataclass(frozen=True)
class WebSocketLimits:
    """Per-socket limits (protocol.md §4), with the named defaults."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_messages_per_second: float = DEFAULT_MAX_MESSAGES_PER_SECOND
    #: Allowed ``Origin`` values (``"https://app.example.com"``, or ``"*"``); ``None``: the
    #: request's own origin only.
    origins: Sequence[str] | None = None
    #: Seconds a socket may stay open without any subscription before it is closed (1000).
    idle_seconds: float = DEFAULT_IDLE_SECONDS

    def __post_init__(self) -> None:
        if isinstance(self.origins, str):  # "in" would match substrings
            raise TypeError("WebSocketLimits(origins=...) takes a list of origins, not a string")
        if self.max_message_bytes < 1 or self.max_subscriptions < 1:
            raise ValueError("max_message_bytes and max_subscriptions must be at least 1")
        if self.max_messages_per_second <= 0 or self.idle_seconds <= 0:
            raise ValueError("max_messages_per_second and idle_seconds must be positive")


_CLOSE_FOR: dict[CloseReason, CloseCode] = {
    CloseReason.SLOW: CloseCode.SLOW,
    CloseReason.SHUTDOWN: CloseCode.RESTART,
    CloseReason.TIMEOUT: CloseCode.NORMAL,
    CloseReason.ERROR: CloseCode.ERROR,
    CloseReason.UNAVAILABLE: CloseCode.TRY_AGAIN,
    CloseReason.EXPIRED: CloseCode.UNAUTHORIZED,
    CloseReason.REVOKED: CloseCode.FORBIDDEN,
}


def _token(request: WebSocketRequest, from_subprotocol: str | None) -> str | None:
    if from_subprotocol is not None:
        return from_subprotocol
    header = request.authorization
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return next((value for name, value in request.query if name == "access_token"), None)


async def serve_websocket(
    hub: Node,
    res: ResourceSpec,
    request: WebSocketRequest,
    socket: Socket,
    *,
    authorize: Authorize | None = None,
    limits: WebSocketLimits | None = None,
    resources: Collection[str] = (),
) -> None:
    """Run one WebSocket from its handshake to its close. Its ``watch`` messages may name
    ``res`` and the other ``resources`` the endpoint lists (each guarded by its own
    ``Access``), no other: a resource that only a route's own checks protect is never
    reachable from another route's socket."""
    limits = limits or WebSocketLimits()
    principal: Principal | None = None
    handshake = negotiate(request.subprotocols)
    await socket.accept(handshake.subprotocol)
    try:
        if handshake.refusal is not None:
            raise handshake.refusal
        if not origin_allowed(
            request.origin, host=request.host, secure=request.secure, allowed=limits.origins
        ):
            raise ProtocolViolation(CloseCode.FORBIDDEN, "origin not allowed")
        access = access_of(hub, res)
        if access is not None:
            try:
                principal = await authenticate(access, request.auth(), hub.clock.time_us() / 1e6)
            except ClientError as exc:
                raise ProtocolViolation(_close_code_of(exc), exc.message) from None
        if authorize is not None:
            try:
                result = authorize(_token(request, handshake.token))
                if inspect.isawaitable(result):
                    await result
            except Unauthorized as exc:
                raise ProtocolViolation(CloseCode.UNAUTHORIZED, exc.message) from None
            except Forbidden as exc:
                raise ProtocolViolation(CloseCode.FORBIDDEN, exc.message) from None
        if hub.closing:
            raise ProtocolViolation(CloseCode.RESTART, "the server is shutting down")
    except ProtocolViolation as exc:
        if exc.code is not CloseCode.RESTART:
            hub.metrics.client_error(f"ws-{exc.code.value}")
        await _close(socket, exc.code, exc.reason)
        return
    await _Connection(hub, res, request, socket, limits, principal, resources).run()


def _close_code_of(exc: ClientError) -> CloseCode:
    """The close code of a refusal at the handshake."""
    if exc.code == 401:
        return CloseCode.UNAUTHORIZED
    if exc.code == 403:
        return CloseCode.FORBIDDEN
    return CloseCode.ERROR


async def _close(socket: Socket, code: int, reason: str) -> None:
    try:
        await socket.close(code, reason)
    except Exception:  # the peer went first
        logger.debug("closing a WebSocket that was already gone", exc_info=True)


class _Connection:
    """One accepted socket: its subscriptions, its reader and its writer."""

    def __init__(
        self,
        hub: Node,
        res: ResourceSpec,
        request: WebSocketRequest,
        socket: Socket,
        limits: WebSocketLimits,
        principal: Principal | None = None,
        resources: Collection[str] = (),
    ) -> None:
        self.hub = hub
        #: The resources its ``watch`` messages may name besides its own.
        self.resources = frozenset(resources)
        #: Who the socket acts for (authenticated once, at the handshake).
        self.principal = principal
        #: Each subscription's place in the per-principal and per-address limits.
        self.admissions: dict[str, Admission] = {}
        self.res = res
        self.request = request
        self.socket = socket
        self.limits = limits
        self.sessions: dict[str, WatchSession] = {}
        self.meters: dict[str, WatchMeter] = {}
        self.outbox: deque[bytes] = deque()  # messages that are no event: errors, UNWATCHED
        self.scope: anyio.CancelScope | None = None
        self.close_code: tuple[int, str] | None = None
        self._cancelled = False
        self._finished = False
        #: Around the writer's rounds: cancelled to give up a stuck write.
        self._writing: anyio.CancelScope | None = None
        self.alarm = make_alarm(hub.clock, hub.write_timeout, self._give_up_write)
        #: When the socket ends (1000), whatever becomes of its URL's subscription: the URL's
        #: ``timeoutSeconds``, or the server's maximum watch duration.
        self.end_at = hub.end_at(_url_timeout(request.query))
        #: Since when the socket has had no subscription (it closes after ``idle_seconds``).
        self.idle_since: float | None = None
        #: Its principal's access was revoked: the socket closes 4403 at the next round.
        self.revoked = False

    # -- the hub's view -------------------------------------------------------------------

    @property
    def watches(self) -> int:
        return len(self.sessions)

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
            self.revoked = True
            self.wake()

    def cancel(self) -> None:
        self._cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        hub = self.hub
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
            if self.close_code is None and self._cancelled:
                self.close_code = (CloseCode.RESTART, "the server is shutting down")
            if self.close_code is not None:
                code, reason = self.close_code
                with anyio.move_on_after(hub.write_timeout, shield=True):
                    await _close(self.socket, code, reason)
        finally:
            self.alarm.close()
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        with self.hub.lock:
            for sub_id in list(self.sessions):
                self._end(sub_id, CloseReason.CLIENT)
        self.hub.untrack(self)

    def _end(self, sub_id: str, reason: CloseReason) -> bool:
        """End a subscription (under the hub's lock); ``False`` when there is none."""
        session = self.sessions.pop(sub_id, None)
        if session is None:
            return False
        if not session.closed:
            session.close(reason)
        self.hub.state.close_watch(session.subscription, reason)
        self.meters.pop(sub_id).closed(reason.value)
        admission = self.admissions.pop(sub_id, None)
        if admission is not None:
            admission.release()
        return True

    async def _open(
        self, sub_id: str, res: ResourceSpec, query: Sequence[tuple[str, str]], key: str | None
    ) -> None:
        """Open a subscription, or queue its ERROR envelope."""
        try:
            parsed = parse_request(query, websocket=True, key=key)
            wire = WebSocketWire(
                res.kind, res.api_version, sub_id, bookmarks=parsed.allow_watch_bookmarks
            )
            end_at = self.end_at if sub_id == IMPLICIT_ID else None
            same = access_of(self.hub, res) is access_of(self.hub, self.res)
            parsed, admission = await admit(
                self.hub,
                res,
                self.request.auth(),
                parsed,
                key=key,
                transport="websocket",
                principal=self.principal if same else None,  # else: its own authentication
            )
            try:
                session = await open_session(
                    self.hub, res, parsed, wire, end_at=end_at, admission=admission
                )
            except BaseException:
                admission.release()
                raise
        except ClientError as exc:
            self._error(sub_id, exc)
            return
        self.admissions[sub_id] = admission
        session.subscription.waker = self.alarm.set
        session.subscription.on_close = self._closed
        self.sessions[sub_id] = session
        self.meters[sub_id] = WatchMeter(
            self.hub.metrics, self.hub.clock, res.name, "websocket", session.subscription
        )
        self.wake()

    def _error(self, sub_id: str, exc: ClientError) -> None:
        self.hub.metrics.client_error(exc.reason)
        self.outbox.append(error_message(sub_id, exc.status()))
        self.wake()

    async def _read(self) -> None:
        clock = self.hub.clock
        limits = self.limits
        limiter = RateLimiter(limits.max_messages_per_second, clock.now())
        try:
            while True:
                data = await self.socket.receive()
                if data is None:
                    return
                if not limiter.allow(clock.now()):
                    raise ProtocolViolation(
                        CloseCode.RATE,
                        f"more than {limits.max_messages_per_second:g} messages per second",
                    )
                message = decode_message(data, max_bytes=limits.max_message_bytes)
                if isinstance(message, UnwatchMessage):
                    self._unwatch(message.id)
                    continue
                sub_id = message.id
                if sub_id in self.sessions:
                    self._error(
                        sub_id, BadRequest(f"subscription id {sub_id[:100]!r} is already in use")
                    )
                    continue
                if len(self.sessions) >= limits.max_subscriptions:
                    self._error(
                        sub_id,
                        BadRequest(f"at most {limits.max_subscriptions} subscriptions per socket"),
                    )
                    continue
                try:
                    res = self.res if message.resource is None else self._resource(message.resource)
                except ClientError as exc:
                    self._error(sub_id, exc)
                    continue
                await self._open(sub_id, res, watch_query(message), message.key)
        except ProtocolViolation as exc:
            self.hub.metrics.client_error(f"ws-{exc.code.value}")
            self.close_code = (exc.code, exc.reason)

    def _resource(self, name: str) -> ResourceSpec:
        if name != self.res.name and name not in self.resources:
            raise NotFound(f"no watchable resource {name[:100]!r}")
        try:
            return self.hub.spec(name)
        except NotFound:
            raise NotFound(f"no watchable resource {name[:100]!r}") from None

    def _unwatch(self, sub_id: str) -> None:
        with self.hub.lock:
            ended = self._end(sub_id, CloseReason.CLIENT)
        if not ended:
            self._error(sub_id, NotFound(f"no subscription {sub_id[:100]!r} on this socket"))
            return
        self.outbox.append(control_message(sub_id, "UNWATCHED"))
        self.wake()

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
                self.close_code = (CloseCode.SLOW, _REASONS[CloseCode.SLOW])
                return
            # a subscription closed behind a stuck write: the next round ends the socket

    async def _rounds(self) -> None:
        hub = self.hub
        clock = hub.clock
        lock = hub.lock
        state = hub.state
        socket = self.socket
        alarm = self.alarm
        outbox = self.outbox
        sessions = self.sessions
        limits = self.limits
        while True:
            messages: list[bytes] = []
            written: list[tuple[WatchMeter, int, float | None]] = []
            ended: CloseReason | None = None
            ready = False
            with lock:
                now = clock.now()
                head = state.head
                while outbox:
                    messages.append(outbox.popleft())
                for sub_id, session in list(sessions.items()):
                    oldest = session.subscription.oldest_time()
                    data = session.step(now, head)
                    if data:
                        messages.extend(data.split(b"\n")[:-1])
                        written.append((self.meters[sub_id], len(data), oldest))
                    if session.closed:
                        reason = session.close_reason or CloseReason.TIMEOUT
                        self._end(sub_id, reason)
                        if reason is not CloseReason.TIMEOUT or sub_id == IMPLICIT_ID:
                            ended = reason if ended is None else ended
                    elif session.ready:
                        ready = True
                closing = state.closing
                if sessions:
                    self.idle_since = None
                elif self.idle_since is None:
                    self.idle_since = now
            try:
                for message in messages:
                    await alarm.write(socket.send, message.decode())
            except (Disconnected, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            for meter, nbytes, oldest in written:
                meter.wrote(nbytes, oldest)
            if ended is not None:
                code = _CLOSE_FOR.get(ended, CloseCode.NORMAL)
                self.close_code = (code, _REASONS[code])
                return
            if self.revoked:
                self.close_code = (CloseCode.FORBIDDEN, REVOKED)
                return
            if closing and not sessions:
                self.close_code = (CloseCode.RESTART, _REASONS[CloseCode.RESTART])
                return
            if now >= self.end_at and IMPLICIT_ID not in sessions:
                # (the URL's own subscription ends itself then, after its final bookmark)
                self.close_code = (CloseCode.NORMAL, _REASONS[CloseCode.NORMAL])
                return
            idle_end = None if self.idle_since is None else self.idle_since + limits.idle_seconds
            if idle_end is not None and now >= idle_end and not outbox:
                self.close_code = (
                    CloseCode.NORMAL,
                    f"no subscription for {limits.idle_seconds:g} s",
                )
                return
            if ready:
                await anyio.lowlevel.checkpoint()
                continue
            deadlines = [d for s in sessions.values() if (d := s.deadline()) is not None]
            deadlines.append(self.end_at)
            if idle_end is not None:
                deadlines.append(idle_end)
            await alarm.wait(min(deadlines))


def _url_timeout(query: Sequence[tuple[str, str]]) -> int | None:
    """The URL's ``timeoutSeconds`` (``None`` when absent or invalid: the subscription's
    ERROR says why), read apart from the rest so that it holds whatever the rest says."""
    pairs = [(name, value) for name, value in query if name == "timeoutSeconds"][:1]
    if not pairs:
        return None
    try:
        return parse_request(pairs, websocket=True).timeout_seconds
    except ClientError:
        return None


_REASONS: dict[int, str] = {
    CloseCode.NORMAL: "timeoutSeconds passed",
    CloseCode.SLOW: "slow consumer: resume from the last resourceVersion",
    CloseCode.RESTART: "the server is shutting down",
    CloseCode.TRY_AGAIN: "the event log is unavailable: resume later",
    CloseCode.ERROR: "the watch failed",
    CloseCode.UNAUTHORIZED: CREDENTIALS_EXPIRED,
    CloseCode.FORBIDDEN: REVOKED,
}
