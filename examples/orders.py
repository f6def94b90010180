"""What every framework's orders app shares: the hub, bodies, auth, metrics and the page."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchroutes import (
    BadRequest,
    Hub,
    Resource,
    Unauthorized,
    UnsupportedMediaType,
)
from watchroutes.prometheus import PrometheusMetrics

PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()
#: The largest body a write reads (the adapters' ``read_body`` stops reading past it).
MAX_BODY = 1024 * 1024
PATCH_TYPES = ("application/merge-patch+json", "application/json")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str | None = None
    token: str | None = None
    heartbeat: float = 15.0
    retention: int = 10_000
    buffer: int = 1000
    seed: int = 0


def make_hub(settings: Settings) -> tuple[Hub, Resource]:
    """The hub, on the shared log ``settings.backend`` names (``redis://``, ``nats://``,
    ``postgresql://``) or in memory. With a shared log, ``--seed`` runs once the hub follows
    it (see :func:`start`)."""
    backend = settings.backend
    if backend in ("", "memory", "memory://"):
        backend = None
    hub = Hub(
        heartbeat=settings.heartbeat,
        buffer=settings.buffer,
        metrics=PrometheusMetrics(),
        backend=backend,
    )
    orders = hub.resource("orders", kind="Order", retention_events=settings.retention)
    if settings.seed and hub.backend is None:
        orders.seed(demo_orders(settings.seed))
    return hub, orders


async def start(hub: Hub, settings: Settings) -> None:
    """What runs once the hub follows its log: seeding a shared log (each object once)."""
    if settings.seed and hub.backend is not None:
        await hub.resources["orders"].aseed(demo_orders(settings.seed))


def demo_orders(count: int) -> list[dict[str, Any]]:
    items = ["book", "lamp", "chair", "pen", "mug"]
    regions = ["eu", "us", "apac"]
    return [
        {
            "metadata": {"name": f"o-{i}", "labels": {"region": regions[i % 3]}},
            "spec": {"item": items[i % 5], "qty": i % 4 + 1},
            "status": {"phase": "new"},
        }
        for i in range(1, count + 1)
    ]


def check_token(settings: Settings, authorization: str | None, query_token: str | None) -> None:
    """``Authorization: Bearer T``, or ``access_token=T`` on a GET (EventSource)."""
    if settings.token is None:
        return
    given = None
    if authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    elif query_token is not None:
        given = query_token
    if given is None or not hmac.compare_digest(given.encode(), settings.token.encode()):
        raise Unauthorized("a valid bearer token is required")


def check_socket_token(settings: Settings, websocket: object, token: str | None) -> None:
    """The same rule for a WebSocket: the token it presented (subprotocol ``bearer.<T>``,
    ``Authorization: Bearer T`` or ``access_token=T``), or 4401."""
    check_token(settings, None, token)


def check_patch_type(content_type: str | None) -> None:
    """A PATCH is a JSON merge patch (415 otherwise); checked before its body is read."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in PATCH_TYPES:
        raise UnsupportedMediaType(
            f"PATCH takes {' or '.join(PATCH_TYPES)}, not {media[:60] or 'no content type'!r}"
        )


def object_body(value: Any) -> dict[str, Any]:
    """A write's body, read with the adapter's ``read_json`` (which limits its size and
    answers 400 for anything but JSON): it must be a JSON object."""
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def metrics_text(hub: Hub) -> bytes:
    """The hub's Prometheus metrics, and two gauges of its state."""
    assert isinstance(hub.metrics, PrometheusMetrics)
    stats = hub.statistics()
    rows = [
        (
            "watchroutes_cached_objects",
            "gauge",
            "Objects in the watch cache.",
            stats.cached_objects,
        ),
        (
            "watchroutes_events_evicted_young",
            "gauge",
            "Events evicted from the log while younger than two heartbeat intervals.",
            stats.evicted_young,
        ),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return hub.metrics.exposition() + ("\n".join(lines) + "\n").encode()
