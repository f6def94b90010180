"""Operations (protocol.md §5.4, 5.6) against real servers: peers that vanish with a reset are
released quickly, and shutdown ends every transport's watches resumably and on time."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import threading
import time

import pytest

from ._support import READ_TIMEOUT, Launch, Server

pytestmark = pytest.mark.usefixtures("real_server")

REQUESTS = {
    "sse": "GET /orders HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    "jsonlines": "GET /orders?watch=1&allowWatchBookmarks=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "websocket": (
        "GET /orders?allowWatchBookmarks=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: watchroutes.v1\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ),
}


@pytest.fixture
def real_server(framework: str) -> None:
    if framework.endswith("-memory"):
        pytest.skip("needs real sockets")


def _open(server: Server, transport: str) -> tuple[socket.socket, bytes]:
    """A watch on a plain socket: the socket, and what was read (the head and first bytes)."""
    port = int(server.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(REQUESTS[transport].format(key=key).encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) == 0:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return sock, data


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _wait_for_metric(server: Server, name: str, value: float, timeout: float) -> float:
    began = time.monotonic()
    while (current := server.metric(name)) != value:
        assert time.monotonic() - began < timeout, f"{name} stayed at {current}, not {value}"
        time.sleep(0.05)
    return time.monotonic() - began


def test_watchers_reset_abruptly_are_released_within_two_heartbeats(launch: Launch) -> None:
    server = launch("--heartbeat", "0.5")
    transports = ["sse", "jsonlines", "websocket"]
    sockets = [_open(server, transports[i % 3])[0] for i in range(200)]
    _wait_for_metric(server, "watchroutes_active_watches", 200, READ_TIMEOUT)
    for sock in sockets:
        _reset(sock)
    elapsed = _wait_for_metric(server, "watchroutes_active_watches", 0, 1.0)  # 2 x 0.5 s
    assert elapsed < 1.0


def test_shutdown_ends_every_transport_resumably_within_the_grace(seeded: Server) -> None:
    server = seeded
    watchers = {transport: _open(server, transport) for transport in REQUESTS}
    _wait_for_metric(server, "watchroutes_active_watches", 3, READ_TIMEOUT)
    changed = server.patch("o-1", {"spec": {"qty": 9}})
    time.sleep(0.2)
    began = time.monotonic()
    server.signal_stop()
    received: dict[str, bytes] = {}
    for transport, (sock, data) in watchers.items():
        sock.settimeout(READ_TIMEOUT)
        while chunk := sock.recv(65536):
            data += chunk
        received[transport] = data
        sock.close()
    assert server.wait_exit() in (0, -15)
    assert time.monotonic() - began < 10  # the example's grace period and exit budget
    head = changed["metadata"]["resourceVersion"]
    # Each stream's last resume point is the newest rv (the last change it got, or a final
    # bookmark): a client that reconnects there, to a server sharing the log, misses nothing.
    sse_ids = re.findall(rb"^id: (\d+)$", received["sse"], flags=re.MULTILINE)
    assert sse_ids[-1].decode() == head
    body = received["jsonlines"].split(b"\r\n\r\n", 1)[1]
    rvs = re.findall(rb'"resourceVersion":"(\d+)"\}\r?\n', body)
    assert rvs[-1].decode() == head
    ws_rvs = re.findall(rb'"resourceVersion":"(\d+)"\}', received["websocket"])
    assert ws_rvs[-1].decode() == head
    # The WebSocket ends with a close frame: 1012, service restart.
    tail = received["websocket"]
    close_at = tail.rfind(b"\x88")
    assert close_at >= 0
    assert int.from_bytes(tail[close_at + 2 : close_at + 4]) == 1012


def _unchunk(data: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked stream (as much of it as ``data`` holds)."""
    body = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        body += rest[:size]
        data = rest[size + 2 :]
        if size == 0:
            break
    return bytes(body)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def test_a_watcher_that_stops_reading_is_disconnected_and_memory_stays_bounded(
    launch: Launch, framework: str, request: pytest.FixtureRequest
) -> None:
    # Retention of 100 events: what grows is then only what the watchers queue, not history.
    server = launch("--heartbeat", "30", "--buffer", "100", "--retention", "100")
    server.create("big", item="x" * 2048)
    port = int(server.base_url.rsplit(":", 1)[1])
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(REQUESTS["sse"].encode())
    healthy, first = _open(server, "sse")
    received = [first]

    def read_healthy() -> None:
        healthy.settimeout(READ_TIMEOUT)
        while b'"n":1999' not in b"".join(received[-2:]):  # the ADDED, then 2,000 changes
            chunk = healthy.recv(1 << 16)
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read_healthy)
    reader.start()
    rss_before = _rss_kib(server.process.pid)
    for i in range(2000):  # 2,000 events of 2 KiB
        server.patch("big", {"spec": {"n": i}})
    reader.join(READ_TIMEOUT)
    rss_after = _rss_kib(server.process.pid)
    # The healthy watcher beside it got every event, once and in order.
    body = _unchunk(b"".join(received).split(b"\r\n\r\n", 1)[1])
    events = re.findall(rb"^id: (\d+)\ndata: [^\n]*\"n\":(\d+)", body, flags=re.MULTILINE)
    assert body.count(b'"type":"ADDED"') == 1
    assert [int(n) for _, n in events] == list(range(2000))
    rvs = [int(rv) for rv, _ in events]
    assert rvs == sorted(set(rvs))
    _wait_for_metric(server, "watchroutes_active_watches", 1, READ_TIMEOUT)  # stuck one gone
    assert rss_after - rss_before < 16_384  # KiB: nothing like 2,000 events per watcher queued
    stuck.settimeout(READ_TIMEOUT)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked stream
        chunk = stuck.recv(1 << 16)
        assert chunk
        data += chunk
    ids = [int(i) for i in re.findall(rb"^id: (\d+)$", data, flags=re.MULTILINE)]
    assert ids == sorted(ids)
    assert len(ids) < 2000  # what fit in the socket buffers, in order; it resumes from there
    for sock in (stuck, healthy):
        sock.close()
