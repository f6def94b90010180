"""The watch client's decisions, without I/O: which request to send next, what each answer
means, and how long to wait before the next attempt.

The rules (protocol.md §3; client-go's reflector for the retry policy):

- **Resume point.** The last rv received outside the initial events (an event, a bookmark, an
  SSE id-only block, a long poll's continue rv). A reconnect sends it (SSE: ``Last-Event-ID``;
  otherwise ``resourceVersion``), so nothing is missed and nothing repeats.
- **Initial events** are complete only at the bookmark annotated
  ``k8s.io/initial-events-end``. A drop before it starts them over (the same request again)
  and the client yields ``RESET`` first, so a consumer never mixes two partial states.
- **Expired** (410, as an HTTP status or an ``ERROR`` event) and the server's ``RESET``: the
  client yields ``RESET`` and asks for the whole state again (no rv), at once.
- **Retryable** (a network error, a read timeout, 429, 5xx, an ``ERROR`` with such a code):
  wait ``Backoff.failure()``, and at least the server's ``retryAfterSeconds`` (or its
  ``Retry-After``, or the SSE ``retry:`` of that answer), then resume.
- **A clean end** of a stream that lived at least ``MIN_HEALTHY`` seconds (``timeoutSeconds``,
  the server's maximum duration, a graceful shutdown) resumes at once; a shorter one counts as
  a failure, so a server that closes every stream at once is not hammered.
- **401**: the token callback is called once, then the watch resumes from its rv; a second
  401 before any event arrives, or no callback, raises :class:`UnauthorizedError`.
- **Any other 4xx** raises :class:`StatusError`: a retry cannot fix it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import urlencode

import msgspec

from .._core.events import EventType
from ._backoff import Backoff
from ._decode import Envelope, JSONLinesDecoder, SSEDecoder, decode, decode_answer
from ._errors import ProtocolError, StatusError, UnauthorizedError
from ._events import INITIAL_EVENTS_END, WatchEvent

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_POLL_TIMEOUT",
    "MIN_HEALTHY",
    "REFRESH",
    "Outcome",
    "RequestSpec",
    "Transport",
    "WatchCore",
    "WatchStatistics",
]

#: The server's heartbeat interval the read timeout is derived from (the hub's default).
DEFAULT_HEARTBEAT: Final = 15.0
#: Long poll: how long the server may hold each request (``timeoutSeconds``).
DEFAULT_POLL_TIMEOUT: Final = 30
#: A stream that ended cleanly after less than this many seconds counts as a failure.
MIN_HEALTHY: Final = 1.0
#: Most bytes of an error answer that are read (a Status is a few hundred).
MAX_ERROR_BODY: Final = 64 * 1024
#: The WebSocket subprotocol of protocol.md §4.
SUBPROTOCOL: Final = "watchroutes.v1"
#: WebSocket close codes after which the watch resumes (protocol.md §4): normal closure (the URL's
#: timeoutSeconds), going away, server shutdown (1012), try again later, slow consumer (4008).
_RESUME_CLOSES: Final = frozenset({1000, 1001, 1012, 1013, 4008})
#: Close codes that are Statuses (protocol.md §4 and 7); 4429 is retried with backoff.
_CLOSE_STATUSES: Final = {
    4400: (400, "BadRequest"),
    4401: (401, "Unauthorized"),
    4403: (403, "Forbidden"),
    1009: (413, "RequestEntityTooLarge"),
    1008: (403, "Forbidden"),
}


class Transport(enum.StrEnum):
    """The HTTP watch formats of protocol.md §3."""

    SSE = "sse"
    JSON_LINES = "jsonlines"
    LONG_POLL = "longpoll"
    #: protocol.md §4 (asyncio only: it runs on the ``websockets`` package).
    WEBSOCKET = "websocket"


class _Refresh(enum.Enum):
    REFRESH = "refresh"


#: The outcome that asks the runtime to call the token callback before the next attempt.
REFRESH: Final = _Refresh.REFRESH
#: Seconds to wait before the next attempt, or :data:`REFRESH`.
Outcome = float | _Refresh


class RequestSpec(NamedTuple):
    url: str
    params: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    #: Seconds without a byte after which the connection counts as dead.
    read_timeout: float


class WatchStatistics(NamedTuple):
    """A watch's counters (``Watch.statistics()``)."""

    #: Answers that opened a watch (HTTP 200).
    connects: int
    #: Attempts after the first.
    reconnects: int
    #: Times the whole state was asked for again (410, ``RESET``, a drop in the initial events).
    relists: int
    #: The resume point: the last rv received outside the initial events.
    resource_version: str | None
    #: Seconds since the server last proved the stream current (any bytes, heartbeats
    #: included); ``None`` before the first answer.
    lag: float | None
    #: ``ADDED``/``MODIFIED``/``DELETED`` events yielded.
    events: int
    #: Bookmarks yielded (id-only SSE blocks and long-poll continue points included).
    bookmarks: int
    #: Calls of the token callback.
    token_refreshes: int
    #: Whether a watch answer is open right now.
    connected: bool
    #: What ended the last failed attempt.
    last_error: str | None


