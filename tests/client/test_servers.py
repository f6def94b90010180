"""The clients against real ``python -m examples`` servers on 127.0.0.1: a bounded chaos loop
(writes, dropped connections, restarts that start a new log) after which the informer's store
must equal the server's list, and the sync clients on every framework's app."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from watchroutes.client import (
    Backoff,
    Change,
    EventType,
    Informer,
    SyncInformer,
    UnauthorizedError,
    watch_sync,
)

from .._services import free_port
from ..conformance._support import Server, order
from ._faults import Network

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

TRANSPORTS = ["sse", "jsonlines", "longpoll", "websocket"]


class Restartable:
    """One example server on a fixed port, so a restart is the same URL: with a new log in
    memory, or the same shared log (``starlette-redis``)."""

    def __init__(self, framework: str, *args: str) -> None:
        self.framework = framework
        self.shared = "-" in framework
        self.port = free_port()
        self.server = Server.start(framework, "--port", str(self.port), "--heartbeat", "1", *args)
        self.spawn_args = self.server.args  # with the --backend of a shared log
        self.url = f"http://127.0.0.1:{self.port}/orders"

    def restart(self, *extra: str) -> None:
        cleanup, self.server.cleanup = self.server.cleanup, None
        self.server.stop()
        self.server = Server._spawn(self.framework.partition("-")[0], (*self.spawn_args, *extra))
        self.server.cleanup = cleanup

    def state(self) -> dict[str, Any]:
        items = self.server.list()["items"]
        return {item["metadata"]["name"]: item for item in items}


@pytest.fixture
def servers() -> Iterator[Callable[..., Restartable]]:
    started: list[Restartable] = []

    def start(framework: str, *args: str) -> Restartable:
        server = Restartable(framework, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.server.stop()


def fast() -> Backoff:
    # The policy itself is tested with an injected clock; here only convergence matters.
    return Backoff(initial=0.05, cap=0.2)


async def converged(informer: Informer, server: Restartable, within: float = 10) -> None:
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        if informer.synced and dict(informer.store) == server.state():
            return
        if time.monotonic() > deadline:
            break
        await anyio.sleep(0.05)
    diff = (sorted(informer.store), sorted(server.state()))
    raise AssertionError(f"the store did not converge: {diff}, {informer.statistics()}")


def chaos(server: Restartable, rng: random.Random, count: int, prefix: str) -> None:
    """``count`` random creates, patches and deletes through the REST routes."""
    http = server.server.client
    for i in range(count):
        names = sorted(server.state())
        op = rng.choice(["create", "create", "patch", "delete"] if names else ["create"])
        if op == "create":
            assert http.post("/orders", json=order(f"{prefix}-{i}")).status_code == 201
        elif op == "patch":
            server.server.patch(rng.choice(names), {"status": {"phase": f"p{i}"}})
        else:
            server.server.delete(rng.choice(names))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("framework", "transport"),
    [
        *(("starlette", t) for t in TRANSPORTS),
        ("aiohttp", "sse"),
        ("aiohttp", "websocket"),
        ("flask", "sse"),
        ("django", "jsonlines"),
        ("starlette-redis", "sse"),
    ],
)
async def test_informer_converges_through_writes_drops_and_restarts(
    servers: Callable[..., Restartable], framework: str, transport: str
) -> None:
    server = servers(framework, "--seed", "4")
    rng = random.Random(f"chaos-{transport}")
    changes: list[Change] = []
    network = Network(httpx.AsyncHTTPTransport())
    async with (
        httpx.AsyncClient(transport=network, trust_env=False) as http,
        Informer(
            server.url,
            client=http,
            transport=transport,
            heartbeat=1,
            poll_timeout=1,
            backoff=fast(),
            on_change=changes.append,
        ) as informer,
    ):
        await informer.wait_synced()
        await converged(informer, server)
        for round_ in range(3):
            chaos(server, rng, 6, f"r{round_}")
            if round_ == 1:
                # In memory, a new log: the informer's rv means nothing there (RESET or
                # 410, a relist, tombstones). On a shared log: the same history, resumed.
                server.restart("--seed", "2")
                chaos(server, rng, 3, "after")
            elif round_ == 2:
                # Drop every connection: the client resumes from its rv.
                network.cut()
            await converged(informer, server)
        stats = informer.statistics()
    # The restart, and the cut (which a WebSocket, outside httpx, does not see).
    assert stats.reconnects >= (1 if transport == "websocket" else 2), stats
    if server.shared:
        assert (stats.relists, stats.tombstones) == (0, 0), stats
    else:
        assert stats.relists >= 1, stats
        assert stats.tombstones >= 1, stats
        assert any(c.tombstone for c in changes)
    # No change was reported twice for the same version of an object.
    versions = [(c.key, c.resource_version) for c in changes if not c.tombstone]
    assert len(versions) == len(set(versions)), versions


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "aiohttp", "flask", "django"])
def test_sync_clients_on_every_framework(
    servers: Callable[..., Restartable], framework: str
) -> None:
    server = servers(framework, "--seed", "2", "--token", "s3cret")
    for transport in TRANSPORTS:
        with watch_sync(server.url, transport=transport, token="s3cret", poll_timeout=1) as events:
            seen = []
            for event in events:
                seen.append(event)
                if event.initial_events_end:
                    break
        assert [e.type for e in seen] == [EventType.ADDED, EventType.ADDED, EventType.BOOKMARK]
    with (
        pytest.raises(UnauthorizedError),
        watch_sync(server.url, token="wrong") as events,
    ):
        next(events)

    refreshes: list[str] = []

    def refresh() -> str:
        refreshes.append("called")
        return "s3cret"

    seen_changes: list[Change] = []
    with SyncInformer(
        server.url, token="expired", token_refresh=refresh, on_change=seen_changes.append
    ) as informer:
        assert informer.wait_synced(timeout=10)
        assert sorted(informer.store) == ["o-1", "o-2"]
        http = server.server.client
        headers = {"Authorization": "Bearer s3cret"}
        assert http.post("/orders", json=order("o-9"), headers=headers).status_code == 201
        deadline = time.monotonic() + 10
        while informer.get("o-9") is None:
            assert time.monotonic() < deadline, informer.statistics()
            time.sleep(0.02)
        stats = informer.statistics()
    assert refreshes == ["called"]
    assert stats.token_refreshes == 1
    assert [c.key for c in seen_changes] == ["o-1", "o-2", "o-9"]
