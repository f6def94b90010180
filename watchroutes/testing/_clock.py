"""A clock that only moves when the test says so."""

from __future__ import annotations

import contextlib

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]

#: 2023-11-14T22:13:20Z: a fixed wall time, so resourceVersions are reproducible.
_EPOCH_US = 1_700_000_000_000_000


class FakeClock:
    """Monotonic time that starts at 0 and moves with :meth:`advance`.

    A watch waiting for its next heartbeat or timeout wakes when the clock passes its
    deadline, so a test can go through a 15 s heartbeat or a 30 min watch without sleeping.
    """

    def __init__(self, start: float = 0.0, *, wall_us: int = _EPOCH_US) -> None:
        self._now = start
        self._wall_us = wall_us
        self._waiters: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    def time_us(self) -> int:
        return self._wall_us + int(self._now * 1_000_000)

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        if deadline is not None:
            if deadline <= self._now:
                await anyio.lowlevel.checkpoint()
                return
            waiter = (deadline, event)
            self._waiters.append(waiter)
            try:
                await event.wait()
            finally:  # woken by the event or cancelled: forget it, or waiters pile up
                with contextlib.suppress(ValueError):  # advance_nowait already dropped it
                    self._waiters.remove(waiter)
            return
        await event.wait()

    def advance_nowait(self, seconds: float) -> None:
        """Move time forward and wake whoever's deadline has passed (without yielding)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        due = [w for w in self._waiters if w[0] <= self._now]
        self._waiters = [w for w in self._waiters if w[0] > self._now and not w[1].is_set()]
        for _, event in due:
            event.set()

    async def advance(self, seconds: float) -> None:
        """Move time forward, then let every woken task run until all are blocked again."""
        self.advance_nowait(seconds)
        await anyio.wait_all_tasks_blocked()