_TYPES: Final = {t.value: t for t in EventType}
_RETRYABLE: Final = frozenset({429, 500, 502, 503, 504})
_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class WatchCore:
    """The state of one logical watch across its connections."""

    def __init__(
        self,
        url: str,
        *,
        transport: Transport | str = Transport.SSE,
        resource_version: str | None = None,
        send_initial_events: bool | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        can_refresh: bool = False,
        heartbeat: float = DEFAULT_HEARTBEAT,
        read_timeout: float | None = None,
        poll_timeout: int = DEFAULT_POLL_TIMEOUT,
        limit: int | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self.transport = Transport(transport)
        if heartbeat <= 0 or poll_timeout < 1:
            raise ValueError("heartbeat and poll_timeout must be positive")
        # protocol.md §3.3: a live stream writes something every heartbeat interval, so a silence
        # longer than two of them means a half-open connection.
        self.read_timeout = read_timeout if read_timeout is not None else 2 * heartbeat + 5.0
        if self.read_timeout <= 2 * heartbeat:
            raise ValueError("read_timeout must be above twice the heartbeat interval")
        self.poll_timeout = poll_timeout
        self.limit = limit
        self.params = dict(params or {})
        for reserved in ("watch", "resourceVersion", "sendInitialEvents", "feed"):
            if reserved in self.params:
                raise ValueError(f"{reserved} is set by the client; pass it as an argument")
        self.headers = dict(headers or {})
        self.token = token
        self.can_refresh = can_refresh
        self.backoff = backoff if backoff is not None else Backoff()
        self.clock = clock
        self.rv = resource_version
        self._send_initial = send_initial_events
        self._want_initial = (resource_version is None and send_initial_events is not False) or (
            resource_version is not None and send_initial_events is True
        )
        # Per connection.
        self._sse = SSEDecoder()
        self._lines = JSONLinesDecoder()
        self._opened_at = 0.0
        self._initial_seen = 0
        self._retry_ms: int | None = None
        self._error: dict[str, Any] | None = None
        self._refreshed = False
        self._pending: list[WatchEvent] = []
        self.finished = False
        # Statistics.
        self._attempts = 0
        self._connects = 0
        self._relists = 0
        self._events = 0
        self._bookmarks = 0
        self._refreshes = 0
        self._connected = False
        self._last_receipt: float | None = None
        self._last_error: str | None = None

    # -- requests ----------------------------------------------------------------------------

    def request(self) -> RequestSpec:
        """The next attempt's request (it starts a new connection's state)."""
        self._attempts += 1
        self._sse = SSEDecoder()
        self._lines = JSONLinesDecoder()
        self._initial_seen = 0
        self._retry_ms = None
        self._error = None
        self.finished = False
        websocket = self.transport is Transport.WEBSOCKET
        params = [] if websocket else [("watch", "true")]
        params += self.params.items()
        headers = dict(self.headers)
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        rv = self.rv
        if self.transport is Transport.SSE:
            headers["Accept"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            if rv is not None:
                headers["Last-Event-ID"] = rv
            read_timeout = self.read_timeout
        else:
            headers.setdefault("Accept", "application/json")
            if rv is not None:
                params.append(("resourceVersion", rv))
            if self.transport is Transport.JSON_LINES or websocket:
                params.append(("allowWatchBookmarks", "true"))
                read_timeout = self.read_timeout
            else:
                params.append(("feed", "longpoll"))
                params.append(("timeoutSeconds", str(self.poll_timeout)))
                if self.limit is not None:
                    params.append(("limit", str(self.limit)))
                read_timeout = self.poll_timeout + self.read_timeout
        if rv is not None and self._want_initial:
            params.append(("sendInitialEvents", "true"))
        elif rv is None and self._send_initial is False:
            params.append(("sendInitialEvents", "false"))
        if websocket:
            # The socket's URL carries the whole query (the subscription ""), in ws(s):.
            headers.pop("Accept", None)
            scheme, colon, rest = self.url.partition(":")
            scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
            separator = "&" if "?" in rest else "?"
            query = separator + urlencode(params) if params else ""
            return RequestSpec(f"{scheme}{colon}{rest}{query}", (), headers, read_timeout)
        return RequestSpec(self.url, tuple(params), headers, read_timeout)

    # -- answers -----------------------------------------------------------------------------

    def opened(self, content_type: str) -> None:
        """A 200 answer with this ``Content-Type`` opened the watch."""
        media = content_type.split(";")[0].strip().lower()
        expected = "text/event-stream" if self.transport is Transport.SSE else "application/json"
        if media != expected:
            raise ProtocolError(
                f"{self.url} answered {media or 'no content type'!r} instead of {expected!r}:"
                " not a watch route"
            )
        now = self.clock()
        self._connects += 1
        self._connected = True
        self._opened_at = now
        self._last_receipt = now

    def opened_websocket(self, subprotocol: str | None) -> None:
        """The WebSocket handshake succeeded with this subprotocol."""
        if subprotocol != SUBPROTOCOL:
            raise ProtocolError(f"{self.url} did not select the {SUBPROTOCOL} subprotocol")
        self.opened("application/json")

    def message(self, data: str | bytes) -> list[WatchEvent]:
        """One WebSocket text message: an envelope of the subscription ``""``."""
        self._last_receipt = self.clock()
        envelope = decode(data.encode() if isinstance(data, str) else data)
        event = self._envelope(envelope, None)
        return [] if event is None else [event]

    def closed(self, code: int | None, reason: str) -> Outcome:
        """The socket closed with ``code`` (``None``: without a close frame)."""
        self._connected = False
        if self._error is not None:
            return self.ended()
        if code in _CLOSE_STATUSES:
            http, name = _CLOSE_STATUSES[code]
            message = reason or f"closed with {code}"
            status = _status_of(http, msgspec.json.encode({"message": message}))
            status["reason"] = name
            return self._outcome(status, 0.0)
        if code in _RESUME_CLOSES:
            return self.ended()
        self._last_error = f"closed with {code}: {reason}" if code else "closed without a code"
        self._drop_initial()
        return self.backoff.failure(self.clock())

    def refused(self, code: int, retry_after: str | None, body: bytes) -> Outcome:
        """A non-200 answer (its first bytes)."""
        self._last_receipt = self.clock()
        status = _status_of(code, body)
        floor = _seconds(retry_after)
        return self._outcome(status, floor)

    def feed(self, chunk: bytes) -> list[WatchEvent]:
        """Bytes of an open SSE or JSON-lines stream; stops at an ``ERROR`` (``finished``)."""
        self._last_receipt = self.clock()
        out: list[WatchEvent] = []
        if self.transport is Transport.SSE:
            for block in self._sse.feed(chunk):
                if block.retry is not None:
                    self._retry_ms = block.retry
                if block.data is not None:
                    event = self._envelope(decode(block.data), block.id)
                elif block.id is not None:
                    event = self._bookmark(block.id)
                else:
                    continue
                if event is not None:
                    out.append(event)
                if self.finished:
                    break
        else:
            for envelope in self._lines.feed(chunk):
                event = self._envelope(envelope, None)
                if event is not None:
                    out.append(event)
                if self.finished:
                    break
        return out

    def answer(self, body: bytes) -> list[WatchEvent]:
        """A long poll's 200 answer (protocol.md §3.6)."""
        self._last_receipt = self.clock()
        answer = decode_answer(body)
        out: list[WatchEvent] = []
        initial = self.rv is None and self._want_initial
        for envelope in answer.events:
            event = self._envelope(envelope, None)
            if event is not None:
                out.append(event)
            if self.finished:
                return out
        last = out[-1].resource_version if out else None
        if initial:
            # The answer without an rv is the whole state: end it as a watch-list would.
            rv = answer.resourceVersion
            annotations = {INITIAL_EVENTS_END: "true"}
            end = {"metadata": {"resourceVersion": rv, "annotations": annotations}}
            bookmark = self._envelope(Envelope("BOOKMARK", end, rv), None)
            if bookmark is not None:
                out.append(bookmark)
        elif answer.resourceVersion != last:
            out.append(self._bookmark(answer.resourceVersion))
        self._connected = False
        return out

    def ended(self) -> Outcome:
        """The stream ended (cleanly, or after an ``ERROR`` event)."""
        self._connected = False
        now = self.clock()
        if self._error is not None:
            return self._outcome(self._error, self._retry_floor())
        if self.transport is Transport.JSON_LINES and self._lines.pending.strip():
            self._last_error = "the stream ended in the middle of a line"
        self._drop_initial()
        if now - self._opened_at >= MIN_HEALTHY:
            return 0.0
        self._last_error = self._last_error or "the stream ended at once"
        return self.backoff.failure(now)

    def failed(self, error: BaseException) -> float:
        """The attempt failed on the network (connect, read timeout, reset, cut chunk)."""
        self._connected = False
        name = type(error).__name__
        self._last_error = f"{name}: {error}" if str(error) else name
        self._drop_initial()
        return self.backoff.failure(self.clock())

    def refreshed(self, token: str | None) -> None:
        """The token callback's answer (``None``: it has none)."""
        if token is None:
            raise UnauthorizedError(
                _status_of(401, b'{"message": "the token callback gave no token"}')
            )
        self.token = token
        self._refreshes += 1

    def take_pending(self) -> list[WatchEvent]:
        """Events the client made while deciding (``RESET``), to yield before waiting."""
        out, self._pending = self._pending, []
        return out

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> WatchStatistics:
        lag = None if self._last_receipt is None else max(0.0, self.clock() - self._last_receipt)
        return WatchStatistics(
            connects=self._connects,
            reconnects=max(0, self._attempts - 1),
            relists=self._relists,
            resource_version=self.rv,
            lag=lag,
            events=self._events,
            bookmarks=self._bookmarks,
            token_refreshes=self._refreshes,
            connected=self._connected,
            last_error=self._last_error,
        )

    # -- internals ---------------------------------------------------------------------------

    def _envelope(self, envelope: Envelope, block_id: str | None) -> WatchEvent | None:
        kind = envelope.type
        if kind == "ERROR":
            obj = envelope.object
            self._error = obj if isinstance(obj, dict) else _status_of(500, b"")
            self.finished = True
            return None
        if kind == "RESET":
            # The server no longer has our rv but has the state: it follows, as initial events.
            self._relists += 1
            self._want_initial = True
            self._initial_seen = 0
            return WatchEvent(type=EventType.RESET)
        event_type = _TYPES.get(kind)
        obj = envelope.object
        if event_type is None or not isinstance(obj, dict):
            raise ProtocolError(f"an event of type {kind!r} with object {obj!r:.100}")
        rv = envelope.resourceVersion or block_id
        if rv is None:
            metadata = obj.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("resourceVersion"), str):
                rv = metadata["resourceVersion"]
        event = WatchEvent(type=event_type, object=obj, resource_version=rv)
        self._refreshed = False
        if event_type is EventType.BOOKMARK:
            self._bookmarks += 1
            if event.initial_events_end:
                # The state is complete: its rv is the resume point, whatever came before.
                self._want_initial = False
                self._initial_seen = 0
                self.rv = rv if rv is not None else self.rv
            else:
                self._resume(rv)
            return event
        self._events += 1
        if self._want_initial:
            self._initial_seen += 1
        else:
            self._resume(rv)
        return event

    def _bookmark(self, rv: str) -> WatchEvent:
        self._bookmarks += 1
        self._refreshed = False
        self._resume(rv)
        return WatchEvent(type=EventType.BOOKMARK, resource_version=rv)

    def _resume(self, rv: str | None) -> None:
        """Move the resume point to ``rv``, never back (an event the server repeated)."""
        if rv is None or self._want_initial:
            return
        current = self.rv
        if current is not None and rv.isdigit() and current.isdigit() and int(rv) <= int(current):
            return
        self.rv = rv

    def _drop_initial(self) -> None:
        """A connection ended in the middle of the initial events: they start over."""
        if self._want_initial and self._initial_seen:
            self._relists += 1
            self._pending.append(WatchEvent(type=EventType.RESET))
        self._initial_seen = 0

    def _retry_floor(self) -> float:
        return 0.0 if self._retry_ms is None else self._retry_ms / 1000

    def _outcome(self, status: dict[str, Any], floor: float) -> Outcome:
        code = status.get("code")
        now = self.clock()
        details = status.get("details")
        if isinstance(details, dict):
            seconds = details.get("retryAfterSeconds")
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                floor = max(0.0, float(seconds))
        self._last_error = f"{code} {status.get('reason')}: {status.get('message')}"
        if code == 410:
            if self.rv is None and not self._want_initial:
                return max(floor, self.backoff.failure(now))
            # Expired: start over from the whole state (the client's relist).
            self._relists += 1
            self.rv = None
            self._want_initial = self._send_initial is not False
            self._initial_seen = 0
            self._pending.append(WatchEvent(type=EventType.RESET))
            return 0.0
        if code == 401:
            if self.can_refresh and not self._refreshed:
                self._refreshed = True
                return REFRESH
            raise UnauthorizedError(status)
        if isinstance(code, int) and (code in _RETRYABLE or code >= 500):
            return max(floor, self.backoff.failure(now))
        raise StatusError(status)


def _status_of(code: int, body: bytes) -> dict[str, Any]:
    """The Status in an error body, or one made from the HTTP status."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("code"), int):
        return value
    message = value.get("message") if isinstance(value, dict) else None
    if not isinstance(message, str):
        message = body[:200].decode("utf-8", "replace").strip() or f"HTTP {code}"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": _REASONS.get(code, "Unknown"),
        "message": message,
    }


def _seconds(value: str | None) -> float:
    """A ``Retry-After`` in seconds (an HTTP date is not worth a parser here: 0)."""
    if value is None:
        return 0.0
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return 0.0
