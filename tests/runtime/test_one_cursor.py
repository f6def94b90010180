"""One cursor for every transport (protocol.md §5.1): a client that moves between SSE, JSON lines,
long poll and WebSocket at random points, while events are published before and during each
connection, sees every event exactly once and in order."""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from watchroutes import Hub
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.testing import FakeClock, WatchClient

TRANSPORTS = ["sse", "jsonlines", "longpoll", "websocket"]

publish = st.tuples(st.just("publish"), st.sampled_from(["a", "b", "c"]), st.booleans())
move = st.tuples(
    st.just("move"),
    st.sampled_from(TRANSPORTS),
    st.integers(0, 3),  # events published while connected
    st.integers(0, 6),  # events read before leaving
)


class Client:
    def __init__(self, client: WatchClient, cursor: int) -> None:
        self.client = client
        self.cursor = cursor
        self.seen: list[int] = []

    def accept(self, events: list[Any], log: list[int]) -> None:
        for event in events:
            rv = int(event["resourceVersion"])
            expected = [r for r in log if r > self.cursor][:1]
            assert [rv] == expected, f"got {rv} after {self.cursor}, expected {expected}"
            self.seen.append(rv)
            self.cursor = rv

    async def visit(
        self, transport: str, during: list[Any], read: int, log: list[int], publish: Any
    ) -> None:
        cursor = str(self.cursor)
        if transport == "longpoll":
            for args in during:
                publish(*args)
            pending = len([r for r in log if r > self.cursor])
            params = {
                "watch": "1",
                "feed": "longpoll",
                "resourceVersion": cursor,
                "limit": str(max(read, 1)),
                "timeoutSeconds": "0",
            }
            body = (await self.client.get("/orders", params=params)).json()
            self.accept(body["events"], log)
            if not body["events"] or len(body["events"]) == pending:
                assert int(body["resourceVersion"]) >= self.cursor
            self.cursor = int(body["resourceVersion"])
            return
        if transport == "websocket":
            async with self.client.websocket("/orders", params={"resourceVersion": cursor}) as ws:
                await anyio.wait_all_tasks_blocked()
                for args in during:
                    publish(*args)
                pending = len([r for r in log if r > self.cursor])
                self.accept(await ws.take(min(read, pending)), log)
            return
        params = {"resourceVersion": cursor} if transport == "jsonlines" else {}
        headers = {"accept": "text/event-stream", "last-event-id": cursor}
        if transport == "jsonlines":
            params["watch"] = "true"
            headers = {}
        async with self.client.stream("GET", "/orders", params=params, headers=headers) as resp:
            await anyio.wait_all_tasks_blocked()
            for args in during:
                publish(*args)
            pending = len([r for r in log if r > self.cursor])
            self.accept(await resp.take(min(read, pending)), log)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.one_of(publish, move), min_size=3, max_size=25),
    during=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), max_size=3),
)
def test_moving_between_transports_loses_and_repeats_nothing(
    ops: list[tuple[Any, ...]], during: list[tuple[str, bool]]
) -> None:
    hub = Hub(clock=FakeClock())
    orders = hub.resource("orders", kind="Order")
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            WebSocketRoute("/orders", websocket_endpoint(orders)),
        ]
    )
    log: list[int] = []
    live: set[str] = set()

    def change(name: str, delete: bool) -> None:
        if delete and name in live:
            live.discard(name)
            stored = orders.delete(name)
        else:
            etype = "MODIFIED" if name in live else "ADDED"
            live.add(name)
            stored = orders.publish(etype, {"metadata": {"name": name}, "spec": {"n": len(log)}})
        log.append(int(stored["metadata"]["resourceVersion"]))

    async def scenario() -> None:
        client = Client(WatchClient(app), hub.head)
        for op in ops:
            if op[0] == "publish":
                change(op[1], op[2])
            else:
                _, transport, count, read = op
                await client.visit(transport, during[:count], read, log, change)
        await client.visit("longpoll", [], 10_000, log, change)  # the rest, at once
        assert client.seen == log

    anyio.run(scenario)
    assert len(hub.state.registry) == 0
