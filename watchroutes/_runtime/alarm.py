"""A pump's wake-ups and write deadline: what a watch task waits on between writes.

Each watch task (protocol.md §2: one task per watch) sleeps until its subscription has something new
or its session's next deadline passes, and gives up a write that does not finish in the write
timeout. Cancel scopes and events per wait are what made that expensive: every wake-up of
every watcher entered two cancel scopes (two timer handles scheduled and cancelled) and built
an ``anyio.Event`` (a backend lookup), about a third of the CPU a delivery cost under uvicorn.

:class:`LoopAlarm` does the same on asyncio with one future per wait and one *lazy* timer per
watch: the timer is moved only when a deadline comes earlier than the one it is set for, and
when it rings early the pump simply checks its session and waits again. A busy watcher moves
its timer about once per write timeout, instead of twice per event. A write that outlives the
write timeout is ended through the stream's cancel scope (``interrupt``), and ``timed_out``
says so.

:class:`EventAlarm` is the portable version (trio, and any :class:`~.clock.Clock` such as the
test suite's fake clock): an ``anyio.Event`` per wait, the clock's ``wait``, ``fail_after`` per
write. Its ``write`` raises ``TimeoutError``.

Both are used from the event loop's thread only (the hub hands every change to that thread).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["Alarm", "EventAlarm", "LoopAlarm", "make_alarm", "on_asyncio"]

T = TypeVar("T")


class Alarm(Protocol):
    #: The write timeout ended a write (``LoopAlarm``; ``EventAlarm`` raises instead).
    timed_out: bool
    #: A write is in progress.
    writing: bool

    @property
    def idle(self) -> bool:
        """The task waits in :meth:`wait` and nothing has woken it yet: whatever it wrote is
        written, and it will not write before it runs again."""
        ...

    def set(self) -> None:
        """Wake the task waiting in :meth:`wait` (or make its next wait return at once)."""
        ...

    async def wait(self, deadline: float | None) -> None:
        """Until :meth:`set` or the clock's ``deadline``; may return early (spuriously)."""
        ...

    async def write(self, send: Callable[[T], Awaitable[None]], data: T) -> None:
        """``await send(data)`` under the write timeout."""
        ...

    def close(self) -> None:
        """Release the timer; the alarm is not used again."""
        ...


def on_asyncio() -> bool:
    """True when the running task is an asyncio task (not trio, not outside a loop)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


class EventAlarm:
    """The portable alarm: an event per wait, the clock's ``wait``, ``fail_after`` per write."""

    __slots__ = ("_clock", "_event", "_waiting", "_write_timeout", "timed_out", "writing")

    def __init__(self, clock: Clock, write_timeout: float) -> None:
        self._clock = clock
        self._write_timeout = write_timeout
        self._event = anyio.Event()
        self._waiting = False
        self.timed_out = False
        self.writing = False

    @property
    def idle(self) -> bool:
        return self._waiting and not self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def wait(self, deadline: float | None) -> None:
        event = self._event
        if not event.is_set():
            self._waiting = True
            try:
                await self._clock.wait(event, deadline)
            finally:
                self._waiting = False
        # A set() from here on concerns what the next step has not seen yet: a fresh event.
        self._event = anyio.Event()

    async def write(self, send: Callable[[T], Awaitable[None]], data: T) -> None:
        self.writing = True
        try:
            with anyio.fail_after(self._write_timeout):
                await send(data)
        finally:
            self.writing = False

    def close(self) -> None:
        pass


class LoopAlarm:
    """The asyncio alarm: a future per wait and one lazy timer (see the module docstring).

    Deadlines are ``time.monotonic()`` seconds, the :class:`~.clock.SystemClock`'s ``now``.
    """

    __slots__ = (
        "_future",
        "_interrupt",
        "_loop",
        "_pending",
        "_timer",
        "_timer_at",
        "_write_deadline",
        "_write_timeout",
        "timed_out",
        "writing",
    )

    def __init__(self, write_timeout: float, interrupt: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_timeout = write_timeout
        self._interrupt = interrupt
        self._future: asyncio.Future[None] | None = None
        self._pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._write_deadline = 0.0
        self.timed_out = False
        self.writing = False

    @property
    def idle(self) -> bool:
        future = self._future
        return future is not None and not future.done()

    def set(self) -> None:
        future = self._future
        if future is None:  # the pump is running: its next wait returns at once
            self._pending = True
        elif not future.done():  # (done: woken already, and it has not run yet)
            future.set_result(None)

    async def wait(self, deadline: float | None) -> None:
        if self._pending:
            self._pending = False
            return
        if deadline is not None:
            self._arm(deadline)
        future = self._future = self._loop.create_future()
        try:
            await future
        finally:
            self._future = None

    async def write(self, send: Callable[[T], Awaitable[None]], data: T) -> None:
        self.writing = True
        self._write_deadline = deadline = time.monotonic() + self._write_timeout
        self._arm(deadline)
        try:
            await send(data)
        finally:
            self.writing = False

    def _arm(self, when: float) -> None:
        """Ring no later than ``when`` (a timer already set earlier is left alone)."""
        at = self._timer_at
        if at is not None and at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._ring)

    def _ring(self) -> None:
        self._timer = self._timer_at = None
        if self.writing:
            if time.monotonic() >= self._write_deadline:
                self.timed_out = True
                self._interrupt()
            else:
                self._arm(self._write_deadline)
            return
        self.set()  # the pump checks its session's deadline and waits again if it is early

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None


def make_alarm(clock: Clock, write_timeout: float, interrupt: Callable[[], None]) -> Alarm:
    """The fastest alarm that keeps ``clock``'s time: :class:`LoopAlarm` for the system clock
    on asyncio, :class:`EventAlarm` otherwise."""
    from .clock import SystemClock

    if type(clock) is SystemClock and on_asyncio():
        return LoopAlarm(write_timeout, interrupt)
    return EventAlarm(clock, write_timeout)
