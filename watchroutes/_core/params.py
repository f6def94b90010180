"""Query parameters and content negotiation (protocol.md §3.1 and 3.2), as one pure function.

``parse_request`` turns what an adapter read off a request (query pairs, ``Accept``,
``Last-Event-ID``, the key of an object route) into a :class:`WatchRequest`, or raises a
400 :class:`~watchroutes._core.errors.InvalidParameter` naming the parameter. Parameters the
library does not know are left to the application (a list route has its own).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

import msgspec

from .errors import InvalidParameter
from .selectors import Filter, compile_filter
from .versions import parse_resource_version

__all__ = [
    "DEFAULT_LONGPOLL_LIMIT",
    "MAX_LONGPOLL_LIMIT",
    "MAX_TIMEOUT_SECONDS",
    "Mode",
    "WatchRequest",
    "is_watch",
    "parse_bool",
    "parse_request",
    "wants_event_stream",
]

#: Long poll answer size (protocol.md §3.6).
DEFAULT_LONGPOLL_LIMIT: Final = 500
MAX_LONGPOLL_LIMIT: Final = 10_000
#: The largest ``timeoutSeconds`` accepted (a year); the server's own maximum watch duration
#: caps it further at run time.
MAX_TIMEOUT_SECONDS: Final = 365 * 24 * 3600


class Mode(enum.Enum):
    LIST = "list"
    SSE = "sse"
    JSONLINES = "jsonlines"
    LONGPOLL = "longpoll"
    WEBSOCKET = "websocket"


class WatchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A watch (or list) request, validated and independent of any framework."""

    mode: Mode
    #: The rv to start after (``None``: unset). ``0`` means "this node's state, no wait".
    resource_version: int | None = None
    #: Which parameter ``resource_version`` came from, for messages.
    resource_version_from: str = "resourceVersion"
    #: ``sendInitialEvents`` as given (``None``: unset).
    send_initial_events: bool | None = None
    allow_watch_bookmarks: bool = False
    timeout_seconds: int | None = None
    limit: int = DEFAULT_LONGPOLL_LIMIT
    filter: Filter
    label_selector: str | None = None
    field_selector: str | None = None

    @property
    def initial_events(self) -> bool:
        """Whether the current state is sent first (protocol.md §3.2)."""
        if self.send_initial_events is not None:
            return self.send_initial_events
        return self.resource_version is None or self.resource_version == 0


def is_watch(query: Iterable[tuple[str, str]], accept: str | None) -> bool:
    """Whether a GET asks for a watch rather than the list (protocol.md §3.1), without
    validating anything (``parse_request`` does: a malformed watch is still a watch)."""
    for name, value in query:
        if name == "watch":
            if parse_bool(value):
                return True
            break
    return wants_event_stream(accept) or any(name == "feed" for name, _ in query)


def parse_bool(value: str) -> bool:
    """Kubernetes booleans: ``0`` and ``false`` (any case) are false, anything else true."""
    return value != "0" and value.lower() != "false"


def wants_event_stream(accept: str | None) -> bool:
    """True when ``Accept`` lists ``text/event-stream`` with a non-zero quality."""
    if not accept:
        return False
    for item in accept.split(","):
        media, _, params = item.partition(";")
        if media.strip().lower() != "text/event-stream":
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return True
        return True
    return False


def _int(name: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if not text.isascii() or not (text.isdigit() or (text[:1] == "-" and text[1:].isdigit())):
        raise InvalidParameter(name, f"must be an integer, got {value[:40]!r}")
    number = int(text) if len(text) < 20 else high + 1
    if not low <= number <= high:
        raise InvalidParameter(name, f"must be between {low} and {high}, got {text[:40]}")
    return number


def parse_request(
    query: Iterable[tuple[str, str]],
    *,
    accept: str | None = None,
    last_event_id: str | None = None,
    key: str | None = None,
    websocket: bool = False,
) -> WatchRequest:
    """Validate a request's watch parameters; the first value of a repeated parameter wins.

    ``websocket``: the parameters of a WebSocket subscription (its URL's query, or a ``watch``
    message); ``watch`` is implied and ``feed`` is refused.
    """
    params: dict[str, str] = {}
    for name, value in query:
        params.setdefault(name, value)

    watch = parse_bool(params["watch"]) if "watch" in params else False
    feed = params.get("feed")
    if feed is not None and feed != "longpoll":
        raise InvalidParameter("feed", f"unsupported value {feed[:40]!r}; supported: longpoll")
    sse = wants_event_stream(accept)
    if websocket:
        if feed is not None:
            raise InvalidParameter("feed", "a WebSocket is its own feed; leave feed out")
        mode = Mode.WEBSOCKET
    elif feed == "longpoll":
        if not watch:
            raise InvalidParameter("feed", "feed=longpoll requires watch=true")
        mode = Mode.LONGPOLL
    elif sse:
        mode = Mode.SSE
    elif watch:
        mode = Mode.JSONLINES
    else:
        mode = Mode.LIST

    match = params.get("resourceVersionMatch")
    if match is not None and match not in ("", "NotOlderThan"):
        raise InvalidParameter(
            "resourceVersionMatch", f"unsupported value {match[:40]!r}; supported: NotOlderThan"
        )

    rv: int | None = None
    rv_from = "resourceVersion"
    for source, given in (
        ("Last-Event-ID", last_event_id if mode is Mode.SSE else None),
        ("lastEventId", params.get("lastEventId")),
        ("resourceVersion", params.get("resourceVersion")),
    ):
        if given is not None and given.strip():  # an empty value is an unset one
            rv = parse_resource_version(given.strip(), source)
            rv_from = source
            break

    send_initial = params.get("sendInitialEvents")
    timeout = params.get("timeoutSeconds")
    limit = params.get("limit")
    label = params.get("labelSelector") or None
    field = params.get("fieldSelector") or None
    return WatchRequest(
        mode=mode,
        resource_version=rv,
        resource_version_from=rv_from,
        send_initial_events=None if send_initial is None else parse_bool(send_initial),
        allow_watch_bookmarks=parse_bool(params.get("allowWatchBookmarks", "false")),
        timeout_seconds=(
            None if timeout is None else _int("timeoutSeconds", timeout, 0, MAX_TIMEOUT_SECONDS)
        ),
        limit=(
            DEFAULT_LONGPOLL_LIMIT
            if limit is None or mode is not Mode.LONGPOLL
            else _int("limit", limit, 1, MAX_LONGPOLL_LIMIT)
        ),
        filter=compile_filter(label, field, name=key),
        label_selector=label,
        field_selector=field,
    )
