"""The pull form of a watch (``stream_chunks``): an async iterator of the stream's bytes, for
frameworks whose streaming responses consume one."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from watchroutes import Hub
from watchroutes._runtime.hub import RequestInfo
from watchroutes._runtime.stream import stream_chunks

pytestmark = pytest.mark.anyio


def order(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {}}


async def test_the_pull_form_yields_the_same_bytes_and_releases_on_aclose() -> None:
    hub = Hub(heartbeat=0.1)
    orders = hub.resource("orders", kind="Order")
    first = orders.create(order("o-1"))
    reply = await hub.answer("orders", RequestInfo(query=[("watch", "true")]))
    assert reply.stream is not None
    chunks = stream_chunks(reply.stream)
    with anyio.fail_after(5):
        initial = await anext(chunks)
        assert b'"ADDED"' in initial
        assert first["metadata"]["name"].encode() in initial
        second = orders.create(order("o-2"))
        live = await anext(chunks)
        assert second["metadata"]["resourceVersion"].encode() in live
    assert hub.statistics().active_watches == 1
    await chunks.aclose()
    assert hub.statistics().active_watches == 0


async def test_the_pull_form_ends_with_a_final_bookmark_on_shutdown() -> None:
    hub = Hub(heartbeat=0.1)
    orders = hub.resource("orders", kind="Order")
    query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("labelSelector", "region=us")]
    reply = await hub.answer("orders", RequestInfo(query=query))
    assert reply.stream is not None
    stored = orders.create(order("o-1"))
    got = b""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.aclose)
            async for chunk in stream_chunks(reply.stream):
                got += chunk
    last = msgspec.json.decode(got.splitlines()[-1])
    assert last["type"] == "BOOKMARK"  # o-1 was filtered out: the bookmark covers it
    assert last["object"]["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
