"""OpenTelemetry metrics for a hub: ``Hub(metrics=OpenTelemetryMetrics())``, exported by
whatever ``MeterProvider`` the application configured. Needs ``watchroutes[otel]``.

The instruments mirror :mod:`watchroutes.prometheus` with OpenTelemetry names (dots, units
as metadata): ``watchroutes.watches.active`` (up-down counter), ``watchroutes.watches.opened``,
``watchroutes.watches.closed``, ``watchroutes.watch.duration`` (s),
``watchroutes.events.published``, ``watchroutes.events.delivered``,
``watchroutes.events.dropped``, ``watchroutes.bytes.sent`` (By),
``watchroutes.publish_to_write`` (s), ``watchroutes.buffer.high_water`` and
``watchroutes.client_errors``, with the attributes ``resource``, ``transport`` and ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from opentelemetry import metrics as otel_metrics
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.otel needs opentelemetry-api: pip install 'watchroutes[otel]'"
    ) from exc

from ._core.metrics import (
    CLOSE_REASONS,
    DROP_REASONS,
    TRANSPORTS,
    client_error_reasons,
)

__all__ = ["OpenTelemetryMetrics"]


class OpenTelemetryMetrics:
    """A :class:`watchroutes._core.metrics.Metrics` sink on an OpenTelemetry ``Meter``
    (by default the global provider's meter named ``watchroutes``).

    Every counter's series exists at 0 from the start (``add(0, ...)``): the client errors'
    for every reason at once, a resource's for every transport and reason as soon as it is
    mounted on a route (:meth:`resource_added`; ``resources`` names some ahead of that).
    Histograms get no sample until something is measured."""

    def __init__(
        self, meter: otel_metrics.Meter | None = None, *, resources: Iterable[str] = ()
    ) -> None:
        m = meter if meter is not None else otel_metrics.get_meter("watchroutes")
        self.active = m.create_up_down_counter(
            "watchroutes.watches.active", description="Watches open now."
        )
        self.opened = m.create_counter("watchroutes.watches.opened", description="Watches opened.")
        self.closed = m.create_counter(
            "watchroutes.watches.closed", description="Watches ended, by reason."
        )
        self.duration = m.create_histogram(
            "watchroutes.watch.duration", unit="s", description="How long watches lasted."
        )
        self.published = m.create_counter(
            "watchroutes.events.published", description="Events published to the hub."
        )
        self.delivered = m.create_counter(
            "watchroutes.events.delivered", description="Live events written to watchers."
        )
        self.dropped = m.create_counter(
            "watchroutes.events.dropped",
            description="Events not delivered on a connection (slow, coalesced).",
        )
        self.bytes_sent = m.create_counter(
            "watchroutes.bytes.sent", unit="By", description="Bytes written to watchers."
        )
        self.latency = m.create_histogram(
            "watchroutes.publish_to_write",
            unit="s",
            description="From the publish of the oldest event in a write to its end.",
        )
        self.high_water = m.create_histogram(
            "watchroutes.buffer.high_water",
            description="The most events a watcher had queued, at its end.",
        )
        self.client_errors = m.create_counter(
            "watchroutes.client_errors", description="Client errors, by Status reason."
        )
        self.lag = m.create_histogram(
            "watchroutes.follower.lag",
            unit="s",
            description="How far behind the shared event log each applied batch was.",
        )
        for reason in client_error_reasons():
            self.client_errors.add(0, {"reason": reason})
        self._resources: set[str] = set()
        for name in resources:
            self.resource_added(name)

    def resource_added(self, resource: str) -> None:
        """Create every counter series of ``resource`` at 0 (for each transport and reason)."""
        if resource in self._resources:
            return
        self._resources.add(resource)
        self.published.add(0, {"resource": resource})
        for reason in DROP_REASONS:
            self.dropped.add(0, {"resource": resource, "reason": reason})
        for transport in TRANSPORTS:
            attributes = {"resource": resource, "transport": transport}
            for counter in (self.active, self.opened, self.delivered, self.bytes_sent):
                counter.add(0, attributes)
            for reason in CLOSE_REASONS:
                self.closed.add(0, {**attributes, "reason": reason})

    def watch_opened(self, resource: str, transport: str) -> None:
        attributes = {"resource": resource, "transport": transport}
        self.opened.add(1, attributes)
        self.active.add(1, attributes)

    def watch_closed(self, resource: str, transport: str, reason: str, seconds: float) -> None:
        attributes = {"resource": resource, "transport": transport}
        self.active.add(-1, attributes)
        self.closed.add(1, {**attributes, "reason": reason})
        self.duration.record(seconds, attributes)

    def events_published(self, resource: str, count: int) -> None:
        self.published.add(count, {"resource": resource})

    def events_delivered(self, resource: str, transport: str, count: int, nbytes: int) -> None:
        attributes = {"resource": resource, "transport": transport}
        if count:
            self.delivered.add(count, attributes)
        self.bytes_sent.add(nbytes, attributes)

    def events_dropped(self, resource: str, reason: str, count: int) -> None:
        self.dropped.add(count, {"resource": resource, "reason": reason})

    def write_latency(self, resource: str, transport: str, seconds: float) -> None:
        self.latency.record(seconds, {"resource": resource, "transport": transport})

    def buffer_high_water(self, resource: str, size: int) -> None:
        self.high_water.record(size, {"resource": resource})

    def client_error(self, reason: str) -> None:
        self.client_errors.add(1, {"reason": reason})

    def follower_lag(self, seconds: float) -> None:
        self.lag.record(seconds)
