"""Long poll (protocol.md §3.6), a first version on the same cursor as the streams."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from watchroutes import Hub, Resource
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.testing import FakeClock, WatchClient

pytestmark = pytest.mark.anyio
POLL = {"watch": "1", "feed": "longpoll"}


def setup() -> tuple[FakeClock, Resource, WatchClient]:
    clock = FakeClock()
    hub = Hub(clock=clock)
    orders = hub.resource("orders")
    return clock, orders, WatchClient(Starlette(routes=[Route("/orders", watch_endpoint(orders))]))


async def poll(client: WatchClient, **params: str) -> Any:
    response = await client.get("/orders", params={**POLL, **params})
    assert response.status == 200, response.body
    return response.json()


async def test_initial_state_then_changes_then_timeout() -> None:
    clock, orders, client = setup()
    orders.create({"metadata": {"name": "a"}})
    first = await poll(client)
    assert [e["type"] for e in first["events"]] == ["ADDED"]
    rv = first["resourceVersion"]
    changed = orders.patch("a", {"spec": {"x": 1}})
    second = await poll(client, resourceVersion=rv)
    assert [e["resourceVersion"] for e in second["events"]] == [
        changed["metadata"]["resourceVersion"]
    ]
    result: list[Any] = []

    async def waiting() -> None:
        result.append(
            await poll(client, resourceVersion=second["resourceVersion"], timeoutSeconds="5")
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting)
        await anyio.wait_all_tasks_blocked()
        assert result == []
        await clock.advance(5)
    assert result[0]["events"] == []
    assert result[0]["resourceVersion"] == second["resourceVersion"]


async def test_answers_as_soon_as_an_event_exists_and_respects_limit() -> None:
    _, orders, client = setup()
    start = (await poll(client))["resourceVersion"]
    result: list[Any] = []

    async def waiting() -> None:
        result.append(await poll(client, resourceVersion=start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting)
        await anyio.wait_all_tasks_blocked()
        orders.create({"metadata": {"name": "b"}})
    assert [e["object"]["metadata"]["name"] for e in result[0]["events"]] == ["b"]
    for name in "cde":
        orders.create({"metadata": {"name": name}})
    cut = await poll(client, resourceVersion=result[0]["resourceVersion"], limit="2")
    assert [e["object"]["metadata"]["name"] for e in cut["events"]] == ["c", "d"]
    assert cut["resourceVersion"] == cut["events"][-1]["resourceVersion"]
    rest = await poll(client, resourceVersion=cut["resourceVersion"])
    assert [e["object"]["metadata"]["name"] for e in rest["events"]] == ["e"]


async def test_expired_is_410_and_bad_limit_is_400() -> None:
    _, _, client = setup()
    expired = await client.get("/orders", params={**POLL, "resourceVersion": "1"})
    assert expired.status == 410
    assert expired.json()["reason"] == "Expired"
    bad = await client.get("/orders", params={**POLL, "limit": "0"})
    assert bad.status == 400
    assert bad.json()["message"].startswith("limit: ")


async def test_timeout_zero_answers_at_once() -> None:
    _, orders, client = setup()
    first = await poll(client)
    body = await poll(client, resourceVersion=first["resourceVersion"], timeoutSeconds="0")
    assert body == {"events": [], "resourceVersion": first["resourceVersion"]}
    orders.create({"metadata": {"name": "a"}})
    body = await poll(client, resourceVersion=first["resourceVersion"], timeoutSeconds="0")
    assert [e["type"] for e in body["events"]] == ["ADDED"]
