"""The WebSocket protocol's rules (protocol.md §4), without I/O: the handshake as an adapter
reads it and the per-socket limits, the ``Origin`` check, inbound messages, the inbound rate
limit, and the close codes.

:class:`~watchroutes._core.wsprotocol.WebSocketProtocol` composes these into one socket's
state: it negotiates with :func:`negotiate`, checks :func:`origin_allowed`, decodes every
inbound message with :func:`decode_message` (a typed msgspec decoder: anything else is a
:class:`ProtocolViolation`, which closes the socket with its code), and turns a ``watch``
message into the query of an ordinary watch request with :func:`watch_query`, so a WebSocket
subscription is validated exactly as an HTTP watch is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from urllib.parse import urlsplit

import msgspec

from .access import AuthRequest, carries_token, subprotocol_token

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_MAX_MESSAGES_PER_SECOND",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "IMPLICIT_ID",
    "MAX_ID_LENGTH",
    "SUBPROTOCOL",
    "CloseCode",
    "Handshake",
    "Message",
    "ProtocolViolation",
    "RateLimiter",
    "UnwatchMessage",
    "WatchMessage",
    "WebSocketLimits",
    "WebSocketRequest",
    "decode_message",
    "negotiate",
    "origin_allowed",
    "watch_query",
]

SUBPROTOCOL: Final = "watchroutes.v1"
#: A second offered subprotocol ``bearer.<token>`` carries credentials (browsers cannot set
#: an ``Authorization`` header on a WebSocket). It is never echoed back.
BEARER_PREFIX: Final = "bearer."
#: Inbound message size: a watch message is a few hundred bytes; 64 KiB leaves room for the
#: longest selectors (2 x 4 KiB) many times over.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Subscriptions on one socket: each holds a buffer of its own.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 100
#: Inbound messages per second (a token bucket of this size, refilled at this rate): a
#: client subscribes a handful of times per page, never in a loop.
DEFAULT_MAX_MESSAGES_PER_SECOND: Final = 20
#: How long a socket may stay open without any subscription (its URL's failed, or every one
#: ended) before it is closed with 1000: such a socket is an idle connection, which servers
#: close after seconds (uvicorn's keep-alive timeout is 5 s, nginx's 75 s). 10 s leaves a
#: client time to read an ERROR and send a corrected watch, and keeps a client from holding
#: sockets open that watch nothing.
DEFAULT_IDLE_SECONDS: Final = 10.0
#: The id of the subscription a socket opens from its URL's query.
IMPLICIT_ID: Final = ""
MAX_ID_LENGTH: Final = 256
_MAX_REASON_BYTES: Final = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes


class CloseCode(enum.IntEnum):
    NORMAL = 1000  # timeoutSeconds passed, or no subscription for the idle period
    TOO_BIG = 1009  # an inbound message over the size limit
    ERROR = 1011  # the watch failed on the server
    RESTART = 1012  # the server is shutting down: resume elsewhere
    TRY_AGAIN = 1013  # the shared event log is unavailable or was replaced: resume later
    SLOW = 4008  # past its buffer: resume from the last rv
    INVALID = 4400  # an invalid message or handshake
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403  # credentials refused, or an Origin outside the allow-list
    NOT_FOUND = 4404  # the route's resource does not exist
    RATE = 4429  # too many inbound messages


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


class ProtocolViolation(Exception):
    """Ends the socket with ``code``; ``reason`` is shortened to fit a close frame."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        encoded = reason.encode()
        if len(encoded) > _MAX_REASON_BYTES:
            reason = encoded[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Handshake(NamedTuple):
    subprotocol: str | None  # to select in the accept, or None
    token: str | None  # from a bearer.<token> subprotocol
    refusal: ProtocolViolation | None  # close right after accepting


def negotiate(offered: Sequence[str]) -> Handshake:
    """Choose the subprotocol among those the client offered, and find its bearer token."""
    speaks = False
    token: str | None = None
    for item in offered:
        if item == SUBPROTOCOL:
            speaks = True
        elif token is None and carries_token(item):  # bearer.<token>, or Kubernetes' form
            token = subprotocol_token(item)  # (never echoed)
    # A browser fails a socket whose server selects none of the subprotocols it offered, and
    # a token-carrying one is never selected: so a client that offers any must offer ours.
    if offered and not speaks:
        refusal = ProtocolViolation(
            CloseCode.INVALID, f'unsupported subprotocol: offer "{SUBPROTOCOL}"'
        )
        return Handshake(None, token, refusal)
    return Handshake(SUBPROTOCOL if speaks else None, token, None)


_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(scheme: str, authority: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(f"//{authority}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = scheme.lower()
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _parse_origin(text: str) -> tuple[str, str, int] | None:
    scheme, sep, rest = text.strip().partition("://")
    if not sep or "/" in rest.rstrip("/"):
        return None
    return _origin(scheme, rest.rstrip("/"))


def origin_allowed(
    origin: str | None, *, host: str | None, secure: bool, allowed: Sequence[str] | None
) -> bool:
    """protocol.md §4: no ``Origin`` (not a browser) is allowed; one that is given must match an
    entry of ``allowed`` by scheme, host and port (``"*"`` allows any), or, when ``allowed``
    is ``None``, the request's own ``Host``."""
    if origin is None:
        return True
    given = _parse_origin(origin)
    if given is None:  # "null" (a sandboxed page, a file), or malformed
        return False
    if allowed is None:
        return host is not None and given == _origin("https" if secure else "http", host)
    return any(entry == "*" or _parse_origin(entry) == given for entry in allowed)


class WatchMessage(
    msgspec.Struct,
    tag_field="op",
    tag="watch",
    forbid_unknown_fields=True,
    rename="camel",
    frozen=True,
):
    """``{"op": "watch", "id": ..., ...}``: a subscription, with protocol.md §3.2's parameters."""

    id: str
    resource: str | None = None
    key: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    resource_version: str | None = None
    resource_version_match: str | None = None
    send_initial_events: bool | None = None
    allow_watch_bookmarks: bool | None = None


class UnwatchMessage(
    msgspec.Struct, tag_field="op", tag="unwatch", forbid_unknown_fields=True, frozen=True
):
    """``{"op": "unwatch", "id": ...}``: end a subscription, answered ``UNWATCHED``."""

    id: str


Message = WatchMessage | UnwatchMessage

_decoder: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)


def decode_message(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """One inbound message, or a :class:`ProtocolViolation` saying what is wrong with it."""
    if not isinstance(data, str):
        raise ProtocolViolation(CloseCode.INVALID, "binary messages are not accepted; send text")
    if len(data) > max_bytes or (4 * len(data) > max_bytes and len(data.encode()) > max_bytes):
        raise ProtocolViolation(CloseCode.TOO_BIG, f"messages are limited to {max_bytes} bytes")
    try:
        message = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(CloseCode.INVALID, f"invalid message: {exc}") from None
    except msgspec.DecodeError:
        raise ProtocolViolation(CloseCode.INVALID, "invalid message: not JSON") from None
    if len(message.id) > MAX_ID_LENGTH:
        raise ProtocolViolation(
            CloseCode.INVALID, f"invalid message: an id is at most {MAX_ID_LENGTH} characters"
        )
    return message


def watch_query(message: WatchMessage) -> list[tuple[str, str]]:
    """The message's parameters as query pairs, for the shared parameter rules."""
    pairs: list[tuple[str, str]] = []
    for name, value in (
        ("labelSelector", message.label_selector),
        ("fieldSelector", message.field_selector),
        ("resourceVersion", message.resource_version),
        ("resourceVersionMatch", message.resource_version_match),
        ("sendInitialEvents", message.send_initial_events),
        ("allowWatchBookmarks", message.allow_watch_bookmarks),
    ):
        if isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        elif value is not None:
            pairs.append((name, value))
    return pairs


class RateLimiter:
    """A token bucket: ``rate`` per second, in bursts of at most ``max(1, rate)`` (a rate
    below one a second still lets one through every ``1 / rate`` seconds)."""

    __slots__ = ("_capacity", "_last", "_tokens", "rate")

    def __init__(self, rate: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = now

    def allow(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._capacity, self._tokens + elapsed * self.rate)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
