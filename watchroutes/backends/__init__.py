"""Event-log backends. A hub without one keeps its log in memory (``watchroutes._core.log``);
a shared log lets several processes serve one history::

    hub = Hub(backend="redis://127.0.0.1:6379/0")
    hub = Hub(backend=RedisLog("redis://...", prefix="shop"))

Each engine comes as ``watchroutes.backends.<engine>`` behind its extra.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .._core.backend import LogBackend
from .._core.errors import UsageError

__all__ = ["from_url"]

SCHEMES = {
    "memory": "memory://",
    "redis": "redis://host:port/db[?prefix=P]",
    "rediss": "rediss://host:port/db[?prefix=P]",
    "nats": "nats://host:port[?stream=S]",
    "postgresql": "postgresql://user@host:port/db[?schema=S]",
    "postgres": "postgres://user@host:port/db[?schema=S]",
}


def from_url(url: str) -> LogBackend:
    """The backend for ``url``; its query names the log inside the engine (``prefix`` for
    Redis, ``stream`` for NATS, ``schema`` for PostgreSQL), the rest goes to the client."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query))
    bare = urlunsplit(parts._replace(query=""))

    def option(name: str, default: str) -> str:
        unknown = set(options) - {name}
        if unknown:
            raise UsageError(f"unknown backend URL option(s) {sorted(unknown)} in {scheme} URL")
        return options.get(name, default)

    if scheme == "memory":
        from .memory import MemoryLog

        option("", "")
        return MemoryLog()
    if scheme in ("redis", "rediss"):
        from .redis import RedisLog

        return RedisLog(bare, prefix=option("prefix", "watchroutes"))
    if scheme == "nats":
        from .nats import NatsLog  # type: ignore[import-not-found,unused-ignore]

        return NatsLog(bare, stream=option("stream", "watchroutes"))  # type: ignore[no-any-return,unused-ignore]
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLog  # type: ignore[import-not-found,unused-ignore]

        return PostgresLog(bare, schema=option("schema", "watchroutes"))  # type: ignore[no-any-return,unused-ignore]
    known = ", ".join(SCHEMES.values())
    raise UsageError(f"unknown event log URL scheme {scheme!r}; use one of: {known}")
