"""What the hub reports about itself: a small sink interface, and one that ignores everything.

``Hub(metrics=...)`` takes any object with these methods; ``watchroutes.prometheus`` has an
exporter for ``prometheus_client``. Every call happens on the hub's event loop (or under its
lock), never on a hot path more than once per event batch, and must not block.

Labels are bounded by design: ``resource`` (the app's resource names), ``transport`` (``sse``,
``jsonlines``, ``longpoll``, ``websocket``), ``reason`` (a :class:`CloseReason` value, ``slow``
or ``coalesced`` for dropped events, or a Status reason for client errors). So an exporter
can create every series at 0 before anything happens (a dashboard or an alert sees 0, not a
missing series): a sink may have ``resource_added(resource)``, called through
:func:`declare_resource` when a resource is mounted on a route, and take the other label
values from :data:`TRANSPORTS`, :data:`CLOSE_REASONS`, :data:`DROP_REASONS` and
:func:`client_error_reasons`.
"""

from __future__ import annotations

from typing import Final, Protocol

from .errors import ClientError
from .websocket import CloseCode

__all__ = [
    "CLOSE_REASONS",
    "DROP_REASONS",
    "TRANSPORTS",
    "Metrics",
    "NullMetrics",
    "client_error_reasons",
    "declare_resource",
]

TRANSPORTS: Final = ("sse", "jsonlines", "longpoll", "websocket")
#: Why a watch ended (the values of ``CloseReason``).
CLOSE_REASONS: Final = (
    "client",
    "timeout",
    "slow",
    "shutdown",
    "error",
    "unavailable",
    "expired",
    "revoked",
)
DROP_REASONS: Final = ("slow", "coalesced")


def client_error_reasons() -> tuple[str, ...]:
    """Every ``reason`` of ``client_error``: the Status reasons of every ``ClientError``, and
    ``ws-<code>`` for each close code a WebSocket gets for the client's fault."""
    reasons: list[str] = []
    pending: list[type[ClientError]] = [ClientError]
    while pending:
        cls = pending.pop()
        if cls.reason not in reasons:
            reasons.append(cls.reason)
        pending.extend(cls.__subclasses__())
    codes = [code for code in CloseCode if code >= 4400 or code is CloseCode.TOO_BIG]
    return (*sorted(reasons), *(f"ws-{code.value}" for code in codes))


def declare_resource(metrics: object, resource: str) -> None:
    """Tell ``metrics`` of a resource (its ``resource_added``, when it has one); idempotent."""
    added = getattr(metrics, "resource_added", None)
    if callable(added):
        added(resource)


class Metrics(Protocol):
    def watch_opened(self, resource: str, transport: str) -> None:
        """A watch began (one per WebSocket subscription, one per long poll request)."""
        ...

    def watch_closed(self, resource: str, transport: str, reason: str, seconds: float) -> None:
        """A watch ended after ``seconds``, for ``reason`` (client, timeout, slow, ...)."""
        ...

    def events_published(self, resource: str, count: int) -> None: ...

    def events_delivered(self, resource: str, transport: str, count: int, nbytes: int) -> None:
        """``count`` events (``nbytes`` bytes with framing) were written to one watcher."""
        ...

    def events_dropped(self, resource: str, reason: str, count: int) -> None:
        """Events a watcher will not get from this connection: ``slow`` (its queue was
        dropped; it resumes) or ``coalesced`` (replaced by a newer event of the same key)."""
        ...

    def write_latency(self, resource: str, transport: str, seconds: float) -> None:
        """From the publish of the oldest event in a write to the end of that write."""
        ...

    def buffer_high_water(self, resource: str, size: int) -> None:
        """The most events a watcher had queued, reported when it ends."""
        ...

    def follower_lag(self, seconds: float) -> None:
        """How far behind the shared log this node's follower applied its latest batch
        (the batch's newest rv, which is the append's wall-clock µs, to now)."""
        ...

    def client_error(self, reason: str) -> None:
        """A request or message answered with a 4xx Status (``reason``: ``BadRequest``,
        ``Expired``, ...) or a WebSocket closed for a client's fault (``ws-4400``, ...)."""
        ...


class NullMetrics:
    """The default sink: records nothing."""

    def resource_added(self, resource: str) -> None:
        pass

    def watch_opened(self, resource: str, transport: str) -> None:
        pass

    def watch_closed(self, resource: str, transport: str, reason: str, seconds: float) -> None:
        pass

    def events_published(self, resource: str, count: int) -> None:
        pass

    def events_delivered(self, resource: str, transport: str, count: int, nbytes: int) -> None:
        pass

    def events_dropped(self, resource: str, reason: str, count: int) -> None:
        pass

    def write_latency(self, resource: str, transport: str, seconds: float) -> None:
        pass

    def buffer_high_water(self, resource: str, size: int) -> None:
        pass

    def follower_lag(self, seconds: float) -> None:
        pass

    def client_error(self, reason: str) -> None:
        pass
