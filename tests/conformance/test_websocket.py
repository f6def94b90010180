"""WebSocket watches (protocol.md §4) against real uvicorn servers, with the ``websockets`` client:
the handshake, subscriptions, every close code and every limit."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ._support import READ_TIMEOUT, Launch, Server

PROTOCOL = "watchroutes.v1"


@pytest.fixture(autouse=True)
def _real_sockets(framework: str) -> None:
    if framework.endswith("-memory"):
        pytest.skip("WebSocket conformance needs a real server (the in-memory client is tested "
                    "in tests/runtime/test_websocket.py)")  # fmt: skip


@contextmanager
def ws(
    server: Server, path: str = "/orders", *, query: str = "", **kwargs: Any
) -> Iterator[ClientConnection]:
    url = server.base_url.replace("http://", "ws://") + path + (f"?{query}" if query else "")
    kwargs.setdefault("subprotocols", [PROTOCOL])
    with connect(url, open_timeout=READ_TIMEOUT, close_timeout=2, **kwargs) as conn:
        yield conn


def recv(conn: ClientConnection, n: int = 1) -> list[Any]:
    return [json.loads(conn.recv(timeout=READ_TIMEOUT)) for _ in range(n)]


def close_of(conn: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; the close code and reason."""
    deadline = time.monotonic() + READ_TIMEOUT
    closed: ConnectionClosed | None = None
    try:
        while time.monotonic() < deadline:
            conn.recv(timeout=READ_TIMEOUT)
    except ConnectionClosed as exc:
        closed = exc
    assert closed is not None, "the server did not close"
    assert closed.rcvd is not None, "the server vanished without a close frame"
    return closed.rcvd.code, closed.rcvd.reason


def test_initial_state_live_events_and_more_subscriptions(seeded: Server) -> None:
    with ws(seeded, query="allowWatchBookmarks=true&labelSelector=region%3Deu") as conn:
        assert conn.subprotocol == PROTOCOL
        added, end = recv(conn, 2)
        assert (added["id"], added["type"], added["object"]["metadata"]["name"]) == (
            "",
            "ADDED",
            "o-3",
        )
        assert end["type"] == "BOOKMARK"
        conn.send(
            json.dumps({"op": "watch", "id": "one", "key": "o-1", "sendInitialEvents": False})
        )
        conn.send(json.dumps({"op": "watch", "id": "one"}))
        (dup,) = recv(conn)
        assert (dup["id"], dup["type"], dup["object"]["code"]) == ("one", "ERROR", 400)
        seeded.patch("o-1", {"spec": {"qty": 7}})
        seeded.relabel("o-1", "eu")
        got = recv(conn, 3)
        assert sorted((m["id"], m["type"]) for m in got) == [
            ("", "ADDED"),  # o-1 entered region=eu
            ("one", "MODIFIED"),
            ("one", "MODIFIED"),
        ]
        conn.send(json.dumps({"op": "unwatch", "id": "one"}))
        assert recv(conn) == [{"id": "one", "type": "UNWATCHED"}]
        seeded.patch("o-1", {"spec": {"qty": 8}})
        (last,) = recv(conn)
        assert (last["id"], last["type"]) == ("", "MODIFIED")


def test_object_route(seeded: Server) -> None:
    with ws(seeded, "/orders/o-2") as conn:
        (added,) = recv(conn)
        assert added["object"]["metadata"]["name"] == "o-2"
        seeded.patch("o-1", {"spec": {"qty": 1}})
        seeded.patch("o-2", {"spec": {"qty": 1}})
        (modified,) = recv(conn)
        assert modified["object"]["metadata"]["name"] == "o-2"


def test_expired_resume_is_an_error_envelope_and_the_socket_stays(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    server.create("a")
    start = server.head()
    for qty in range(4):
        server.patch("a", {"spec": {"qty": qty}})
    with ws(server, query=f"resourceVersion={start}") as conn:
        (error,) = recv(conn)
        assert (error["id"], error["type"], error["object"]["code"]) == ("", "ERROR", 410)
        assert error["object"]["reason"] == "Expired"
        conn.send(json.dumps({"op": "watch", "id": "again"}))
        (added,) = recv(conn)
        assert (added["id"], added["type"]) == ("again", "ADDED")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", 4400),
        (json.dumps({"op": "subscribe", "id": "x"}), 4400),
        (json.dumps({"op": "watch"}), 4400),
        (b"\x01\x02", 4400),
        ("x" * (64 * 1024 + 1), 1009),
    ],
)
def test_invalid_messages_close_with_their_code(
    server: Server, message: str | bytes, code: int
) -> None:
    with ws(server, query="sendInitialEvents=false") as conn:
        conn.send(message)
        got, reason = close_of(conn)
        assert got == code, reason


def test_a_flood_closes_4429(server: Server) -> None:
    with ws(server, query="sendInitialEvents=false") as conn:
        for i in range(40):
            conn.send(json.dumps({"op": "unwatch", "id": f"n{i}"}))
        codes = close_of(conn)
    assert codes == (4429, "more than 20 messages per second")


