"""Event-log backends. A hub without one keeps its log in memory (``watchroutes._core.log``);
a shared log lets several processes serve one history::

    hub = Hub(backend="redis://127.0.0.1:6379/0")
    hub = Hub(backend=RedisLog("redis://...", prefix="shop"))

Each engine comes as ``watchroutes.backends.<engine>`` behind its extra.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._core.backend import ABSENT, PRESENT, LogBackend, Record, Retention, Write
from .._core.errors import UsageError

__all__ = ["ABSENT", "PRESENT", "LogBackend", "Record", "Retention", "Write", "from_url"]

SCHEMES = {
    "memory": "memory://",
    "redis": "redis://host:port/db[?prefix=P]",
    "rediss": "rediss://host:port/db[?prefix=P]",
    "nats": "nats://host:port[?stream=S]",
    "postgresql": "postgresql://user@host:port/db[?schema=S]",
    "postgres": "postgres://user@host:port/db[?schema=S]",
}


def from_url(url: str) -> LogBackend:
    """The backend for ``url``. One query option names the log inside the engine (``prefix``
    for Redis, ``schema`` for PostgreSQL, ``stream`` for NATS); the rest of the query goes to
    the engine's client (``sslmode=require``, ``socket_timeout=3``, ...), which rejects what
    it does not know."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)

    def split(name: str, default: str) -> tuple[str, str]:
        """(the option's value, the URL without it)."""
        values = [v for k, v in query if k == name]
        if len(values) > 1:
            raise UsageError(f"{name} is given {len(values)} times in the event log URL")
        rest = urlencode([(k, v) for k, v in query if k != name])
        return (values[0] if values else default), urlunsplit(parts._replace(query=rest))

    if scheme == "memory":
        from .memory import MemoryLog

        if query:
            raise UsageError("a memory:// event log URL takes no options")
        return MemoryLog()
    if scheme in ("redis", "rediss"):
        from .redis import RedisLog

        prefix, rest = split("prefix", "watchroutes")
        return RedisLog(rest, prefix=prefix)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLog

        schema, rest = split("schema", "watchroutes")
        return PostgresLog(rest, schema=schema)
    if scheme == "nats":
        from .nats import NatsLog

        stream, rest = split("stream", "watchroutes")
        if urlsplit(rest).query:
            raise UsageError(f"a nats:// event log URL takes only stream=, not {parts.query!r}")
        return NatsLog(rest, stream=stream)
    known = ", ".join(SCHEMES.values())
    raise UsageError(f"unknown event log URL scheme {scheme!r}; use one of: {known}")
