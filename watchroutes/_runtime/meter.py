"""One watch's reporting to the hub's metrics sink and to the log, shared by every
transport's pump.

Log records go to the ``watchroutes`` logger with a per-watch correlation id (``w-<n>``, also
in the record's ``watch_id`` attribute with ``resource``, ``transport`` and ``reason``): DEBUG
when a watch opens or ends normally, INFO when it ends as a slow consumer or on an error.
Nothing credential-bearing is ever logged: the records name the resource, the transport and
the watch's selectors, never the query string, headers or subprotocols (where tokens travel).
"""

from __future__ import annotations

import logging

from .._core.metrics import Metrics, NullMetrics
from .._core.registry import Subscription
from .clock import Clock

__all__ = ["WatchMeter"]

logger = logging.getLogger("watchroutes")
_LOUD = frozenset({"slow", "error"})


class WatchMeter:
    """Reports a watch's opening, its writes and its end; call :meth:`closed` once."""

    __slots__ = (
        "_clock",
        "_delivered",
        "_metrics",
        "_opened",
        "per_write",
        "resource",
        "sub",
        "transport",
        "watch_id",
    )

    def __init__(
        self, metrics: Metrics, clock: Clock, resource: str, transport: str, sub: Subscription
    ) -> None:
        self.watch_id = f"w-{sub.id}"
        self._metrics = metrics
        self._clock = clock
        self.resource = resource
        self.transport = transport
        self.sub = sub
        self._delivered = sub.delivered
        self._opened = clock.now()
        #: Whether each write is reported (not to the null sink, which ignores it).
        self.per_write = not isinstance(metrics, NullMetrics)
        metrics.watch_opened(resource, transport)
        if logger.isEnabledFor(logging.DEBUG):
            flt = sub.filter
            logger.debug(
                "watch %s opened: %s over %s, labelSelector=%r fieldSelector=%r",
                self.watch_id,
                resource,
                transport,
                flt.label_selector,
                flt.field_selector,
                extra=self._extra(None),
            )

    def _extra(self, reason: str | None) -> dict[str, str | None]:
        return {
            "watch_id": self.watch_id,
            "resource": self.resource,
            "transport": self.transport,
            "reason": reason,
        }

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
        seconds = self._clock.now() - self._opened
        metrics.watch_closed(self.resource, self.transport, reason, seconds)
        level = logging.INFO if reason in _LOUD else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "watch %s closed (%s) after %.1f s: %d live events, buffer high-water %d, "
                "%d dropped, %d coalesced",
                self.watch_id,
                reason,
                seconds,
                sub.delivered,
                sub.high_water,
                sub.dropped,
                sub.coalesced,
                extra=self._extra(reason),
            )
        if sub.dropped:
            metrics.events_dropped(self.resource, "slow", sub.dropped)
        if sub.coalesced:
            metrics.events_dropped(self.resource, "coalesced", sub.coalesced)
        metrics.buffer_high_water(self.resource, sub.high_water)
