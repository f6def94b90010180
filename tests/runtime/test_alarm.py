"""The pumps' alarms: wake-ups, deadlines and write timeouts, on the real clock.

``LoopAlarm`` (asyncio, the system clock) keeps one lazy timer per watch; ``EventAlarm`` is the
portable one (trio, fake clocks). Both must give the pump the same contract: ``wait`` returns
after ``set`` or by its deadline (early returns are allowed, endless ones are not), and a
write that outlives the write timeout ends.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from watchroutes import Hub, RequestInfo, SystemClock
from watchroutes._runtime.alarm import EventAlarm, LoopAlarm, make_alarm
from watchroutes.testing import FakeClock

pytestmark = pytest.mark.anyio


def order(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


async def test_the_system_clock_on_asyncio_gets_the_loop_alarm(anyio_backend: str) -> None:
    alarm = make_alarm(SystemClock(), 1.0, lambda: None)
    assert isinstance(alarm, LoopAlarm if anyio_backend == "asyncio" else EventAlarm)
    alarm.close()
    assert isinstance(make_alarm(FakeClock(), 1.0, lambda: None), EventAlarm)


async def test_a_set_before_the_wait_is_not_lost() -> None:
    alarm = make_alarm(SystemClock(), 1.0, lambda: None)
    alarm.set()
    with anyio.fail_after(1):
        await alarm.wait(None)  # returns at once: the wake-up came while the pump was busy
    alarm.close()


async def test_set_wakes_a_waiting_pump() -> None:
    alarm = make_alarm(SystemClock(), 1.0, lambda: None)
    woke = anyio.Event()

    async def pump() -> None:
        await alarm.wait(time.monotonic() + 100)
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        alarm.set()
        with anyio.fail_after(1):
            await woke.wait()
    alarm.close()


async def test_wait_returns_by_its_deadline_and_does_not_spin() -> None:
    """A later deadline after an earlier one: the timer set for the earlier one may ring
    first (the pump then waits again), but the pump is not woken over and over."""
    alarm = make_alarm(SystemClock(), 1.0, lambda: None)
    began = time.monotonic()
    with anyio.fail_after(2):
        await alarm.wait(began + 0.05)
    assert time.monotonic() - began >= 0.045
    deadline = time.monotonic() + 0.2
    wake_ups = 0
    with anyio.fail_after(2):
        while time.monotonic() < deadline:
            await alarm.wait(deadline)
            wake_ups += 1
    assert wake_ups <= 3
    alarm.close()


async def test_an_earlier_deadline_moves_the_timer() -> None:
    alarm = make_alarm(SystemClock(), 1.0, lambda: None)

    async def far() -> None:
        await alarm.wait(time.monotonic() + 100)

    async with anyio.create_task_group() as tg:
        tg.start_soon(far)
        await anyio.wait_all_tasks_blocked()
        alarm.set()
    began = time.monotonic()
    with anyio.fail_after(2):
        await alarm.wait(began + 0.05)  # the timer was set 100 s out: it must move
    alarm.close()


async def test_a_write_past_the_timeout_ends(anyio_backend: str) -> None:
    interrupted: list[bool] = []

    async def stuck(data: bytes) -> None:
        await anyio.sleep(100)

    with anyio.fail_after(5), anyio.CancelScope() as scope:

        def interrupt() -> None:
            interrupted.append(True)
            scope.cancel()

        alarm = make_alarm(SystemClock(), 0.05, interrupt)
        try:
            await alarm.write(stuck, b"x")
        except TimeoutError:  # the portable alarm raises; the loop alarm interrupts
            assert isinstance(alarm, EventAlarm)
        else:
            pytest.fail("the write did not end")
    if anyio_backend == "asyncio":
        assert interrupted == [True]
        assert alarm.timed_out
    assert not alarm.writing
    alarm.close()


async def test_a_write_that_finishes_in_time_is_left_alone() -> None:
    interrupted: list[bool] = []
    alarm = make_alarm(SystemClock(), 0.05, lambda: interrupted.append(True))

    async def quick(data: bytes) -> None:
        await anyio.lowlevel.checkpoint()

    for _ in range(3):
        await alarm.write(quick, b"x")
    await anyio.sleep(0.1)  # the write timer rings after the writes: nothing to end
    assert interrupted == []
    assert not alarm.timed_out
    alarm.close()


async def test_a_slow_consumer_stuck_in_a_write_ends_at_once() -> None:
    """Closed as a slow consumer while its write is stuck: the stream ends now, not at the
    (here 100 s) write timeout, and the healthy watcher beside it gets everything."""
    hub = Hub(buffer=5, write_timeout=100)
    res = hub.resource("orders")
    slow = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    fast = await hub.answer("orders", RequestInfo(query=[("watch", "1")]))
    assert slow.stream is not None
    assert fast.stream is not None
    got: list[bytes] = []

    async def stuck(data: bytes) -> None:
        await anyio.sleep(100)

    async def healthy(data: bytes) -> None:
        got.append(data)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow.stream.run, stuck)
            tg.start_soon(fast.stream.run, healthy)
            await anyio.wait_all_tasks_blocked()
            res.create(order("o-0"))  # the slow one starts a write that never ends
            await anyio.wait_all_tasks_blocked()
            for i in range(1, 20):
                res.create(order(f"o-{i}"))
                await anyio.lowlevel.checkpoint()
            while hub.statistics().active_watches > 1:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.01)
            hub.begin_shutdown()
    assert b"".join(got).count(b'"type":"ADDED"') == 20
    assert len(hub.state.registry) == 0
