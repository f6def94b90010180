"""Snapshot + watch is race-free (protocol.md §5.2): list, then watch from the list's rv, while
other threads publish; nothing published in between is lost or repeated."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from watchroutes import Hub
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.testing import WatchClient

pytestmark = pytest.mark.anyio

PUBLISHERS = 4
PER_PUBLISHER = 150


async def test_list_then_watch_under_concurrent_publishers() -> None:
    hub = Hub()
    orders = hub.resource("orders")
    app = Starlette(routes=[Route("/orders", watch_endpoint(orders))])
    client = WatchClient(app)
    published: list[int] = []
    lock = threading.Lock()
    go = threading.Event()

    def publisher(n: int) -> None:
        go.wait()
        for i in range(PER_PUBLISHER):
            key = f"p{n}-{i % 10}"
            obj = {"metadata": {"name": key}, "spec": {"i": i}}
            stored = orders.publish("MODIFIED" if i >= 10 else "ADDED", obj)
            with lock:
                published.append(int(stored["metadata"]["resourceVersion"]))
            time.sleep(0.0005)  # spread the publishes over the list and the watch

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(PUBLISHERS)]
    for t in threads:
        t.start()
    go.set()
    while len(published) < PUBLISHERS * PER_PUBLISHER // 3:  # noqa: ASYNC110 - land the
        await anyio.sleep(0.001)  # list mid-stream; the threads publish, nothing to wait on
    listed = (await client.get("/orders")).json()
    rv = int(listed["metadata"]["resourceVersion"])
    state: dict[str, Any] = {o["metadata"]["name"]: o for o in listed["items"]}
    seen: list[int] = []
    async with client.stream(
        "GET", "/orders", params={"watch": "1", "resourceVersion": str(rv)}
    ) as response:

        async def read(count: int) -> None:
            while len(seen) < count:
                event = await response.next_event()
                assert event is not None
                seen.append(int(event["resourceVersion"]))
                state[event["object"]["metadata"]["name"]] = event["object"]

        for t in threads:
            while t.is_alive():
                with anyio.move_on_after(0.01):
                    await read(len(seen) + 1)
        with anyio.fail_after(10):
            await read(sum(1 for p in published if p > rv))
    assert seen == sorted(p for p in published if p > rv)  # every later event, once, in order
    assert 0 < len(seen) < len(published)  # the list really landed in the middle
    _, items = orders.list()
    assert state == {o["metadata"]["name"]: o for o in items}
