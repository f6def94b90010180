"""Who may watch what: principals, the hooks an app gives, and the rules that bind them.

Authentication happens before any byte of an answer is written, on every transport and for
lists and gets alike (protocol.md §7):

* ``authenticate(request) -> Principal | None`` reads the framework-neutral
  :class:`AuthRequest` (headers, query, cookies, WebSocket subprotocols, client address);
  ``None`` (or raising ``Unauthorized``) is a 401 whose message is always :data:`UNAUTHORIZED`
  — never why, never whether the user exists, never the token.
* ``authorize(principal, scope) -> None | str`` may refuse (raise ``Forbidden``: 403) or
  return a *forced* label selector (``"owner=alice"``) that is ANDed into the watch's own, so
  the selector index serves it like any other.
* ``can_see(principal, obj) -> bool`` is the per-object visibility predicate. It is applied
  to the new *and* the previous object of every change, like a selector: gaining visibility
  is an ``ADDED``, losing it a ``DELETED`` carrying the previous object. It filters; it never
  rewrites an object.

A :class:`Principal` may carry ``expires_at`` (seconds since the epoch): its watches end at
that instant (a final bookmark, then a 401 ``credentials expired``), and ``hub.revoke(name)``
ends every watch of a principal at once (403 ``access revoked``).

Token sources (:meth:`AuthRequest.bearer_token`): ``Authorization: Bearer``, a cookie, the
``access_token`` query parameter (EventSource cannot send headers; off unless a route asks),
and the WebSocket subprotocols ``bearer.<token>`` and Kubernetes'
``base64url.bearer.authorization.k8s.io.<base64url token>``. A request whose sources carry
different tokens, or that repeats ``Authorization``, is a 400: picking one would let a proxy
or a script that adds a header decide, silently, who the request acts for.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import BadRequest, Unauthorized

__all__ = [
    "CREDENTIALS_EXPIRED",
    "DUPLICATE_AUTHORIZATION",
    "K8S_SUBPROTOCOL",
    "REVOKED",
    "UNAUTHORIZED",
    "CORS_REQUEST_HEADERS",
    "Access",
    "AuthRequest",
    "Cors",
    "Principal",
    "WatchLimits",
    "WatchScope",
    "carries_token",
    "subprotocol_token",
    "unauthorized",
]

logger = logging.getLogger("watchroutes")

#: The one message of every 401: it says nothing of what was wrong.
UNAUTHORIZED: Final = "a valid bearer token is required"
#: The message of the 401 that ends a watch whose credentials expired.
CREDENTIALS_EXPIRED: Final = "credentials expired"
#: The message of the 403 that ends a watch whose principal's access was revoked.
REVOKED: Final = "access revoked"
#: Kubernetes' WebSocket subprotocol carrying a bearer token (base64url, no padding).
K8S_SUBPROTOCOL: Final = "base64url.bearer.authorization.k8s.io."
_BEARER_SUBPROTOCOL: Final = "bearer."
#: Longest token accepted from any source (a JWT is a few KiB at most).
MAX_TOKEN_LENGTH: Final = 8192


def unauthorized() -> Unauthorized:
    """The 401 of every failed authentication: the same message whatever was wrong."""
    return Unauthorized(UNAUTHORIZED)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. ``name`` identifies it for limits and revocation;
    ``expires_at`` (seconds since the epoch) ends its watches; ``data`` is the app's own."""

    name: str
    expires_at: float | None = None
    data: Any = None


