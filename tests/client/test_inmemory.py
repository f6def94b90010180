"""The async client against the orders example app in this process (no sockets): the
streaming ASGI transport, wrapped to cut connections, and sleeps recorded instead of slept."""

from __future__ import annotations

import gc
import json
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

from examples.orders import Settings
from examples.starlette_app import create_app
from watchroutes import Resource
from watchroutes.client import (
    Backoff,
    Change,
    EventType,
    Informer,
    ProtocolError,
    StatusError,
    UnauthorizedError,
    WatchEvent,
    watch,
)
from watchroutes.testing.httpx import AsyncStreamingASGITransport

from ._faults import Network

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # httpx's own async generators
    pytest.mark.timeout(30),
]

TRANSPORTS = ["sse", "jsonlines", "longpoll"]
URL = "http://testserver/orders"


def order(name: str, phase: str = "new") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": "eu"}}, "status": {"phase": phase}}


class Sleeps:
    """An injected ``sleep``: records each delay and only yields to the event loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


def half() -> Backoff:
    return Backoff(random=lambda: 0.5)


class App:
    def __init__(self, tg: anyio.abc.TaskGroup, **settings: Any) -> None:
        self.app = create_app(Settings(**settings))
        self.orders: Resource = self.app.state.hub.resources["orders"]
        self.network = Network(AsyncStreamingASGITransport(self.app, tg))
        self.client = httpx.AsyncClient(transport=self.network, timeout=5)

    def state(self) -> dict[str, Any]:
        _, items = self.orders.list()
        return {item["metadata"]["name"]: item for item in items}

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.app.state.hub.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_watch_resumes_after_drops_exactly(transport: str) -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg, seed=2)
        sleeps = Sleeps()
        seen: list[WatchEvent] = []
        async with watch(
            URL,
            client=app.client,
            transport=transport,
            poll_timeout=1,
            backoff=half(),
            sleep=sleeps,
        ) as events:
            async for event in events:
                seen.append(event)
                if event.initial_events_end:
                    break
            for round_ in range(3):
                app.network.cut()
                app.orders.create(order(f"n-{round_}"))
                app.orders.patch("o-1", {"status": {"phase": f"p{round_}"}})
                count = 0
                async for event in events:
                    seen.append(event)
                    count += event.type is not EventType.BOOKMARK
                    if count == 2:
                        break
            stats = events.statistics()
        await app.aclose()
    changes = [e for e in seen if e.type is not EventType.BOOKMARK]
    rvs = [int(e.resource_version or 0) for e in changes]
    assert rvs == sorted(set(rvs)), "an event was repeated or reordered"
    names = [e.object["metadata"]["name"] for e in changes if e.object]
    assert names == ["o-1", "o-2", "n-0", "o-1", "n-1", "o-1", "n-2", "o-1"]
    assert not any(e.type is EventType.RESET for e in seen)
    if transport != "longpoll":  # a long poll between two answers is not cut
        assert stats.reconnects >= 3
        # Network failures within 2 minutes of each other: the ceiling doubles each time.
        assert sleeps.delays == [0.4, 0.8, 1.6]
    assert stats.relists == 0


#: The streaming ASGI transport leaks its response buffer when a request is cancelled before
#: the app starts answering, as a long poll in flight is when the informer stops.
LONG_POLL_CANCELLED = (
    "ignore:Exception ignored in.*MemoryObjectReceiveStream:pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.filterwarnings(LONG_POLL_CANCELLED)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_informer_relists_with_tombstones_when_its_version_expired(transport: str) -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg, seed=3, retention=2)
        changes: list[Change] = []
        async with Informer(
            URL,
            client=app.client,
            transport=transport,
            poll_timeout=1,
            on_change=changes.append,
            backoff=half(),
            sleep=Sleeps(),
        ) as informer:
            await informer.wait_synced()
            assert sorted(informer.store) == ["o-1", "o-2", "o-3"]
            async with informer.changes() as stream:
                app.network.cut()
                app.orders.delete("o-2")  # while away, past the retention of 2 events
                app.orders.patch("o-1", {"status": {"phase": "paid"}})
                for i in range(3):
                    app.orders.create(order(f"n-{i}"))
                with anyio.fail_after(5):
                    async for change in stream:
                        if change.key == "n-2":  # the last change of the relist
                            break
            assert informer.statistics().relists == 1
            assert dict(informer.store) == app.state()
            stats = informer.statistics()
        await app.aclose()
    gc.collect()  # here, where the leak above is expected, not in a later test
    tombstones = [c for c in changes if c.tombstone]
    assert [(c.type, c.key) for c in tombstones] == [("DELETED", "o-2")]
    assert tombstones[0].object["metadata"]["name"] == "o-2"
    after = [(c.type, c.key) for c in changes[3:] if not c.tombstone]
    assert after == [("MODIFIED", "o-1"), ("ADDED", "n-0"), ("ADDED", "n-1"), ("ADDED", "n-2")]
    assert stats.tombstones == 1
    assert stats.synced
    # Every (key, rv) was reported once.
    versions = [(c.key, c.resource_version) for c in changes if not c.tombstone]
    assert len(versions) == len(set(versions))


async def test_informer_changes_iterator_and_statistics() -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg, seed=1)
        async with Informer(URL, client=app.client) as informer:
            async with informer.changes() as changes:
                await informer.wait_synced()
                first = await changes.__anext__()
                assert (first.type, first.key) == ("ADDED", "o-1")
                app.orders.delete("o-1")
                gone = await changes.__anext__()
                assert (gone.type, gone.key, gone.tombstone) == ("DELETED", "o-1", False)
            stats = informer.statistics()
            assert stats.objects == 0
            assert stats.connected
            assert stats.lag is not None
            assert stats.resource_version == gone.resource_version
        await app.aclose()


async def test_connection_failures_back_off_with_full_jitter() -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg, seed=1)
        app.network.refuse = 4
        sleeps = Sleeps()
        draws = iter([0.25, 1.0, 0.5, 0.125])
        backoff = Backoff(random=lambda: next(draws))
        async with Informer(URL, client=app.client, backoff=backoff, sleep=sleeps) as informer:
            await informer.wait_synced()
            stats = informer.statistics()
        await app.aclose()
    # Ceilings 0.8, 1.6, 3.2, 6.4 s, each times its draw.
    assert sleeps.delays == [0.2, 1.6, 1.6, 0.8]
    assert stats.reconnects == 4
    assert stats.last_error == "ConnectError: connection refused"


async def test_401_refreshes_the_token_once_and_resumes() -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg, seed=1, token="good")
        calls: list[str] = []

        async def refresh() -> str:
            calls.append("refresh")
            return "good"

        async with Informer(URL, client=app.client, token="stale", token_refresh=refresh) as inf:
            await inf.wait_synced()
            assert list(inf.store) == ["o-1"]
            assert inf.statistics().token_refreshes == 1
        assert calls == ["refresh"]
        auth = [r.headers.get("authorization") for r in app.network.requests]
        assert auth == ["Bearer stale", "Bearer good"]

        # A refresh that does not help, and no refresh at all: UnauthorizedError.
        for refresher in (lambda: "still-wrong", None):
            informer = Informer(URL, client=app.client, token="stale", token_refresh=refresher)
            with pytest.raises(UnauthorizedError) as info:
                async with informer:
                    await informer.wait_synced()
            assert info.value.code == 401
        await app.aclose()


async def test_terminal_errors_raise() -> None:
    async with anyio.create_task_group() as tg:
        app = App(tg)
        with pytest.raises(StatusError) as info:
            async with watch(URL, client=app.client, params={"labelSelector": "a in"}) as events:
                await events.__anext__()
        assert (info.value.code, info.value.reason) == (400, "BadRequest")
        assert "labelSelector" in info.value.message
        with pytest.raises(StatusError) as info:
            async with watch(URL + "/x/y", client=app.client) as events:
                await events.__anext__()
        assert info.value.code in (404, 405)
        with pytest.raises(ProtocolError, match="not a watch route"):
            async with watch("http://testserver/metrics", client=app.client) as events:
                await events.__anext__()
        await app.aclose()


async def test_retry_after_is_honoured() -> None:
    answers = [
        httpx.Response(
            200,
            headers={"content-type": "text/event-stream; charset=utf-8"},
            content=b"retry: 4000\n\ndata: "
            + json.dumps(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "code": 503,
                        "reason": "ServiceUnavailable",
                        "message": "shutting down",
                        "details": {"retryAfterSeconds": 4},
                    },
                }
            ).encode()
            + b"\n\n",
        ),
        httpx.Response(429, headers={"retry-after": "2"}, json={"code": 429, "message": "slow"}),
        httpx.Response(403, json={"code": 403, "reason": "Forbidden", "message": "no"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    sleeps = Sleeps()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with pytest.raises(StatusError, match="403 Forbidden: no"):
        async with watch(URL, client=client, backoff=half(), sleep=sleeps) as events:
            await events.__anext__()
    await client.aclose()
    assert sleeps.delays == [4.0, 2.0]
