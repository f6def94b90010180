"""Hostile and odd requests against every example app as a real server (protocol.md §5.5): long
request lines reach the app, bodies are limited while they are read, every decoding failure
is a 400 Status, HEAD and unknown methods get proper answers, a client that leaves mid-body
is no server error, and the metrics have their series from start-up.

At teardown each server must exit cleanly without a traceback in its log.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from ._support import Server, assert_status, assert_status_object

pytestmark = pytest.mark.network

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module", params=["starlette", "fastapi", "aiohttp", "flask", "django"])
def app(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server.start(str(request.param), "--heartbeat", "30", "--seed", "2")
    yield server
    log = server.stop()
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


def connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and the body bytes received with them."""
    data = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


@pytest.mark.parametrize("kib", [10, 60])
def test_a_long_selector_gets_the_librarys_400_naming_the_parameter(app: Server, kib: int) -> None:
    selector = "region=" + "e" * (kib * 1024)
    for params in ({"labelSelector": selector}, {"labelSelector": selector, "watch": "true"}):
        response = app.client.get("/orders", params=params)
        assert_status(response, 400, "BadRequest", "labelSelector")
    response = app.client.get("/orders", headers={"x-long": "x" * (kib * 1024)})
    assert response.status_code == 200  # a long header reaches the app too


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 1000 + b"]" * 1000, "nests deeper"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nests deeper"),
        (b'{"metadata": {"name": "\xff\xfe"}}', "UTF-8"),
        (b'{"metadata": {"name": "x"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
    ],
)
def test_every_body_decoding_failure_is_a_400(app: Server, body: bytes, fragment: str) -> None:
    for method, path in (("POST", "/orders"), ("PUT", "/orders/o-1")):
        response = app.client.request(method, path, content=body)
        assert_status(response, 400, "BadRequest", fragment)
    response = app.client.patch(
        "/orders/o-1", content=body, headers={"content-type": "application/merge-patch+json"}
    )
    assert_status(response, 400, "BadRequest", fragment)


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    app: Server,
) -> None:
    with connect(app) as sock:
        sock.sendall(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n{"
        )
        status, headers, _ = read_head(sock)  # nothing more of the 200 MB is sent
    assert status == 413
    assert headers["content-type"] == "application/json"


def test_a_chunked_body_is_cut_off_at_the_limit(app: Server) -> None:
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    sent = 0
    with connect(app) as sock:
        sock.sendall(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.setblocking(False)
        pending = b""
        while not select.select([sock], [], [], 0)[0]:
            assert sent < 64 * MAX_BODY, "no answer while the body kept coming"
            pending = pending or chunk
            if select.select([], [sock], [], 1)[1]:
                with contextlib.suppress(BlockingIOError):
                    count = sock.send(pending)
                    sent, pending = sent + count, pending[count:]
        sock.setblocking(True)
        status, _, _ = read_head(sock)
    assert status == 413
    assert sent > MAX_BODY


def test_a_client_that_leaves_mid_body_is_no_server_error(app: Server) -> None:
    for framing in (b"Content-Length: 1000\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n5\r\n"):
        with connect(app) as sock:
            sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\n" + framing + b'{"me')
            time.sleep(0.05)
    assert app.client.get("/orders").status_code == 200  # the log is checked at teardown


def test_head_is_get_without_the_body(app: Server) -> None:
    for path in ("/orders", "/orders/o-1", "/metrics", "/"):
        get = app.client.get(path)
        head = app.client.head(path)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        assert head.headers["content-type"] == get.headers["content-type"]
    missing = app.client.head("/orders/nope")
    assert (missing.status_code, missing.content) == (404, b"")
    watch = app.client.head("/orders", params={"watch": "true"})  # never a stream
    assert (watch.status_code, watch.content) == (200, b"")


@pytest.mark.parametrize(("method", "path"), [("OPTIONS", "/orders/o-1"), ("DELETE", "/orders")])
def test_other_methods_are_405_with_allow(app: Server, method: str, path: str) -> None:
    response = app.client.request(method, path)
    assert_status(response, 405, "MethodNotAllowed", method)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "HEAD"} <= allowed
    assert method not in allowed


def test_metric_series_exist_at_zero_from_start_up(app: Server) -> None:
    text = app.client.get("/metrics").text
    for transport in ("sse", "jsonlines", "longpoll", "websocket"):
        labels = f'resource="orders",transport="{transport}"'
        for name in ("watchroutes_active_watches", "watchroutes_watches_opened_total"):
            assert re.search(rf"^{name}\{{{labels}\}} 0\.0$", text, re.M), (name, transport)
    assert re.search(r'^watchroutes_events_published_total\{resource="orders"\} ', text, re.M)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * (80 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # past the 64 KiB
        b"GET /orders HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /orders HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_requests_are_refused_without_an_error_in_the_log(
    app: Server, request_bytes: bytes
) -> None:
    with connect(app) as sock:
        sock.sendall(request_bytes)
        status, _, _ = read_head(sock)
    assert status == 400  # the server's own answer: the request never reached the app
    # (teardown: no traceback and no ERROR line in the server's log)


@pytest.mark.parametrize("kib", [10, 60])
def test_a_long_selector_on_a_websocket_url_gets_the_librarys_error(app: Server, kib: int) -> None:
    query = urllib.parse.urlencode({"labelSelector": "region=" + "e" * (kib * 1024)})
    url = app.base_url.replace("http://", "ws://") + "/orders?" + query
    with ws_connect(url, subprotocols=[Subprotocol("watchroutes.v1")], proxy=None) as ws:
        error = json.loads(ws.recv(timeout=5))
    assert (error["id"], error["type"]) == ("", "ERROR")
    assert_status_object(error["object"], 400, "BadRequest", "labelSelector")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_huge_body_sent_whole_is_never_held(app: Server, framing: str) -> None:
    size = 64 * MAX_BODY
    before = rss(app.process.pid)
    chunk = b" " * 65536
    if framing == "chunked":
        header, chunk = b"Transfer-Encoding: chunked\r\n", b"10000\r\n" + chunk + b"\r\n"
    else:
        header = b"Content-Length: %d\r\n" % size
    peak = before
    with connect(app) as sock:
        sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
        with contextlib.suppress(OSError):  # (the server may stop reading once it answered)
            for i in range(size // 65536):
                sock.sendall(chunk)
                if i % 128 == 0:
                    peak = max(peak, rss(app.process.pid))
            if framing == "chunked":
                sock.sendall(b"0\r\n\r\n")  # a complete body, as a client would send it
        status, _, _ = read_head(sock)
    assert status == 413
    assert peak - before < 16 * MAX_BODY, f"RSS grew by {(peak - before) >> 20} MiB"
