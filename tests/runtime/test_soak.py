"""Soak: many connect/disconnect cycles over every transport leave no task, subscription or
memory behind. CI runs 3,000 cycles; ``WATCHROUTES_SOAK_CYCLES=10000`` runs the long one."""

from __future__ import annotations

import gc
import os
import tracemalloc

import anyio
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from watchroutes import Hub
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.testing import FakeClock, WatchClient

CYCLES = int(os.environ.get("WATCHROUTES_SOAK_CYCLES", "3000"))
#: Cycles before measuring: the caches that fill with distinct URLs (urllib's, Starlette's)
#: and the log's retention reach their plateau (about 1 MB) within about 1,000 cycles.
WARM_UP = int(os.environ.get("WATCHROUTES_SOAK_WARM_UP", "1000"))
#: Growth allowed from the warm-up to the end: the plateau moves by up to about 600 KB as
#: caches evict and refill, so this catches leaks of more than about 500 bytes per cycle in the CI
#: run (3,000 cycles), and of more than about 100 bytes per cycle in the 10,000-cycle run.
MAX_GROWTH = 1_000_000


def test_connect_disconnect_cycles_leave_nothing_behind() -> None:
    hub = Hub(clock=FakeClock(), retention_events=50)
    orders = hub.resource("orders", kind="Order")
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            WebSocketRoute("/orders", websocket_endpoint(orders)),
        ]
    )
    client = WatchClient(app)

    async def cycle(i: int) -> None:
        kind = i % 4
        orders.publish("MODIFIED" if i else "ADDED", {"metadata": {"name": "o"}, "n": i})
        rv = str(hub.head - 1)
        if kind == 0:
            headers = {"accept": "text/event-stream", "last-event-id": rv}
            async with client.stream("GET", "/orders", headers=headers) as response:
                await response.take(1)
        elif kind == 1:
            params = {"watch": "1", "resourceVersion": rv}
            async with client.stream("GET", "/orders", params=params) as response:
                await response.take(1)
        elif kind == 2:
            async with client.websocket("/orders", params={"resourceVersion": rv}) as ws:
                await ws.take(1)
        else:
            params = {"watch": "1", "feed": "longpoll", "resourceVersion": rv}
            await client.get("/orders", params=params)

    async def measure() -> int:
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    async def main() -> tuple[int, int, list[int]]:
        import asyncio

        for i in range(WARM_UP):
            await cycle(i)
        tasks_before = len(asyncio.all_tasks())
        memory = [await measure()]
        half = (WARM_UP + CYCLES) // 2
        for i in range(WARM_UP, half):
            await cycle(i)
        memory.append(await measure())
        for i in range(half, CYCLES):
            await cycle(i)
        memory.append(await measure())
        return tasks_before, len(asyncio.all_tasks()), memory

    tracemalloc.start()
    try:
        tasks_before, tasks_after, memory = anyio.run(main)
    finally:
        tracemalloc.stop()
    growth = memory[2] - memory[0]
    print(
        f"{CYCLES} cycles: tasks {tasks_before} -> {tasks_after}; traced memory after warm-up "
        f"{memory[0]:,}, at half {memory[1]:,}, at the end {memory[2]:,} bytes "
        f"({growth / (CYCLES - WARM_UP):+.1f} bytes per cycle after the warm-up)"
    )
    assert len(hub.state.registry) == 0
    assert not hub.streams
    assert tasks_after == tasks_before
    assert growth < MAX_GROWTH
