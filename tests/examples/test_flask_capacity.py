"""The Flask example on gunicorn at its watch cap: every watch holds a server thread, so past
``Hub(max_watches=...)`` (set below the thread count) a watch is refused with a retryable
Status while plain requests still find a thread; a client that leaves frees its place within
a heartbeat."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.conformance._support import LineStream, Server, assert_status

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

THREADS = 8  # the example keeps max(2, 8 // 8) = 2 of them for plain requests: 6 watches


def test_at_the_watch_cap_plain_requests_still_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHROUTES_THREADS", str(THREADS))
    server = Server.start("flask", "--heartbeat", "0.5", "--seed", "1")
    try:
        with contextlib.ExitStack() as stack:
            watches = [
                stack.enter_context(server.lines(params={"allowWatchBookmarks": "1"}))
                for _ in range(THREADS - 2)
            ]
            for watch in watches:
                assert watch.next()["type"] == "ADDED"
            assert server.metric("watchroutes_active_watches") == THREADS - 2
            refused = server.client.get("/orders", params={"watch": "1"})
            status = assert_status(refused, 503, "ServiceUnavailable")
            assert int(refused.headers["retry-after"]) >= 1
            assert status["details"]["retryAfterSeconds"] >= 1
            sse = server.client.get("/orders", headers={"accept": "text/event-stream"})
            assert sse.status_code == 200  # EventSource retries this one
            assert sse.text.startswith("retry: ")
            assert '"type":"ERROR"' in sse.text
            for i in range(10):  # plain requests keep being served
                assert server.client.get("/orders").status_code == 200
                assert server.create(f"plain-{i}")["metadata"]["name"] == f"plain-{i}"
            for watch in watches:  # and the watches got every write
                added = watch.until(lambda e: e["object"]["metadata"].get("name") == "plain-9")
                names = [e["object"]["metadata"]["name"] for e in added if e["type"] == "ADDED"]
                assert names[-10:] == [f"plain-{i}" for i in range(10)]
            stack.close()  # the clients leave: their places free within a heartbeat
            deadline = time.monotonic() + 5
            while server.metric("watchroutes_active_watches") != 0:
                assert time.monotonic() < deadline, "the watches were not released"
                time.sleep(0.05)
        with server.client.stream("GET", "/orders", params={"watch": "1"}) as again:
            assert again.status_code == 200
            assert LineStream(again).next()["type"] == "ADDED"
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def test_idle_watches_of_a_client_that_left_are_released() -> None:
    """A JSON-lines watch without bookmarks and a long poll write nothing while idle, so no
    write can fail: the adapter notices the closed socket itself, well before a heartbeat."""
    server = Server.start("flask", "--heartbeat", "30")
    try:
        port = int(server.base_url.rsplit(":", 1)[1])
        head = server.head()
        requests = [
            b"GET /orders?watch=1&resourceVersion=%d HTTP/1.1\r\n" % head,
            b"GET /orders?watch=1&feed=longpoll&resourceVersion=%d&timeoutSeconds=60 HTTP/1.1\r\n"
            % head,
        ]
        sockets = []
        for line in requests:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(line + b"Host: x\r\n\r\n")
            sockets.append(sock)
        deadline = time.monotonic() + 5
        while server.metric("watchroutes_active_watches") != 2:
            assert time.monotonic() < deadline, "the watches did not open"
            time.sleep(0.05)
        for sock in sockets:
            sock.close()  # a FIN, and nothing more is ever written to them
        began = time.monotonic()
        while server.metric("watchroutes_active_watches") != 0:
            assert time.monotonic() - began < 3, "an idle watch outlived its client"
            time.sleep(0.05)
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
