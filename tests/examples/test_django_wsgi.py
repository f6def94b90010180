"""Django under WSGI on a real gunicorn (``_django_wsgi_app``): the watch view (async, run by
Django's WSGI handler) and a watchable sync view stream from the request thread; headers go out
before the first event; watchers that reset are released within two heartbeats (``/metrics``);
SIGTERM ends every watch resumably and the server exits within 10 s. (The example app on
uvicorn runs the whole conformance suite under ASGI; tests/adapters/test_django.py covers both
handlers in memory.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conformance._support import LineStream, SSEStream

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.5


class App:
    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.examples._django_wsgi_app", "--heartbeat", "0.5"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("ready http://"), line
        self.url = line.split()[1]
        self.client = httpx.Client(base_url=self.url, timeout=5, trust_env=False)

    def active(self) -> float:
        text = self.client.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("watchroutes_active_watches{")
        )

    def stop(self) -> str:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        self.log.seek(0)
        log = self.log.read().decode(errors="replace")
        self.log.close()
        assert code == 0, (code, log)
        return log


@pytest.fixture
def app() -> Iterator[App]:
    started = App()
    yield started
    log = started.stop()
    assert "Traceback" not in log, log


def until(predicate: object, timeout: float = 5.0) -> float:
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - began < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - began


def test_watches_stream_from_the_request_thread(app: App) -> None:
    sse_headers = {"accept": "text/event-stream"}
    with app.client.stream("GET", "/orders", headers=sse_headers) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        stream = SSEStream(response)
        assert stream.next() is not None  # retry
        assert stream.next() is not None  # the end of the (empty) initial events
        created = app.client.post("/publish", json={"metadata": {"name": "a"}}).json()
        assert stream.data_events(1)[0]["object"] == created
    params = {"watch": "1", "resourceVersion": "0", "sendInitialEvents": "false"}
    with app.client.stream("GET", "/sync", params=params) as response:  # headers at once
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        lines = LineStream(response)
        app.client.post("/publish", json={"metadata": {"name": "b"}})
        assert lines.next()["object"]["metadata"]["name"] == "b"
    plain = app.client.get("/sync")
    assert plain.json() == {"own": True}
    assert "Accept" in plain.headers["vary"]


def test_watchers_that_reset_are_released_within_two_heartbeats(app: App) -> None:
    port = int(app.url.rsplit(":", 1)[1])
    requests = [
        b"GET /orders HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        b"GET /orders?watch=1&allowWatchBookmarks=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    sockets = []
    for i in range(6):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(requests[i % 2])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    until(lambda: app.active() == 6)
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert until(lambda: app.active() == 0) < 2 * HEARTBEAT + 1.0


def test_sigterm_ends_every_watch_resumably(app: App) -> None:
    created = app.client.post("/publish", json={"metadata": {"name": "a"}}).json()
    rv = created["metadata"]["resourceVersion"]
    sse_headers = {"accept": "text/event-stream"}
    with app.client.stream("GET", "/orders", headers=sse_headers) as response:
        stream = SSEStream(response)
        stream.data_events(2)  # the object and the end of the initial events
        began = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        rest = stream.rest(timeout=9)
        assert stream.ended  # the stream ended (the client resumes elsewhere)
    ids = re.findall(r"^id: (\d+)$", stream.raw.decode(), flags=re.MULTILINE)
    assert ids[-1] == rv, rest
    assert app.proc.wait(10) == 0
    assert time.monotonic() - began < 10