def test_subprotocol_origin_and_credentials(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--token", "s3cret")
    with ws(server, subprotocols=["chat"]) as conn:
        assert close_of(conn)[0] == 4400
    with ws(server) as conn:
        assert close_of(conn) == (4401, "a valid bearer token is required")
    with ws(server, subprotocols=[PROTOCOL, "bearer.wrong"]) as conn:
        assert close_of(conn)[0] == 4401
    host = server.base_url.removeprefix("http://")
    with ws(server, subprotocols=[PROTOCOL, "bearer.s3cret"], origin="http://evil.example") as conn:
        assert close_of(conn) == (4403, "origin not allowed")
    auth = {"Authorization": "Bearer s3cret"}
    variants: list[dict[str, Any]] = [
        {"subprotocols": [PROTOCOL, "bearer.s3cret"], "origin": f"http://{host}"},
        {"additional_headers": auth},
    ]
    for n, kwargs in enumerate(variants):
        with ws(server, query="sendInitialEvents=false", **kwargs) as conn:
            assert conn.subprotocol == PROTOCOL  # the bearer subprotocol is never echoed
            body = {"metadata": {"name": f"o-{n}", "labels": {"region": "eu"}}}
            assert server.client.post("/orders", json=body, headers=auth).status_code == 201
            assert recv(conn)[0]["type"] == "ADDED"


def test_timeout_seconds_closes_1000(server: Server) -> None:
    with ws(server, query="timeoutSeconds=1&allowWatchBookmarks=true") as conn:
        (end,) = recv(conn)
        assert end["type"] == "BOOKMARK"
        assert close_of(conn) == (1000, "timeoutSeconds passed")


def _raw_websocket(server: Server, query: str) -> socket.socket:
    """A WebSocket handshake on a plain socket with a tiny receive buffer, which then reads
    nothing until the test says so (a client library would keep reading in the background)."""
    port = int(server.base_url.rsplit(":", 1)[1])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(READ_TIMEOUT)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /orders?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return raw


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames a server sent."""
    pos = 0
    while pos + 2 <= len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2]), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8]), pos + 8
        if pos + length > len(data):
            return  # incomplete
        yield opcode, data[pos : pos + length]
        pos += length


def test_a_consumer_that_stops_reading_is_closed_4008(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--buffer", "10")
    server.create("big", item="x" * 2048)
    with (
        _raw_websocket(server, "sendInitialEvents=false") as stuck,
        ws(server, query="sendInitialEvents=false", max_queue=None) as healthy,
    ):
        for i in range(2000):  # 2,000 events of 2 KiB
            server.patch("big", {"spec": {"n": i}})
        received = [json.loads(healthy.recv(timeout=READ_TIMEOUT)) for _ in range(2000)]
        data = b""
        frames: list[tuple[int, bytes]] = []
        while not frames or frames[-1][0] != 8:  # until the close frame
            chunk = stuck.recv(1 << 16)
            assert chunk, "the server closed the connection without a close frame"
            data += chunk
            frames = list(_frames(data))
    assert [m["object"]["spec"]["n"] for m in received] == list(range(2000))
    opcode, payload = frames[-1]
    assert opcode == 8  # close
    assert int.from_bytes(payload[:2]) == 4008
    rvs = [int(json.loads(p)["resourceVersion"]) for op, p in frames[:-1] if op == 1]
    assert rvs == sorted(rvs)
    assert 0 < len(rvs) < 2000  # it got what fit, in order, then the close


def test_shutdown_closes_1012(seeded: Server) -> None:
    with ws(seeded, query="allowWatchBookmarks=true&labelSelector=region%3Dus") as conn:
        recv(conn, 2)
        seeded.relabel("o-3", "apac")  # not for this watcher: the head moves past it
        seeded.signal_stop()
        (bookmark,) = recv(conn)
        assert bookmark["type"] == "BOOKMARK"
        assert close_of(conn)[0] == 1012
    assert seeded.wait_exit() in (0, -15)


def test_plain_http_on_the_route_is_unchanged(server: Server) -> None:
    with pytest.raises(InvalidStatus), ws(server, "/metrics"):
        pass  # pragma: no cover
    assert server.client.get("/orders").status_code == 200


def test_a_client_closing_while_the_server_writes_is_no_server_error(launch: Launch) -> None:
    """Sockets closed by their clients while events are being written to them: the server
    logs no traceback (the ``launch`` fixture checks its log at teardown)."""
    import threading

    server = launch("--heartbeat", "0.5")
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            i += 1
            server.create(f"w-{i}", item="y" * 2000)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for n in range(8):
            with ws(server, query="allowWatchBookmarks=true") as conn:
                for _ in range(n % 4 + 1):
                    conn.recv(timeout=READ_TIMEOUT)
    finally:
        stop.set()
        writer.join(READ_TIMEOUT)
