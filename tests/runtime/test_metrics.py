"""The hub's metrics, through the Prometheus exporter: every transport reports its watches,
deliveries, bytes, latency, drops and client errors."""

from __future__ import annotations

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from watchroutes import Hub
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.prometheus import PrometheusMetrics
from watchroutes.testing import FakeClock, WatchClient

pytestmark = pytest.mark.anyio


def make(slow_consumer: str = "disconnect") -> tuple[Hub, PrometheusMetrics, WatchClient]:
    metrics = PrometheusMetrics()
    hub = Hub(clock=FakeClock(), metrics=metrics, buffer=3)
    orders = hub.resource("orders", kind="Order", slow_consumer=slow_consumer)
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            WebSocketRoute("/orders", websocket_endpoint(orders)),
        ]
    )
    return hub, metrics, WatchClient(app)


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    sample = metrics.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


async def test_streams_report_their_life_and_deliveries() -> None:
    hub, m, client = make()
    params = {"watch": "1", "sendInitialEvents": "false"}
    async with client.stream("GET", "/orders", params=params) as response:
        assert value(m, "watchroutes_active_watches", resource="orders", transport="jsonlines") == 1
        for i in range(3):
            hub.publish("orders", "ADDED", {"metadata": {"name": f"o-{i}"}})
        await response.take(3)
        await anyio.wait_all_tasks_blocked()
    await anyio.wait_all_tasks_blocked()
    rt = {"resource": "orders", "transport": "jsonlines"}
    assert value(m, "watchroutes_active_watches", **rt) == 0
    assert value(m, "watchroutes_watches_opened_total", **rt) == 1
    assert value(m, "watchroutes_watches_closed_total", **rt, reason="client") == 1
    assert value(m, "watchroutes_events_published_total", resource="orders") == 3
    assert value(m, "watchroutes_events_delivered_total", **rt) == 3
    assert value(m, "watchroutes_bytes_sent_total", **rt) > 3 * 50
    assert value(m, "watchroutes_publish_to_write_seconds_count", **rt) >= 1
    assert value(m, "watchroutes_watch_duration_seconds_count", **rt) == 1
    assert value(m, "watchroutes_buffer_high_water_count", resource="orders") == 1


async def test_slow_and_coalesced_drops_and_client_errors() -> None:
    hub, m, client = make()
    async with client.stream("GET", "/orders", params={"watch": "1"}) as response:
        await anyio.wait_all_tasks_blocked()
        (sub,) = hub.state.registry.all()
        waker, sub.waker = sub.waker, None  # the pump sleeps on: the buffer (3) overflows
        for i in range(5):
            hub.publish("orders", "ADDED", {"metadata": {"name": f"o-{i}"}})
        assert waker is not None
        waker()
        assert await response.take(1) == []  # the stream ended: the client resumes
    await anyio.wait_all_tasks_blocked()
    assert value(m, "watchroutes_events_dropped_total", resource="orders", reason="slow") == 3
    closed = {"resource": "orders", "transport": "jsonlines", "reason": "slow"}
    assert value(m, "watchroutes_watches_closed_total", **closed) == 1
    await client.get("/orders", params={"watch": "1", "labelSelector": "a in"})
    await client.get("/orders", params={"watch": "1", "resourceVersion": "1"})  # expired
    assert value(m, "watchroutes_client_errors_total", reason="BadRequest") == 1
    assert value(m, "watchroutes_client_errors_total", reason="Expired") == 1

    hub, m, client = make(slow_consumer="coalesce")
    async with client.websocket("/orders", params={"sendInitialEvents": "false"}) as ws:
        await anyio.wait_all_tasks_blocked()
        (sub,) = hub.state.registry.all()
        waker, sub.waker = sub.waker, None
        for _ in range(4):
            hub.publish("orders", "ADDED", {"metadata": {"name": "same"}})
        assert waker is not None
        waker()
        (only,) = await ws.take(1)
        assert only["resourceVersion"] == str(hub.head)
        await ws.send_text("nonsense")
        await ws.wait_closed()
    await anyio.wait_all_tasks_blocked()
    assert value(m, "watchroutes_events_dropped_total", resource="orders", reason="coalesced") == 3
    assert value(m, "watchroutes_client_errors_total", reason="ws-4400") == 1
    rt = {"resource": "orders", "transport": "websocket"}
    assert value(m, "watchroutes_events_delivered_total", **rt) == 1
    assert value(m, "watchroutes_active_watches", **rt) == 0


async def test_long_polls_count_as_watches() -> None:
    hub, m, client = make()
    hub.publish("orders", "ADDED", {"metadata": {"name": "a"}})
    await client.get("/orders", params={"watch": "1", "feed": "longpoll"})
    rt = {"resource": "orders", "transport": "longpoll"}
    assert value(m, "watchroutes_watches_opened_total", **rt) == 1
    assert value(m, "watchroutes_active_watches", **rt) == 0
    assert value(m, "watchroutes_bytes_sent_total", **rt) > 0
    assert b"watchroutes_events_published_total" in m.exposition()


async def test_log_records_carry_a_watch_id_and_no_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, client = make()
    caplog.set_level("DEBUG", logger="watchroutes")
    params = {"watch": "1", "labelSelector": "region=eu", "access_token": "s3cret"}
    headers = {"authorization": "Bearer s3cret"}
    async with client.stream("GET", "/orders", params=params, headers=headers) as response:
        await response.take(0)
    await anyio.wait_all_tasks_blocked()
    async with client.websocket("/orders", subprotocols=("watchroutes.v1", "bearer.s3cret")):
        pass
    await anyio.wait_all_tasks_blocked()
    records = [r for r in caplog.records if r.name == "watchroutes"]
    assert [r.getMessage().split(":")[0] for r in records][:2] == [
        "watch w-1 opened",
        "watch w-1 closed (client) after 0.0 s",
    ]
    assert {getattr(r, "watch_id", None) for r in records} == {"w-1", "w-2"}
    assert {getattr(r, "transport", None) for r in records} == {"jsonlines", "websocket"}
    assert "region=eu" in records[0].getMessage()
    assert not any("s3cret" in r.getMessage() or "s3cret" in str(r.__dict__) for r in records)


