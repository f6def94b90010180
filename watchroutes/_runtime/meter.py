"""One watch's reporting to the hub's metrics sink, shared by every transport's pump."""

from __future__ import annotations

from .._core.metrics import Metrics
from .._core.registry import Subscription
from .clock import Clock

__all__ = ["WatchMeter"]


class WatchMeter:
    """Reports a watch's opening, its writes and its end; call :meth:`closed` once."""

    __slots__ = ("_clock", "_delivered", "_metrics", "_opened", "resource", "sub", "transport")

    def __init__(
        self, metrics: Metrics, clock: Clock, resource: str, transport: str, sub: Subscription
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self.resource = resource
        self.transport = transport
        self.sub = sub
        self._delivered = sub.delivered
        self._opened = clock.now()
        metrics.watch_opened(resource, transport)

    def wrote(self, nbytes: int, oldest: float | None) -> None:
        """A write of ``nbytes`` finished; ``oldest`` is :meth:`Subscription.oldest_time`
        read just before the session drained the buffer (``None``: nothing was queued)."""
        delivered = self.sub.delivered
        count = delivered - self._delivered
        if count or nbytes:
            self._delivered = delivered
            self._metrics.events_delivered(self.resource, self.transport, count, nbytes)
        if oldest is not None:
            self._metrics.write_latency(self.resource, self.transport, self._clock.now() - oldest)

    def closed(self, reason: str) -> None:
        metrics = self._metrics
        sub = self.sub
        metrics.watch_closed(
            self.resource, self.transport, reason, self._clock.now() - self._opened
        )
        if sub.dropped:
            metrics.events_dropped(self.resource, "slow", sub.dropped)
        if sub.coalesced:
            metrics.events_dropped(self.resource, "coalesced", sub.coalesced)
        metrics.buffer_high_water(self.resource, sub.high_water)
