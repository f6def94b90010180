"""One WebSocket's watches (protocol.md §4), without I/O: wsproto's shape over watch sessions.

The runtime owns the socket, the clock and the hub; this object owns every rule of the
socket: the handshake (subprotocol, ``Origin``, where the token comes from), the ids of its
subscriptions, their number, the inbound rate and size limits, the idle and duration limits,
and every close code. The driver is::

    handshake = protocol.handshake(request)            # accept(handshake.subprotocol)
    ... authenticate; on a refusal: protocol.refuse(exc)
    protocol.accept(now, end_at=..., closing=...)       # or it closes 1012
    # reader                                            # writer
    event = protocol.receive(text, now)                 round = protocol.step(now, head)
      Subscribe: open a WatchSession, then                send round.messages
        protocol.subscribed(id, session)                  if protocol.closed: close(code)
        or protocol.refuse(id, error)                     wait until woken or deadline()
      Unsubscribed: release its subscription
      Rejected: (an ERROR is queued)
      Violation: stop reading

and the runtime reports what happens outside: ``revoke()`` (the principal's access was
revoked), ``write_timed_out()``, ``peer_gone()`` (a failed write), ``abort()`` (the server
ended the socket at shutdown). Once :attr:`closed`, :attr:`close_code` says how to close the
socket (``None``: the peer is gone; nothing to send).

States (the table below; a misuse fails fast with ``UsageError``): ``CONNECTING`` until the
handshake is read, ``AUTHENTICATING`` while the runtime checks credentials, ``OPEN``,
``CLOSED``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import Final, NamedTuple

from .access import CREDENTIALS_EXPIRED, REVOKED
from .errors import BadRequest, ClientError, NotFound, UsageError
from .params import parse_request
from .registry import CloseReason, Subscription
from .session import WatchSession
from .websocket import (
    IMPLICIT_ID,
    CloseCode,
    Handshake,
    ProtocolViolation,
    RateLimiter,
    UnwatchMessage,
    WebSocketLimits,
    WebSocketRequest,
    decode_message,
    negotiate,
    origin_allowed,
    watch_query,
)
from .wire.websocket import control_message, error_message

__all__ = [
    "CLOSE_FOR",
    "Ended",
    "Rejected",
    "Round",
    "SocketState",
    "Subscribe",
    "Unsubscribed",
    "Violation",
    "WebSocketProtocol",
    "Written",
    "unknown_resource",
    "url_timeout",
]


class SocketState(enum.Enum):
    CONNECTING = "connecting"  # before the handshake was read
    AUTHENTICATING = "authenticating"  # the runtime checks the credentials
    OPEN = "open"  # subscriptions come and go
    CLOSED = "closed"  # close_code says how (None: the peer is gone)


_TRANSITIONS: Final[dict[SocketState, frozenset[SocketState]]] = {
    SocketState.CONNECTING: frozenset({SocketState.AUTHENTICATING, SocketState.CLOSED}),
    SocketState.AUTHENTICATING: frozenset({SocketState.OPEN, SocketState.CLOSED}),
    SocketState.OPEN: frozenset({SocketState.CLOSED}),
    SocketState.CLOSED: frozenset(),
}

#: How the end of a subscription ends its socket (the URL's subscription, or any subscription
#: ended by something else than its own timeout).
CLOSE_FOR: Final[dict[CloseReason, CloseCode]] = {
    CloseReason.SLOW: CloseCode.SLOW,
    CloseReason.SHUTDOWN: CloseCode.RESTART,
    CloseReason.TIMEOUT: CloseCode.NORMAL,
    CloseReason.ERROR: CloseCode.ERROR,
    CloseReason.UNAVAILABLE: CloseCode.TRY_AGAIN,
    CloseReason.EXPIRED: CloseCode.UNAUTHORIZED,
    CloseReason.REVOKED: CloseCode.FORBIDDEN,
}

_REASONS: Final[dict[CloseCode, str]] = {
    CloseCode.NORMAL: "timeoutSeconds passed",
    CloseCode.SLOW: "slow consumer: resume from the last resourceVersion",
    CloseCode.RESTART: "the server is shutting down",
    CloseCode.TRY_AGAIN: "the event log is unavailable: resume later",
    CloseCode.ERROR: "the watch failed",
    CloseCode.UNAUTHORIZED: CREDENTIALS_EXPIRED,
    CloseCode.FORBIDDEN: REVOKED,
}


class Subscribe(NamedTuple):
    """A ``watch`` message the rules let through: open it (``subscribed`` or ``refuse``)."""

    id: str
    resource: str  # the route's own, or one the socket lists
    query: list[tuple[str, str]]
    key: str | None


class Rejected(NamedTuple):
    """A ``watch`` or ``unwatch`` answered with an ERROR envelope (queued): an id in use, too
    many subscriptions, an unknown resource or id. The socket stays open."""

    id: str
    error: ClientError


class Unsubscribed(NamedTuple):
    """An ``unwatch`` ended a subscription (``UNWATCHED`` is queued): release it."""

    id: str
    subscription: Subscription


class Violation(NamedTuple):
    """A message broke the protocol: the socket closes with ``code``; stop reading."""

    code: CloseCode
    reason: str


class Ended(NamedTuple):
    """A subscription that ended in a step: release it with ``reason``."""

    id: str
    subscription: Subscription
    reason: CloseReason


class Written(NamedTuple):
    id: str
    nbytes: int
    oldest: float | None  # the oldest frame's publication time, before the step


class Round(NamedTuple):
    """What a step wrote and ended."""

    messages: list[str]  # text messages to send, in order
    written: list[Written]
    ended: list[Ended]


def url_timeout(query: Sequence[tuple[str, str]]) -> int | None:
    """The URL's ``timeoutSeconds`` (``None`` when absent or invalid: the subscription's
    ERROR says why), read apart from the rest so that it holds whatever the rest says."""
    pairs = [(name, value) for name, value in query if name == "timeoutSeconds"][:1]
    if not pairs:
        return None
    try:
        return parse_request(pairs, websocket=True).timeout_seconds
    except ClientError:
        return None


def _token(request: WebSocketRequest, from_subprotocol: str | None) -> str | None:
    """The route's ``authorize`` hook's token: a ``bearer.<token>`` subprotocol, else an
    ``Authorization: Bearer`` header, else ``access_token`` on the query."""
    if from_subprotocol is not None:
        return from_subprotocol
    header = request.authorization
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return next((value for name, value in request.query if name == "access_token"), None)


class WebSocketProtocol:
    """The sans-IO state of one WebSocket watch socket."""

    def __init__(
        self,
        resource: str,
        *,
        limits: WebSocketLimits | None = None,
        resources: Collection[str] = (),
    ) -> None:
        """``resource``: the route's; ``resources``: the others its messages may name."""
        self.resource = resource
        self.resources = frozenset(resources)
        self.limits = limits or WebSocketLimits()
        #: When the socket ends (1000), whatever becomes of its URL's subscription: set by
        #: :meth:`accept`.
        self.end_at = 0.0
        self.state = SocketState.CONNECTING
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.sessions: dict[str, WatchSession] = {}
        self._pending: set[str] = set()  # ids being opened by the runtime
        self._outbox: list[bytes] = []  # messages that are no event: errors, UNWATCHED
        self._limiter: RateLimiter | None = None
        #: Since when the socket has had no subscription (it closes after ``idle_seconds``).
        self._idle_since: float | None = None
        self._revoked = False
        self._ready = False

    # -- state table -------------------------------------------------------------------------

    def _goto(self, state: SocketState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise UsageError(f"WebSocket cannot go from {self.state.value} to {state.value}")
        self.state = state

    def _expect(self, state: SocketState) -> None:
        if self.state is not state:
            raise UsageError(f"WebSocket is {self.state.value}, not {state.value}")

    def _close(self, code: CloseCode, reason: str | None = None, *, last: bool = False) -> None:
        """Close with ``code``; ``last``: even if a close was decided already (what happened
        to its final writes overrides it)."""
        if self.state is SocketState.CLOSED:
            if not last:
                return
        else:
            self._goto(SocketState.CLOSED)
        self.close_code = code
        self.close_reason = _REASONS[code] if reason is None else reason

    @property
    def closed(self) -> bool:
        return self.state is SocketState.CLOSED

    @property
    def ready(self) -> bool:
        """True when ``step`` has more to write right away."""
        return self.state is SocketState.OPEN and (self._ready or bool(self._outbox))

    def deadline(self) -> float | None:
        """When ``step`` must run again even if nothing happens (``None``: closed)."""
        if self.state is not SocketState.OPEN:
            return None
        due = self.end_at
        for session in self.sessions.values():
            at = session.deadline()
            if at is not None and at < due:
                due = at
        if self._idle_since is not None:
            due = min(due, self._idle_since + self.limits.idle_seconds)
        return due

    # -- the handshake -----------------------------------------------------------------------

    def handshake(self, request: WebSocketRequest, *, known: bool = True) -> Handshake:
        """Read the handshake: the subprotocol to accept the socket with (every refusal is
        a close code after accepting: browsers cannot read a handshake's status), the token
        for the route's ``authorize`` hook, and the refusal, if any (then it is closed).
        ``known``: the route's resource is registered (else 4404, a misconfiguration)."""
        self._expect(SocketState.CONNECTING)
        if not known:
            name = self.resource[:100]
            refused = ProtocolViolation(CloseCode.NOT_FOUND, f"resource {name!r} not found")
            self._close(refused.code, refused.reason)
            return Handshake(None, None, refused)
        handshake = negotiate(request.subprotocols)
        refusal = handshake.refusal
        if refusal is None and not origin_allowed(
            request.origin, host=request.host, secure=request.secure, allowed=self.limits.origins
        ):
            refusal = ProtocolViolation(CloseCode.FORBIDDEN, "origin not allowed")
        if refusal is not None:
            self._close(refusal.code, refusal.reason)
        else:
            self._goto(SocketState.AUTHENTICATING)
        return Handshake(handshake.subprotocol, _token(request, handshake.token), refusal)

    def accept(self, now: float, *, end_at: float, closing: bool = False) -> None:
        """The credentials passed: the socket opens, unless the server is ``closing``, until
        ``end_at`` (its URL's ``timeoutSeconds`` (:func:`url_timeout`) or the server's
        maximum duration)."""
        self._expect(SocketState.AUTHENTICATING)
        self.end_at = end_at
        if closing:
            self._close(CloseCode.RESTART)
            return
        self._goto(SocketState.OPEN)
        self._limiter = RateLimiter(self.limits.max_messages_per_second, now)

    def refuse(self, error: ClientError, sub_id: str | None = None) -> None:
        """A refusal: of the handshake's credentials (``sub_id`` ``None``: 401 closes 4401,
        403 closes 4403, 429 closes 4429, any other client error (a 400: conflicting
        credentials) 4400, anything else 1011), or of one subscription, which gets an ERROR
        envelope while the socket stays open (``sub_id``; protocol.md §4)."""
        if sub_id is None:
            self._expect(SocketState.AUTHENTICATING)
            self._close(_refusal_code(error.code), error.message)
            return
        self._pending.discard(sub_id)
        if self.state is SocketState.OPEN:
            self._outbox.append(error_message(sub_id, error.status()))

    # -- inputs while open -------------------------------------------------------------------

    def receive(
        self, data: str | bytes, now: float
    ) -> Subscribe | Unsubscribed | Rejected | Violation:
        """One inbound message (text, or binary, which is a violation), received at ``now``."""
        self._expect(SocketState.OPEN)
        limiter = self._limiter
        if limiter is None:  # (accept() made it)
            raise UsageError("receive() before accept()")
        limits = self.limits
        try:
            if not limiter.allow(now):
                raise ProtocolViolation(
                    CloseCode.RATE,
                    f"more than {limits.max_messages_per_second:g} messages per second",
                )
            message = decode_message(data, max_bytes=limits.max_message_bytes)
        except ProtocolViolation as exc:
            self._close(exc.code, exc.reason)
            return Violation(exc.code, exc.reason)
        sub_id = message.id
        if isinstance(message, UnwatchMessage):
            session = self.sessions.pop(sub_id, None)
            if session is None:
                unknown = NotFound(f"no subscription {sub_id[:100]!r} on this socket")
                return self._reject(sub_id, unknown)
            if not session.closed:
                session.close(CloseReason.CLIENT)
            self._outbox.append(control_message(sub_id, "UNWATCHED"))
            return Unsubscribed(sub_id, session.subscription)
        if sub_id in self.sessions or sub_id in self._pending:
            return self._reject(
                sub_id, BadRequest(f"subscription id {sub_id[:100]!r} is already in use")
            )
        if len(self.sessions) + len(self._pending) >= limits.max_subscriptions:
            return self._reject(
                sub_id, BadRequest(f"at most {limits.max_subscriptions} subscriptions per socket")
            )
        name = self.resource if message.resource is None else message.resource
        if name != self.resource and name not in self.resources:
            return self._reject(sub_id, unknown_resource(name))
        self._pending.add(sub_id)
        return Subscribe(sub_id, name, watch_query(message), message.key)

    def _reject(self, sub_id: str, error: ClientError) -> Rejected:
        self.refuse(error, sub_id)
        return Rejected(sub_id, error)

    def subscribed(self, sub_id: str, session: WatchSession) -> None:
        """The runtime opened the subscription ``sub_id`` (the URL's is :data:`IMPLICIT_ID`)."""
        self._pending.discard(sub_id)
        self.sessions[sub_id] = session

    def revoke(self) -> None:
        """The socket's principal lost its access: it closes 4403 at the next step."""
        self._revoked = True

    def write_timed_out(self) -> None:
        """A write stalled past the write timeout: a slow consumer (4008)."""
        self._close(CloseCode.SLOW, last=True)

    def peer_gone(self) -> None:
        """A write failed or the peer closed: nothing more is sent, no close frame either."""
        if self.state is not SocketState.CLOSED:
            self._goto(SocketState.CLOSED)
        self.close_code = None

    def abort(self) -> None:
        """The server ended the socket as it shut down (1012, unless it was closing already)."""
        self._close(CloseCode.RESTART)

    def end(self) -> list[Ended]:
        """Forget every subscription (the socket is over, whatever its close was); the
        runtime releases them."""
        ended = [Ended(i, s.subscription, CloseReason.CLIENT) for i, s in self.sessions.items()]
        for session in self.sessions.values():
            if not session.closed:
                session.close(CloseReason.CLIENT)
        self.sessions.clear()
        if self.state is not SocketState.CLOSED:
            self._goto(SocketState.CLOSED)
        return ended

    # -- output ------------------------------------------------------------------------------

    def step(self, now: float, head: int, *, closing: bool = False) -> Round:
        """Everything to send now, and the subscriptions that ended; then, if the socket must
        close, :attr:`closed` is set (send the messages first). ``head`` is the hub's rv now;
        ``closing``: the server is shutting down."""
        self._expect(SocketState.OPEN)
        messages = [m.decode() for m in self._outbox]
        self._outbox.clear()
        written: list[Written] = []
        ended: list[Ended] = []
        ending: CloseReason | None = None
        ready = False
        sessions = self.sessions
        for sub_id, session in list(sessions.items()):
            oldest = session.subscription.oldest_time()
            data = session.step(now, head)
            if data:
                messages.extend(line.decode() for line in data.split(b"\n")[:-1])
                written.append(Written(sub_id, len(data), oldest))
            if session.closed:
                reason = session.close_reason or CloseReason.TIMEOUT
                del sessions[sub_id]
                ended.append(Ended(sub_id, session.subscription, reason))
                # a message's subscription has no duration of its own: only the URL's
                # timeout ends the socket
                if ending is None and (reason is not CloseReason.TIMEOUT or sub_id == IMPLICIT_ID):
                    ending = reason
            elif session.ready:
                ready = True
        self._ready = ready
        if sessions:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        idle_seconds = self.limits.idle_seconds
        if ending is not None:
            self._close(CLOSE_FOR.get(ending, CloseCode.NORMAL))
        elif self._revoked:
            self._close(CloseCode.FORBIDDEN, REVOKED)
        elif closing and not sessions:
            self._close(CloseCode.RESTART)
        elif now >= self.end_at and IMPLICIT_ID not in sessions:
            # (the URL's own subscription ends itself then, after its final bookmark)
            self._close(CloseCode.NORMAL)
        elif self._idle_since is not None and now >= self._idle_since + idle_seconds:
            self._close(CloseCode.NORMAL, f"no subscription for {idle_seconds:g} s")
        return Round(messages, written, ended)


def unknown_resource(name: str) -> NotFound:
    """The refusal of a ``watch`` naming a resource the socket cannot watch (404): one that
    its route does not list, or that the server does not know; the same for both."""
    return NotFound(f"no watchable resource {name[:100]!r}")


def _refusal_code(status: int) -> CloseCode:
    """The close code of a handshake refused with HTTP ``status``."""
    if status == 401:
        return CloseCode.UNAUTHORIZED
    if status == 403:
        return CloseCode.FORBIDDEN
    if status == 429:
        return CloseCode.RATE
    return CloseCode.INVALID if 400 <= status < 500 else CloseCode.ERROR
