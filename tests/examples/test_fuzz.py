"""Malformed requests against every example app as a real server process (protocol.md §5.5).

A seeded, bounded generator sends hostile bodies (deep nesting, huge, truncated, wrong
types, invalid UTF-8), headers, query strings (bad selectors, resourceVersions, unknown
values), paths, raw bytes and WebSocket messages, over raw sockets so that nothing is
cleaned up on the way. Then: no answer was a 5xx, the server's log (its stderr) holds no
traceback and no ERROR line, its RSS grew by less than 50 MB, and it still serves a watch.

``WATCHROUTES_FUZZ_REQUESTS=N`` sets the requests per app (default 600, the CI size; the
issue's run used 10,000), ``WATCHROUTES_FUZZ_SEED=S`` the seed. Each app's numbers are
printed (``pytest -s``) and written to ``$WATCHROUTES_FUZZ_REPORT`` when set.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import socket
import struct
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests.conformance._support import Server

REQUESTS: Final = int(os.environ.get("WATCHROUTES_FUZZ_REQUESTS", "600"))
SEED: Final = int(os.environ.get("WATCHROUTES_FUZZ_SEED", "13"))
REPORT: Final = os.environ.get("WATCHROUTES_FUZZ_REPORT")
THREADS: Final = 6
READ_TIMEOUT: Final = 5.0
MAX_RSS_GROWTH: Final = 50 * 1024 * 1024
MAX_BODY: Final = 1024 * 1024

pytestmark = [pytest.mark.network, pytest.mark.timeout(90 + REQUESTS // 15)]

SELECTORS: Final = (
    "region=eu",
    "region==eu",
    "region!=us",
    "region in (eu,us)",
    "region notin (apac)",
    "region",
    "!region",
    "region=eu,tier=gold",
    "metadata.name=o-1",
    "status.phase!=new",
    "spec.item=book",
)
PUNCTUATION: Final = "=!(),. \t\n\r\\/\"'%&;:<>[]{}*?~`|^$#@+"
NUMBERS: Final = (
    "",
    "0",
    "1",
    "-1",
    "abc",
    "1e5",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "1.5",
    "\uff10",
    "\u0663",
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "9" * 40,
    "null",
    "true",
)
PATHS: Final = (
    "/orders/%2F",
    "/orders/a%2Fb",
    "/orders/..%2f..%2fetc",
    "/orders/%00",
    "/orders/%zz",
    "/orders/%ff%fe",
    "/orders/a/b",
    "/orders//",
    "//orders",
    "/../../etc/passwd",
    "/orders/%E2%9C%93",
    "/metrics/x",
    "/%",
    "*",
    "http://example.com/orders",
    "/orders?",
    "/orders#frag",
    "/orders;x=y",
    "/ORDERS",
    "/orders/" + "n" * 300,
)
RAW: Final = (
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"get /orders HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    b"GET /orders HTTP/1.1\r\nHost: x\r\n Folded: header\r\n\r\n",
    b"GET /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
    b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /orders HTTP/1.1\nHost: x\n\n",
    b"GET /orders\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
)


@dataclass
class Tally:
    """What one app answered."""

    requests: int = 0
    websocket_sessions: int = 0
    websocket_messages: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0
    server_errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.websocket_sessions += other.websocket_sessions
        self.websocket_messages += other.websocket_messages
        self.statuses.update(other.statuses)
        self.close_codes.update(other.close_codes)
        self.no_answer += other.no_answer
        self.server_errors += other.server_errors

    @property
    def total(self) -> int:
        """Every request: HTTP requests, WebSocket handshakes and messages."""
        return self.requests + self.websocket_sessions + self.websocket_messages


class Fuzzer:
    """Builds hostile requests from a seeded random generator."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    # -- values -------------------------------------------------------------------------

    def text(self, size: int = 12) -> str:
        r = self.random
        alphabet = "abcxyz019-._/" + PUNCTUATION + "\u00e9\u2713\U0001f600\x00\x7f"
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, size)))

    def selector(self) -> str:
        r = self.random
        roll = r.random()
        if roll < 0.05:
            return "region=" + "e" * r.choice((5000, 10_000))
        if roll < 0.15:
            return self.text(30)
        chars = list(r.choice(SELECTORS))
        for _ in range(r.randint(0, 4)):
            where = r.randint(0, len(chars))
            action = r.random()
            if action < 0.4 and chars:
                del chars[min(where, len(chars) - 1)]
            elif action < 0.8:
                chars.insert(where, r.choice(PUNCTUATION + "ab9"))
            else:
                chars[where:where] = chars[: r.randint(1, 5)]
        return "".join(chars)

    def number(self) -> str:
        r = self.random
        return r.choice(NUMBERS) if r.random() < 0.8 else str(r.randint(-(10**20), 10**20))

    def json_value(self, depth: int = 0) -> Any:
        r = self.random
        roll = r.random()
        if depth > 4 or roll < 0.4:
            return r.choice(
                [None, True, False, 0, -1, 1.5, 2**70, "", self.text(), "x" * r.randint(0, 300)]
            )
        if roll < 0.7:
            return [self.json_value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.text(6): self.json_value(depth + 1) for _ in range(r.randint(0, 4))}

    def order(self) -> Any:
        """An object shaped like an order, with any part of it wrong (or nothing)."""
        r = self.random
        name: Any = f"f-{r.randint(0, 30)}"  # a small pool: the app's state stays small
        labels: Any = {"region": r.choice(["eu", "us", "apac"])}
        metadata: Any = {"name": name, "labels": labels}
        if r.random() < 0.3:
            metadata["name"] = r.choice([5, None, "", "a/b", "A_B", "x" * 300, self.json_value()])
        if r.random() < 0.3:
            metadata["labels"] = r.choice(["eu", 5, [], {"region": 5}, {"": "x"}, {"k": None}])
        if r.random() < 0.3:
            metadata["resourceVersion"] = r.choice([5, "abc", "-1", "9" * 30, None, ""])
        if r.random() < 0.1:
            metadata = self.json_value()
        obj: Any = {"metadata": metadata, "spec": {"item": "book", "qty": r.randint(-5, 5)}}
        if r.random() < 0.2:
            obj["spec"] = self.json_value()
        if r.random() < 0.1:
            obj = self.json_value()
        return obj

    def body(self) -> tuple[bytes, str]:
        """A body and what it is."""
        r = self.random
        roll = r.random()
        if roll < 0.2:
            depth = r.choice((50, 99, 100, 101, 500, 999, 1000, 5000, 50_000))
            opener, closer = r.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'{"a":[', b"]}")])
            inner = b"1" if opener.endswith(b":") else b""
            closers = closer * depth if r.random() < 0.8 else b""
            return opener * depth + inner + closers, "deep"
        if roll < 0.5:
            return json.dumps(self.order()).encode(), "order"
        if roll < 0.6:
            spoiled = bytearray(json.dumps(self.order()).encode())
            for _ in range(r.randint(1, 3)):
                spoiled.insert(r.randint(0, len(spoiled)), r.choice([0xFF, 0xC3, 0x80, 0xED]))
            return bytes(spoiled), "utf8"
        if roll < 0.7:
            return json.dumps(self.json_value()).encode(), "type"
        if roll < 0.8:
            data = json.dumps(self.order()).encode()
            return data[: r.randint(0, max(0, len(data) - 1))], "cut"
        if roll < 0.9:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 200))), "bytes"
        return b'{"metadata": null, "spec": {"x": null}}', "patch"

    # -- HTTP requests ------------------------------------------------------------------

    def query(self) -> str:
        r = self.random
        pairs: list[tuple[str, str]] = []
        names = [
            "watch",
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "allowWatchBookmarks",
            "timeoutSeconds",
            "limit",
            "feed",
            "lastEventId",
            "access_token",
            self.text(8),
        ]
        for name in r.sample(names, r.randint(1, 5)):
            if name.endswith("Selector"):
                value = self.selector()
            elif name in ("resourceVersion", "lastEventId", "timeoutSeconds", "limit"):
                value = self.number()
            elif name == "feed":
                value = r.choice(["longpoll", "LONGPOLL", "x", "", "sse"])
            elif name == "resourceVersionMatch":
                value = r.choice(["NotOlderThan", "Exact", "", "notolderthan", self.text()])
            else:
                value = r.choice(["true", "false", "0", "1", "", "yes", self.text()])
            pairs.append((name, value))
        if r.random() < 0.2:
            pairs.append(("watch", "true"))
        # a valid watch answers at once (headers first); a long poll only at its end
        pairs.insert(0, ("timeoutSeconds", "1"))
        encoded = urllib.parse.urlencode(pairs, safe="", errors="surrogatepass")
        if r.random() < 0.1:  # invalid percent-encoding and invalid UTF-8 in the query
            encoded += r.choice(["&labelSelector=%ff%fe", "&x=%zz", "&%=%", "&watch=%00"])
        return encoded

    def request(self) -> tuple[bytes, str, bool]:
        """Raw request bytes, a label, and whether to hang up before any answer."""
        r = self.random
        roll = r.random()
        headers = [("Host", "127.0.0.1"), ("Connection", "close")]
        method, target, body = "GET", "/orders", b""
        label = "query"
        hang_up = False
        if roll < 0.4:
            method = r.choice(["POST", "PUT", "PATCH"])
            target = "/orders" if method == "POST" else f"/orders/f-{r.randint(0, 30)}"
            body, label = self.body()
            headers.append(
                (
                    "Content-Type",
                    r.choice(
                        [
                            "application/json",
                            "application/merge-patch+json",
                            "application/merge-patch+json",
                            "text/plain",
                            "application/json; charset=utf-16",
                            self.text(),
                        ]
                    ),
                )
            )
            framing = r.random()
            if framing < 0.03:  # huge, declared: refused before it is sent
                headers.append(("Content-Length", str(200 * 1024 * 1024)))
                body, label = b'{"metadata":', "huge-declared"
            elif framing < 0.05:  # huge, chunked
                headers.append(("Transfer-Encoding", "chunked"))
                chunk = b" " * 65536
                body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * (MAX_BODY // 65536 + 4)
                body, label = body + b"0\r\n\r\n", "huge-chunked"
            elif framing < 0.1:  # truncated: the client leaves mid-body
                headers.append(("Content-Length", str(len(body) + r.randint(1, 5000))))
                label, hang_up = "truncated", True
            elif framing < 0.15:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
                if r.random() < 0.3:
                    chunked, label, hang_up = chunked[: len(chunked) // 2], "truncated", True
                body = chunked
            elif framing < 0.18:
                headers.append(("Content-Length", r.choice(["abc", "-1", "1" * 30, " 3"])))
                label = "bad-length"
            else:
                headers.append(("Content-Length", str(len(body))))
        elif roll < 0.7:
            target = r.choice(["/orders", "/orders", "/orders/o-1"]) + "?" + self.query()
            if r.random() < 0.5:
                headers.append(
                    (
                        "Accept",
                        r.choice(
                            [
                                "text/event-stream",
                                "application/json",
                                "*/*",
                                "text/event-stream;q=0",
                                "text/*, application/json;q=x",
                                self.text(),
                            ]
                        ),
                    )
                )
            if r.random() < 0.2:
                headers.append(("Last-Event-ID", self.number()))
        elif roll < 0.82:
            label = "headers"
            target = r.choice(["/orders", "/orders/o-1", "/", "/metrics"])
            for _ in range(r.randint(1, 4)):
                headers.append(self.header())
        elif roll < 0.92:
            label = "path"
            method = r.choice(["GET", "GET", "DELETE", "PUT", "HEAD"])
            target = r.choice(PATHS) if r.random() < 0.6 else "/orders/" + self.escaped()
        else:
            label = "method"
            method = r.choice(["FOO", "PROPFIND", "TRACE", "OPTIONS", "CONNECT", "HEAD"])
            method = r.choice([method, "DELETE", "get", "M" * 40])
            target = r.choice(["/orders", "/orders/o-1", "/", "/metrics", "/nope"])
        if r.random() < 0.03:
            return r.choice(RAW), "raw", False
        head = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
        for name, value in headers:
            head += name.encode("latin-1", "replace") + b": "
            head += value.encode("utf-8", "surrogateescape") + b"\r\n"
        return head + b"\r\n" + body, label, hang_up

    def header(self) -> tuple[str, str]:
        r = self.random
        return r.choice(
            [
                ("X-Long", "x" * r.choice((1000, 10_000, 60_000))),
                ("Accept", self.text(40)),
                ("Last-Event-ID", self.number()),
                ("Authorization", r.choice(["Bearer", "Bearer " + self.text(), "Basic ???"])),
                ("Cookie", self.text(60)),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", self.number()),
                ("Sec-WebSocket-Key", self.text()),
                ("Sec-WebSocket-Protocol", self.text()),
                ("Expect", "100-continue"),
                ("Transfer-Encoding", r.choice(["chunked, gzip", "identity", "x"])),
                ("Content-Encoding", "gzip"),
                ("Bad Name", "x"),
                ("X-Latin", "\u00e9\u00ff"),
                ("X-Many", ",".join(["a"] * 2000)),
            ]
        )

    def escaped(self) -> str:
        r = self.random
        raw = bytes(r.getrandbits(8) for _ in range(r.randint(0, 40)))
        return urllib.parse.quote(raw, safe="")

    # -- WebSocket ----------------------------------------------------------------------

    def ws_messages(self) -> list[str | bytes]:
        r = self.random
        out: list[str | bytes] = []
        for i in range(r.randint(1, 6)):
            roll = r.random()
            message: Any
            if roll < 0.4:
                message = {"op": "watch", "id": r.choice([f"s{i}", "", "s0", self.text(8)])}
                for name in r.sample(
                    [
                        "resource",
                        "key",
                        "labelSelector",
                        "fieldSelector",
                        "resourceVersion",
                        "resourceVersionMatch",
                        "sendInitialEvents",
                        "allowWatchBookmarks",
                        self.text(6),
                    ],
                    r.randint(0, 4),
                ):
                    message[name] = r.choice(
                        [self.selector(), self.number(), self.json_value(), "orders", "nope"]
                    )
                out.append(json.dumps(message))
            elif roll < 0.5:
                out.append(json.dumps({"op": "unwatch", "id": r.choice(["", "s0", "nobody"])}))
            elif roll < 0.7:
                out.append(json.dumps(self.json_value()))
            elif roll < 0.8:
                out.append(self.text(40))
            elif roll < 0.85:
                out.append(bytes(r.getrandbits(8) for _ in range(r.randint(0, 100))))
            elif roll < 0.9:
                out.append("[" * 5000 + "]" * 5000)
            elif roll < 0.95:
                out.append('{"op": "watch", "id": "' + "x" * 70_000 + '"}')
            else:
                out.extend(json.dumps({"op": "unwatch", "id": "x"}) for _ in range(30))
        return out


def send(server: Server, data: bytes, hang_up: bool) -> int | None:
    """Send raw bytes; the status of the answer (``None``: none came, or we hung up)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=READ_TIMEOUT)
    # close with a reset: 10,000 connections per app must not fill the port range with
    # TIME_WAIT (and a reset is one more way for a client to leave)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        with contextlib.suppress(OSError):  # the server answered before the body was sent
            sock.sendall(data)
        if hang_up:
            return None
        answer = b""
        deadline = time.monotonic() + READ_TIMEOUT
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            answer += chunk
        parts = answer.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None
    finally:
        sock.close()


def websocket_session(server: Server, fuzzer: Fuzzer, tally: Tally) -> None:
    r = fuzzer.random
    path = r.choice(["/orders", "/orders", "/orders/o-1", "/orders/" + fuzzer.escaped(), "/x"])
    url = server.base_url.replace("http://", "ws://") + path
    url += "?" + fuzzer.query() if r.random() < 0.7 else ""
    offered = r.choice(
        [
            ["watchroutes.v1"],
            [],
            ["graphql-ws"],
            ["watchroutes.v1", "bearer." + "t" * r.randint(0, 300)],
            ["bearer.x"],
        ]
    )
    protocols = [Subprotocol(p) for p in offered]
    messages = fuzzer.ws_messages()
    origin = r.choice([None, None, "http://evil.example", "null"])
    headers = {"Origin": origin} if origin else {}
    tally.websocket_sessions += 1
    try:
        with ws_connect(
            url,
            subprotocols=protocols or None,
            additional_headers=headers,
            open_timeout=READ_TIMEOUT,
            close_timeout=1,
            max_size=None,
            proxy=None,
            compression=None,
        ) as ws:
            for message in messages:
                tally.websocket_messages += 1
                ws.send(message)
            while True:
                ws.recv(timeout=0.2)
    except InvalidStatus as exc:
        status = exc.response.status_code
        tally.statuses[status] += 1
        if status >= 500:
            tally.server_errors.append(f"WebSocket handshake {status}: {url[:200]}")
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        tally.close_codes[code] += 1
        if code == 1011:
            tally.server_errors.append(f"WebSocket closed 1011: {url[:200]} {messages!r:.300}")
    except (TimeoutError, InvalidHandshake, OSError):
        tally.close_codes[0] += 1  # quiet, or refused before any status


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def run(server: Server, count: int, seed: int, tally: Tally) -> None:
    """At least ``count`` requests (a WebSocket session: its handshake and its messages),
    on threads."""
    plans: list[tuple[bytes, str, bool] | Fuzzer] = []
    fuzzer = Fuzzer(seed)
    planned = 0
    while planned < count:
        if fuzzer.random.random() < 0.05:
            session = Fuzzer(fuzzer.random.getrandbits(32))
            plans.append(session)
            planned += 1
        else:
            plans.append(fuzzer.request())
            planned += 1

    def one(plan: tuple[bytes, str, bool] | Fuzzer) -> Tally:
        mine = Tally()  # (each thread counts apart; the counts are added up at the end)
        if isinstance(plan, Fuzzer):
            websocket_session(server, plan, mine)
            return mine
        data, label, hang_up = plan
        mine.requests += 1
        try:
            status = send(server, data, hang_up)
        except OSError:
            status = None  # refused or reset before an answer
        if status is None:
            mine.no_answer += 1
            return mine
        mine.statuses[status] += 1
        # (501 is RFC 9112's answer to a transfer coding the server does not know: gunicorn's)
        unknown_coding = status == 501 and b"transfer-encoding:" in data.lower()
        if status >= 500 and not unknown_coding:
            mine.server_errors.append(f"{status} for {label}: {data[:300]!r}")
        return mine

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(one, plan) for plan in plans]:
            tally.add(future.result())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("framework", ["starlette", "fastapi", "aiohttp", "flask", "django"])
def test_malformed_requests_get_4xx_and_leave_the_server_well(framework: str) -> None:
    server = Server.start(framework, "--heartbeat", "30", "--seed", "3", "--retention", "1000")
    tally = Tally()
    stopped = False
    try:
        run(server, max(20, REQUESTS // 20), SEED + 1, Tally())  # warm up: imports, caches
        before = rss(server.process.pid)
        started = time.monotonic()
        run(server, REQUESTS, SEED, tally)
        elapsed = time.monotonic() - started
        after = rss(server.process.pid)
        assert server.process.poll() is None, "the server died"
        # it still serves a watch correctly
        with server.sse(params={"sendInitialEvents": "false", "timeoutSeconds": "5"}) as stream:
            stream.until(lambda block: block.id is not None)
            created = server.create(f"after-{framework}")
            (added,) = stream.data_events(1)
        assert added["type"] == "ADDED"
        assert added["object"] == created
        log = server.stop()
        stopped = True
    finally:
        if not stopped:
            server.stop()
    summary = {
        "framework": framework,
        "requests": tally.total,
        "http_requests": tally.requests,
        "websocket_sessions": tally.websocket_sessions,
        "websocket_messages": tally.websocket_messages,
        "seconds": round(elapsed, 1),
        "5xx": len(tally.server_errors),
        "tracebacks": log.count("Traceback"),
        "error_lines": sum(line.startswith("ERROR") for line in log.splitlines()),
        "rss_growth_mb": round((after - before) / 2**20, 1),
        "no_answer": tally.no_answer,
        "statuses": dict(sorted(tally.statuses.items())),
        "close_codes": dict(sorted(tally.close_codes.items())),
    }
    print(json.dumps(summary))
    if REPORT:
        with open(REPORT, "a") as report:
            report.write(json.dumps(summary) + "\n")
    assert not tally.server_errors, "\n".join(tally.server_errors[:20])
    assert "Traceback" not in log, log[-5000:]
    errors = [line for line in log.splitlines() if line.startswith("ERROR")]
    assert not errors, log[-5000:]
    assert after - before < MAX_RSS_GROWTH, summary
    assert tally.total >= REQUESTS
