"""What the hub reports about itself: a small sink interface, and one that ignores everything.

``Hub(metrics=...)`` takes any object with these methods; ``watchroutes.prometheus`` has an
exporter for ``prometheus_client``. Every call happens on the hub's event loop (or under its
lock), never on a hot path more than once per event batch, and must not block.

Labels are bounded by design: ``resource`` (the app's resource names), ``transport`` (``sse``,
``jsonlines``, ``longpoll``, ``websocket``), ``reason`` (a :class:`CloseReason` value, ``slow``
or ``coalesced`` for dropped events, or a Status reason for client errors).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Metrics", "NullMetrics"]


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
