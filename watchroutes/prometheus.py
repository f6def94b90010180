"""Prometheus metrics for a hub: ``Hub(metrics=PrometheusMetrics())``, then serve
``metrics.exposition()`` (or the registry) on ``/metrics``. Needs ``watchroutes[prometheus]``.

=============================================  =========  =====================================
metric                                         type       labels
=============================================  =========  =====================================
``watchroutes_active_watches``                 gauge      resource, transport
``watchroutes_watches_opened_total``           counter    resource, transport
``watchroutes_watches_closed_total``           counter    resource, transport, reason
``watchroutes_watch_duration_seconds``         histogram  resource, transport
``watchroutes_events_published_total``         counter    resource
``watchroutes_events_delivered_total``         counter    resource, transport
``watchroutes_events_dropped_total``           counter    resource, reason (slow, coalesced)
``watchroutes_bytes_sent_total``               counter    resource, transport
``watchroutes_publish_to_write_seconds``       histogram  resource, transport
``watchroutes_buffer_high_water``              histogram  resource
``watchroutes_client_errors_total``            counter    reason
=============================================  =========  =====================================
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.prometheus needs prometheus_client: pip install 'watchroutes[prometheus]'"
    ) from exc

from ._core.metrics import (
    CLOSE_REASONS,
    DROP_REASONS,
    TRANSPORTS,
    client_error_reasons,
)

__all__ = ["PrometheusMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)
_BUFFER_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000)


class PrometheusMetrics:
    """A :class:`watchroutes._core.metrics.Metrics` sink on a ``prometheus_client`` registry
    (a new one by default, so that two hubs in one process do not collide).

    Every series exists at 0 from the start: ``watchroutes_client_errors_total`` for every
    reason at once, and the series of a resource, for every transport and reason, as soon as
    the resource is mounted on a route (:meth:`resource_added`; ``resources`` names some
    ahead of that)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, resources: Iterable[str] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rt = ["resource", "transport"]
        self.active = Gauge("watchroutes_active_watches", "Watches open now.", rt, registry=r)
        self.opened = Counter("watchroutes_watches_opened", "Watches opened.", rt, registry=r)
        self.closed = Counter(
            "watchroutes_watches_closed",
            "Watches ended, by reason: client, timeout, slow, shutdown, error.",
            [*rt, "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "watchroutes_watch_duration_seconds",
            "How long watches lasted.",
            rt,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.published = Counter(
            "watchroutes_events_published", "Events published to the hub.", ["resource"], registry=r
        )
        self.delivered = Counter(
            "watchroutes_events_delivered", "Live events written to watchers.", rt, registry=r
        )
        self.dropped = Counter(
            "watchroutes_events_dropped",
            "Events not delivered on a connection: slow (queue dropped; the client resumes) "
            "or coalesced (replaced by a newer event of the same key).",
            ["resource", "reason"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "watchroutes_bytes_sent", "Bytes written to watchers, with framing.", rt, registry=r
        )
        self.latency = Histogram(
            "watchroutes_publish_to_write_seconds",
            "From the publish of the oldest event in a write to the end of the write.",
            rt,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.high_water = Histogram(
            "watchroutes_buffer_high_water",
            "The most events a watcher had queued, at its end.",
            ["resource"],
            buckets=_BUFFER_BUCKETS,
            registry=r,
        )
        self.client_errors = Counter(
            "watchroutes_client_errors",
            "Requests and messages answered with a client error, by Status reason "
            "(ws-<code> for a WebSocket closed for the client's fault).",
            ["reason"],
            registry=r,
        )

        self.lag = Gauge(
            "watchroutes_follower_lag_seconds",
            "How far behind the shared event log this node applied its latest batch.",
            registry=r,
        )
        for reason in client_error_reasons():
            self.client_errors.labels(reason)
        self._resources: set[str] = set()
        for name in resources:
            self.resource_added(name)

    def resource_added(self, resource: str) -> None:
        """Create every series of ``resource`` at 0 (for each transport and reason)."""
        if resource in self._resources:
            return
        self._resources.add(resource)
        self.published.labels(resource)
        self.high_water.labels(resource)
        for reason in DROP_REASONS:
            self.dropped.labels(resource, reason)
        for transport in TRANSPORTS:
            for metric in (
                self.active,
                self.opened,
                self.duration,
                self.delivered,
                self.bytes_sent,
                self.latency,
            ):
                metric.labels(resource, transport)
            for reason in CLOSE_REASONS:
                self.closed.labels(resource, transport, reason)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    # -- the sink ------------------------------------------------------------------------------

    def watch_opened(self, resource: str, transport: str) -> None:
        self.opened.labels(resource, transport).inc()
        self.active.labels(resource, transport).inc()

    def watch_closed(self, resource: str, transport: str, reason: str, seconds: float) -> None:
        self.active.labels(resource, transport).dec()
        self.closed.labels(resource, transport, reason).inc()
        self.duration.labels(resource, transport).observe(seconds)

    def events_published(self, resource: str, count: int) -> None:
        self.published.labels(resource).inc(count)

    def events_delivered(self, resource: str, transport: str, count: int, nbytes: int) -> None:
        if count:
            self.delivered.labels(resource, transport).inc(count)
        self.bytes_sent.labels(resource, transport).inc(nbytes)

    def events_dropped(self, resource: str, reason: str, count: int) -> None:
        self.dropped.labels(resource, reason).inc(count)

    def write_latency(self, resource: str, transport: str, seconds: float) -> None:
        self.latency.labels(resource, transport).observe(seconds)

    def buffer_high_water(self, resource: str, size: int) -> None:
        self.high_water.labels(resource).observe(size)

    def client_error(self, reason: str) -> None:
        self.client_errors.labels(reason).inc()

    def follower_lag(self, seconds: float) -> None:
        self.lag.set(seconds)
