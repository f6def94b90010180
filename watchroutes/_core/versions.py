"""resourceVersions: integers that never go backwards and are never handed out twice.

protocol.md §1: each append takes ``rv = max(previous + 1, now in microseconds)``. A log that starts
at the current time therefore never reuses a version a client may still hold from an earlier
incarnation (a restarted process, a wiped backend): the old rv is below the new log's start,
which is its compaction watermark, so the client is told ``Expired`` instead of silently
resuming past events it never saw.

On the wire an rv is a decimal string; clients treat it as opaque.
"""

from __future__ import annotations

from .errors import InvalidResourceVersion

__all__ = ["MAX_RESOURCE_VERSION", "VersionClock", "parse_resource_version"]

#: rvs are non-negative integers below 2**63 (protocol.md §3.2; etcd's revisions are int64 too).
MAX_RESOURCE_VERSION = 2**63 - 1


class VersionClock:
    """Hands out strictly increasing versions seeded from wall-clock microseconds.

    ``now_us`` is always passed in: the core never reads a clock.
    """

    __slots__ = ("_last",)

    def __init__(self, now_us: int) -> None:
        self._last = now_us

    @property
    def last(self) -> int:
        """The newest version handed out (or the start, before any)."""
        return self._last

    def advance(self, rv: int) -> None:
        """Follow a shared log: its head is now ``rv`` (never goes back)."""
        if rv > self._last:
            self._last = rv

    def next(self, now_us: int) -> int:
        rv = max(self._last + 1, now_us)
        if rv > MAX_RESOURCE_VERSION:  # pragma: no cover - 292,000 years from now
            raise OverflowError("resourceVersion space exhausted")
        self._last = rv
        return rv


def parse_resource_version(value: str, parameter: str = "resourceVersion") -> int:
    """Parse a client-supplied rv; anything but a plain non-negative decimal is a 400."""
    if not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidResourceVersion(
            parameter, f"must be a non-negative integer below 2^63, got {shown!r}"
        )
    rv = int(value)
    if rv > MAX_RESOURCE_VERSION:
        raise InvalidResourceVersion(
            parameter, f"must be a non-negative integer below 2^63, got {value!r}"
        )
    return rv
