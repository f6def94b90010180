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

try:
    from opentelemetry import metrics as otel_metrics
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.otel needs opentelemetry-api: pip install 'watchroutes[otel]'"
    ) from exc

__all__ = ["OpenTelemetryMetrics"]


class OpenTelemetryMetrics:
    """A :class:`watchroutes._core.metrics.Metrics` sink on an OpenTelemetry ``Meter``
    (by default the global provider's meter named ``watchroutes``)."""

    def __init__(self, meter: otel_metrics.Meter | None = None) -> None:
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
