"""Several example-app processes on one shared log (DESIGN 5.1 across processes).

Publish on A, watch on B and C; kill B mid-stream and resume on C with its Last-Event-ID:
exactly the missed events, in order. Concurrent publishers on two processes never produce a
duplicate or out-of-order rv. Run on every shared engine.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .._services import NATS_URL, POSTGRES_URL, REDIS_URL, require
from ._support import READ_TIMEOUT, Server, SSEStream, envelope, wipe_redis

pytestmark = pytest.mark.network

EVENTS = 60


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _delete_stream(stream: str) -> None:
    import nats

    async def delete() -> None:
        client = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
        try:
            js = client.jetstream()
            for name in (stream, f"{stream}_state", f"KV_{stream}_state"):
                try:
                    await js.delete_stream(name)
                except Exception:  # absent is fine
                    continue
        finally:
            await client.close()

    asyncio.run(delete())


def _log(engine: str) -> tuple[str, Callable[[], None]]:
    """A fresh shared log on ``engine``: its URL and how to remove it."""
    require(engine)
    name = f"shared_{uuid.uuid4().hex[:10]}"
    if engine == "redis":
        return f"{REDIS_URL}?prefix={name}", lambda: wipe_redis(name)
    if engine == "postgres":
        return f"{POSTGRES_URL}?schema={name}", lambda: _drop_schema(name)
    return f"{NATS_URL}?stream={name}", lambda: _delete_stream(name)


@pytest.fixture(params=["redis"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Callable[[], Server]]:
    """Start example processes on one fresh shared log; stops them (and removes it) after."""
    url, remove = _log(str(request.param))
    servers: list[Server] = []

    def start() -> Server:
        server = Server.start("starlette", "--backend", url, "--heartbeat", "30")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        logs = [s.stop() for s in servers if s.process.poll() is None]
        remove()
        assert not [log for log in logs if "Traceback" in log], logs


def _kill(server: Server) -> None:
    """SIGKILL: no shutdown, no final bookmark (its files are closed here, not at stop)."""
    server.process.kill()
    server.process.wait(READ_TIMEOUT)
    server.client.close()
    assert server.process.stdout is not None
    server.process.stdout.close()
    server._stderr.close()


def _data_events(stream: SSEStream, count: int) -> list[tuple[str, Any]]:
    """The next ``count`` events with an id: (id, envelope)."""
    out: list[tuple[str, Any]] = []
    while len(out) < count:
        block = stream.next()
        assert block is not None, f"the stream ended after {len(out)} of {count} events"
        if block.data is not None and block.id is not None:
            event = envelope(block)
            if event["type"] != "BOOKMARK":
                out.append((block.id, event))
    return out


def test_a_client_killed_with_its_server_resumes_on_another_exactly(
    cluster: Callable[[], Server],
) -> None:
    a, b, c = cluster(), cluster(), cluster()
    a.create("o-0")
    head = str(a.head())
    params = {"resourceVersion": head}
    with c.sse(params=params) as on_c, b.sse(params=params) as on_b:
        writer = threading.Thread(
            target=lambda: [a.patch("o-0", {"spec": {"n": i}}) for i in range(EVENTS)]
        )
        writer.start()
        got = _data_events(on_b, EVENTS // 3)
        _kill(b)  # mid-stream: the writer is still publishing
        writer.join(60)
        everything = _data_events(on_c, EVENTS)
    last_id = got[-1][0]
    ids = [i for i, _ in everything]
    assert ids == sorted(ids, key=int)
    assert len(set(ids)) == EVENTS
    assert got == everything[: len(got)]  # B saw the same history while it lived
    with c.sse(headers={"last-event-id": last_id}) as resumed:
        rest = _data_events(resumed, EVENTS - len(got))
    assert rest == everything[len(got) :]  # exactly the missed events, in order


def test_concurrent_publishers_on_two_processes_share_one_order(
    cluster: Callable[[], Server],
) -> None:
    a, b, c = cluster(), cluster(), cluster()
    head = str(c.head())
    rvs: list[int] = []
    lock = threading.Lock()

    def publish(server: Server, name: str) -> None:
        for i in range(EVENTS // 2):
            stored = server.create(f"{name}-{i}")
            with lock:
                rvs.append(int(stored["metadata"]["resourceVersion"]))

    with c.sse(params={"resourceVersion": head}) as on_c:
        writers = [threading.Thread(target=publish, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        seen = [int(i) for i, _ in _data_events(on_c, EVENTS)]
    assert len(set(rvs)) == EVENTS
    assert seen == sorted(rvs)  # every process's writes, once each, in one rv order
