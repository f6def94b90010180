"""Several example-app processes on one shared log (protocol.md §5.1 across processes).

Publish on A, watch on B and C; kill B mid-stream and resume on C with its Last-Event-ID:
exactly the missed events, in order. Concurrent publishers on two processes never produce a
duplicate or out-of-order rv. Run on every shared engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._support import READ_TIMEOUT, Server, SSEStream, envelope, shared_log

pytestmark = pytest.mark.network

EVENTS = 60


@pytest.fixture(params=["redis", "postgres", "nats"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Callable[[], Server]]:
    """Start example processes on one fresh shared log; stops them (and removes it) after."""
    url, remove = shared_log(str(request.param))
    servers: list[Server] = []

    def start() -> Server:
        server = Server.start("starlette", "--backend", url, "--heartbeat", "30")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        logs = [s.stop() for s in servers if s not in killed]
        remove()
        assert not [log for log in logs if "Traceback" in log], logs


killed: set[Server] = set()


def _kill(server: Server) -> None:
    """SIGKILL: no shutdown, no final bookmark (its files are closed here, not at stop)."""
    killed.add(server)
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


def test_shutdown_ends_every_transport_and_each_client_resumes_on_another_server(
    cluster: Callable[[], Server],
) -> None:
    """protocol.md §5.6 across processes: SIGTERM one server with a watcher of each streaming
    transport; each ends within the grace with a resume point, and resumes on another server
    of the same log with exactly what was published meanwhile."""
    import json
    import re
    import time

    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    from .test_operations import REQUESTS, _open, _wait_for_metric

    a, b = cluster(), cluster()
    a.create("o-1")
    watchers = {transport: _open(a, transport) for transport in REQUESTS}
    _wait_for_metric(a, "watchroutes_active_watches", 3, READ_TIMEOUT)
    a.patch("o-1", {"spec": {"qty": 9}})
    time.sleep(0.2)
    began = time.monotonic()
    a.signal_stop()
    received: dict[str, bytes] = {}
    for transport, (sock, data) in watchers.items():
        sock.settimeout(READ_TIMEOUT)
        while chunk := sock.recv(65536):
            data += chunk
        received[transport] = data
        sock.close()
    assert a.wait_exit() in (0, -15)
    assert time.monotonic() - began < 10
    missed = [b.patch("o-1", {"spec": {"qty": n}}) for n in range(3)]  # after a went away
    last = {
        "sse": re.findall(rb"^id: (\d+)$", received["sse"], flags=re.MULTILINE)[-1],
        "jsonlines": re.findall(rb'"resourceVersion":"(\d+)"\}\r?\n', received["jsonlines"])[-1],
        "websocket": re.findall(rb'"resourceVersion":"(\d+)"\}', received["websocket"])[-1],
    }
    with b.sse(headers={"last-event-id": last["sse"].decode()}) as stream:
        sse = [e["object"] for _, e in _data_events(stream, 3)]
    with b.lines(params={"resourceVersion": last["jsonlines"].decode()}) as lines:
        jsonlines = [e["object"] for e in lines.take(3)]
    url = b.base_url.replace("http://", "ws://") + "/orders"
    query = f"?resourceVersion={last['websocket'].decode()}"
    with connect(
        url + query, subprotocols=[Subprotocol("watchroutes.v1")], open_timeout=READ_TIMEOUT
    ) as ws:
        frames = [json.loads(ws.recv(timeout=READ_TIMEOUT)) for _ in range(3)]
    websocket = [f["object"] for f in frames]
    assert sse == jsonlines == websocket == missed  # no loss, no repeat, on every transport
