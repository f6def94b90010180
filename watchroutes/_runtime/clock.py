"""Clocks: where time enters. The core never reads one; the runtime asks this."""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (deadlines, heartbeats, retention by age)."""
        ...

    def time_us(self) -> int:
        """Wall-clock microseconds since the epoch (seeds resourceVersions)."""
        ...

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        """Return when ``event`` is set or ``now()`` reaches ``deadline``."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic`` and ``time.time_ns``."""

    def now(self) -> float:
        return time.monotonic()

    def time_us(self) -> int:
        return time.time_ns() // 1000

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        if deadline is None:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await event.wait()