@dataclass(frozen=True)
class AuthRequest:
    """A request as authentication sees it, framework-neutral. Header names are lowercase."""

    # (credentials travel in all four: never in a repr)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query: Sequence[tuple[str, str]] = field(default=(), repr=False)
    cookies: Mapping[str, str] = field(default_factory=dict, repr=False)
    subprotocols: Sequence[str] = field(default=(), repr=False)
    client: str | None = None
    #: ``"GET"``, ``"POST"``, ..., or ``"WEBSOCKET"`` for a handshake.
    method: str = "GET"

    def bearer_token(self, *, cookie: str | None = "token", query: bool = False) -> str | None:
        """The bearer token the request presents: in a WebSocket subprotocol, the
        ``Authorization: Bearer`` header, the ``cookie`` named, or (only if ``query``) the
        ``access_token`` query parameter. ``None`` when there is none or it is malformed, or
        when the ``Authorization`` header has another scheme (never a fallback to the rest).

        Ambiguous credentials are a 400 (:class:`BadRequest`) naming what was wrong, never
        the token: more than one ``Authorization`` header (a list-valued mapping, or values
        joined with ``,`` as WSGI servers and Django join repeated headers; a bearer token
        has no comma, RFC 6750 §2.1), or sources that carry different tokens. The same token
        in several sources (a header and a cookie) is one token.
        """
        found: list[tuple[str, str | None]] = []  # (source, token) in order of precedence
        for protocol in self.subprotocols:
            if carries_token(protocol):
                found.append(("a bearer subprotocol", subprotocol_token(protocol)))
        headers = _header_values(self.headers, "authorization")
        if len(headers) > 1:
            raise BadRequest(f"conflicting credentials: {DUPLICATE_AUTHORIZATION}")
        if headers:
            scheme, _, value = headers[0].strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None  # another scheme, or an empty token: never a fallback to the rest
            found.append(("the Authorization header", _bounded(value.strip())))
        if cookie is not None and self.cookies.get(cookie):
            found.append((f"the {cookie!r} cookie", _bounded(self.cookies[cookie])))
        if query:
            for name, value in self.query:
                if name == "access_token" and value:
                    found.append(("the access_token query parameter", _bounded(value)))
        if not found:
            return None
        first_source, token = found[0]
        for source, other in found[1:]:
            if other != token:
                raise BadRequest(
                    f"conflicting credentials: {first_source} and {source} carry different"
                    " tokens; send one"
                )
        return token