async def test_the_opentelemetry_exporter() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from watchroutes.otel import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hub = Hub(clock=FakeClock(), metrics=OpenTelemetryMetrics(provider.get_meter("test")))
    orders = hub.resource("orders", kind="Order")
    client = WatchClient(Starlette(routes=[Route("/orders", watch_endpoint(orders))]))
    async with client.stream("GET", "/orders", params={"watch": "1"}) as response:
        orders.create({"metadata": {"name": "a"}})
        await response.take(1)
    await anyio.wait_all_tasks_blocked()
    await client.get("/orders", params={"watch": "1", "labelSelector": "!"})
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): getattr(
            point, "value", None
        )
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    }
    rt = (("resource", "orders"), ("transport", "jsonlines"))
    assert points[("watchroutes.events.published", (("resource", "orders"),))] == 1
    assert points[("watchroutes.watches.active", rt)] == 0
    assert points[("watchroutes.watches.opened", rt)] == 1
    assert points[("watchroutes.client_errors", (("reason", "BadRequest"),))] == 1
    assert ("watchroutes.watch.duration", rt) in points


def _mounted(metrics: object) -> Hub:
    """A hub with ``orders`` mounted on its routes (which declares it to the sink)."""
    hub = Hub(clock=FakeClock(), metrics=metrics)  # type: ignore[arg-type]
    orders = hub.resource("orders", kind="Order")
    Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            WebSocketRoute("/orders", websocket_endpoint(orders)),
        ]
    )
    return hub


def test_every_prometheus_series_is_at_zero_from_the_start() -> None:
    from prometheus_client.metrics_core import Metric

    from watchroutes._core.metrics import (
        CLOSE_REASONS,
        DROP_REASONS,
        TRANSPORTS,
        client_error_reasons,
    )

    m = PrometheusMetrics()
    _mounted(m)
    families: list[Metric] = list(m.registry.collect())
    assert families
    for family in families:  # every family declared has samples, and they are all 0
        assert family.samples, family.name
        assert all(s.value == 0 for s in family.samples if not s.name.endswith("_created"))
    for transport in TRANSPORTS:
        rt = {"resource": "orders", "transport": transport}
        for name in (
            "watchroutes_active_watches",
            "watchroutes_watches_opened_total",
            "watchroutes_events_delivered_total",
            "watchroutes_bytes_sent_total",
            "watchroutes_watch_duration_seconds_count",
            "watchroutes_publish_to_write_seconds_count",
        ):
            assert m.registry.get_sample_value(name, rt) == 0, (name, rt)
        for reason in CLOSE_REASONS:
            labels = {**rt, "reason": reason}
            assert m.registry.get_sample_value("watchroutes_watches_closed_total", labels) == 0
    orders = {"resource": "orders"}
    assert m.registry.get_sample_value("watchroutes_events_published_total", orders) == 0
    assert m.registry.get_sample_value("watchroutes_buffer_high_water_count", orders) == 0
    for reason in DROP_REASONS:
        labels = {"resource": "orders", "reason": reason}
        assert m.registry.get_sample_value("watchroutes_events_dropped_total", labels) == 0
    for reason in client_error_reasons():
        labels = {"reason": reason}
        assert m.registry.get_sample_value("watchroutes_client_errors_total", labels) == 0
    assert m.registry.get_sample_value("watchroutes_follower_lag_seconds") == 0


def test_resources_named_ahead_and_declared_twice() -> None:
    m = PrometheusMetrics(resources=["users"])
    rt = {"resource": "users", "transport": "sse"}
    assert m.registry.get_sample_value("watchroutes_active_watches", rt) == 0
    m.watch_opened("users", "sse")
    m.resource_added("users")  # idempotent: nothing is reset
    assert m.registry.get_sample_value("watchroutes_active_watches", rt) == 1


def test_the_label_values_are_the_ones_the_hub_reports() -> None:
    from watchroutes._core.metrics import CLOSE_REASONS, client_error_reasons
    from watchroutes._core.registry import CloseReason

    assert set(CLOSE_REASONS) == {reason.value for reason in CloseReason}
    reasons = client_error_reasons()
    assert {"BadRequest", "Expired", "TooManyRequests", "ws-4400", "ws-1009"} <= set(reasons)
    assert len(reasons) == len(set(reasons))


def test_every_opentelemetry_counter_is_at_zero_from_the_start() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from watchroutes._core.metrics import TRANSPORTS
    from watchroutes.otel import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _mounted(OpenTelemetryMetrics(provider.get_meter("test")))
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): getattr(
            point, "value", None
        )
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    }
    assert all(value == 0 for value in points.values())
    for transport in TRANSPORTS:
        rt = (("resource", "orders"), ("transport", transport))
        for name in ("active", "opened"):
            assert points[(f"watchroutes.watches.{name}", rt)] == 0, (name, rt)
        assert points[("watchroutes.watches.closed", (("reason", "client"), *rt))] == 0
        assert points[("watchroutes.events.delivered", rt)] == 0
        assert points[("watchroutes.bytes.sent", rt)] == 0
    assert points[("watchroutes.events.published", (("resource", "orders"),))] == 0
    assert points[("watchroutes.client_errors", (("reason", "BadRequest"),))] == 0
    provider.shutdown()