#: The 400's detail for a repeated ``Authorization`` header.
DUPLICATE_AUTHORIZATION: Final = "more than one Authorization header; send one"


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name``: all of a multi-valued mapping's (multidict's
    ``getall``, Starlette's and Werkzeug's ``getlist``), each split at commas (the values of
    a repeated header, joined by the server)."""
    getall = getattr(headers, "getall", None)
    getlist = getattr(headers, "getlist", None)
    if callable(getall):
        values = [str(v) for v in getall(name, [])]
    elif callable(getlist):
        values = [str(v) for v in getlist(name)]
    else:
        value = headers.get(name)
        values = [] if value is None else [value]
    return [part for value in values for part in value.split(",")]


def _bounded(token: str) -> str | None:
    return token if len(token) <= MAX_TOKEN_LENGTH and token.isprintable() else None


def subprotocol_token(protocol: str) -> str | None:
    """The token a WebSocket subprotocol carries (``bearer.<token>`` or Kubernetes'
    base64url form), or ``None``. Such a subprotocol is never echoed in the handshake."""
    if protocol.startswith(K8S_SUBPROTOCOL):
        raw = protocol[len(K8S_SUBPROTOCOL) :]
        try:
            decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (binascii.Error, ValueError):
            return None
        return _bounded(decoded) if decoded else None
    if protocol.startswith(_BEARER_SUBPROTOCOL):
        token = protocol[len(_BEARER_SUBPROTOCOL) :]
        return _bounded(token) if token else None
    return None


def carries_token(protocol: str) -> bool:
    """Whether a subprotocol is a credential (never to be selected or echoed)."""
    return protocol.startswith((K8S_SUBPROTOCOL, _BEARER_SUBPROTOCOL))


@dataclass(frozen=True)
class WatchScope:
    """What a request asks to see, for ``authorize``: the resource, the route's key, the
    selectors as given, and the transport (``list``, ``sse``, ``jsonlines``, ``longpoll``,
    ``websocket``)."""

    resource: str
    key: str | None
    label_selector: str | None
    field_selector: str | None
    transport: str


Authenticate = Callable[[AuthRequest], "Principal | Awaitable[Principal | None] | None"]
Authorize = Callable[[Principal, WatchScope], "str | Awaitable[str | None] | None"]
CanSee = Callable[[Principal, Any], bool]


@dataclass(frozen=True)
class Access:
    """The hooks of one resource (or the hub's default): see the module docstring.

    ``authenticate`` is required; ``authorize`` and ``can_see`` are optional. Without an
    ``Access`` a resource is open to every request, as before.
    """

    authenticate: Authenticate
    authorize: Authorize | None = None
    can_see: CanSee | None = None

    def visibility(self, principal: Principal) -> Callable[[Any], bool] | None:
        """The per-object predicate of ``principal`` (``None``: sees every object)."""
        can_see = self.can_see
        if can_see is None:
            return None

        def visible(obj: Any) -> bool:
            try:
                return bool(can_see(principal, obj))
            except Exception as exc:  # fail closed: a broken hook hides, never leaks or stalls
                logger.error(
                    "the can_see hook failed (%s); the object is hidden", type(exc).__name__
                )
                return False

        return visible


@dataclass(frozen=True)
class WatchLimits:
    """Per-process limits on watches (``None``: no limit). ``per_principal`` and
    ``per_address`` bound concurrent watches (HTTP watches and WebSocket subscriptions);
    ``per_second`` bounds new watches per principal (a token bucket of that rate)."""

    per_principal: int | None = None
    per_address: int | None = None
    per_second: float | None = None

    def __post_init__(self) -> None:
        for name in ("per_principal", "per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None)")
        rate = self.per_second
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("per_second must be positive (or None)")


#: Request headers a cross-origin watch may send (named, never ``*``: with credentials a
#: browser takes ``*`` literally).
CORS_REQUEST_HEADERS: Final = "Authorization, Last-Event-ID, Accept"


@dataclass(frozen=True)
class Cors:
    """Cross-origin access to the watch routes: off unless a hub or resource has one.

    ``origins`` are exact origins (``"https://app.example.com"``); ``"*"`` allows any origin,
    and only without ``credentials``. ``credentials`` adds
    ``Access-Control-Allow-Credentials: true`` (cookies, HTTP auth) for listed origins.
    """

    origins: Sequence[str]
    credentials: bool = False
    #: How long a browser may cache a preflight's answer (seconds).
    max_age: int = 600

    def __post_init__(self) -> None:
        if isinstance(self.origins, str):  # "in" would match substrings
            raise TypeError("Cors(origins=...) takes a list of origins, not one string")
        object.__setattr__(self, "origins", tuple(self.origins))
        if self.credentials and "*" in self.origins:
            raise ValueError("Cors: '*' cannot be combined with credentials")
        if self.max_age < 0:
            raise ValueError("Cors: max_age must not be negative")

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (origin in self.origins or "*" in self.origins)

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers of an answer to a request from ``origin``: the origin echoed only
        when listed (never an unlisted one, never ``*`` with credentials), and always
        ``Vary: Origin``."""
        out = [("vary", "Origin")]
        if origin is None:
            return out
        if self.allows(origin):
            out.append(("access-control-allow-origin", origin))
            if self.credentials:
                out.append(("access-control-allow-credentials", "true"))
        return out

    def preflight(self, origin: str | None) -> list[tuple[str, str]]:
        """The headers of the answer to a preflight (``OPTIONS``) from ``origin``."""
        out = self.headers(origin)
        if self.allows(origin):
            out += [
                ("access-control-allow-methods", "GET"),
                ("access-control-allow-headers", CORS_REQUEST_HEADERS),
                ("access-control-max-age", str(self.max_age)),
            ]
        return out
