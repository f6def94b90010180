"""Writers and watchers: threads that talk to random nodes of a :class:`Cluster`.

A writer owns its keys (no two writers touch one object), so the object before each write is
known; after a write whose outcome is unknown it never touches that key again. A watcher of
one transport reads its stream, records what it saw (:class:`Rec`) and, when the stream ends
or breaks, resumes on a random node from the last rv it saw; after a 410 or RESET it starts
over. Every request and every read is bounded by a timeout.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Final

import httpx
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from watchroutes.testing import SSEMessage, SSEParser

from ..conformance._support import INITIAL_EVENTS_END, order
from ._cluster import Cluster
from ._oracle import History, ListCheck, Obj, Rec, Write

TRANSPORTS: Final = ("sse", "jsonlines", "longpoll", "websocket")
#: Any single read; with a 1 s heartbeat a healthy stream is never silent this long.
READ_TIMEOUT: Final = 3.0
#: Longer than a node's own wait for its follower (3 s), so a write's answer is always read.
WRITE_TIMEOUT: Final = 5.0
LONGPOLL_SECONDS: Final = 1
PROTOCOL: Final = Subprotocol("watchroutes.v1")
_NETWORK = (httpx.HTTPError, WebSocketException, OSError, TimeoutError, json.JSONDecodeError)


class _End(Exception):
    """This connection is over (the watcher resumes)."""


class Writer:
    """Writes on random nodes: creates, replaces, merge patches and deletes of its own keys."""

    def __init__(self, name: str, cluster: Cluster, history: History) -> None:
        self.name = name
        self.cluster = cluster
        self.history = history
        self.owned: dict[str, Obj] = {}
        self.epoch = 0
        self.counter = 0
        self.http = httpx.Client(timeout=WRITE_TIMEOUT, trust_env=False)
        self.lists: list[ListCheck] = []
        self.lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def forget(self) -> None:
        """The log started a new epoch: every owned object is gone."""
        self.owned.clear()

    def run(self, rng: random.Random, count: int, stop: threading.Event) -> None:
        for _ in range(count):
            if stop.is_set():
                return
            url = self.cluster.pick(rng, paused_chance=0.03)
            if url is None:
                time.sleep(0.02)
                continue
            self.step(rng, url)
            if rng.random() < 0.15:
                url = self.cluster.pick(rng, paused_chance=0.05)
                if url is not None:
                    self.list_on(url)

    def step(self, rng: random.Random, url: str) -> Write:
        live = len(self.owned)
        roll = rng.random()
        if live < 2 or (live < 10 and roll < 0.3):
            op = "create"
        elif live > 12 or roll < 0.5:
            op = "delete"
        else:
            op = "put" if roll < 0.75 else "patch"
        self.counter += 1
        token = f"{self.name}.{self.counter}"
        region = rng.choice(("eu", "us"))
        if op == "create":
            key = f"{self.name}-{self.counter}"
            return self.write(url, "create", key, token, None, order(key, region))
        key = rng.choice(sorted(self.owned))
        prev = self.owned[key]
        if op == "delete":
            return self.write(url, "delete", key, None, prev, None)
        if op == "put":
            body = order(key, region, qty=rng.randint(1, 9))
            return self.write(url, "put", key, token, prev, body)
        patch: Obj = {"spec": {"w": token}}
        if rng.random() < 0.5:
            patch["metadata"] = {"labels": {"region": region}}
        return self.write(url, "patch", key, token, prev, patch)

    def write(
        self, url: str, op: str, key: str, token: str | None, prev: Obj | None, body: Obj | None
    ) -> Write:
        if body is not None and op != "patch":
            body["spec"]["w"] = token
        write = Write(op, key, token, prev, time.monotonic(), url)
        self.history.begin(write)
        method = {"create": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE"}[op]
        path = "/orders" if op == "create" else f"/orders/{key}"
        headers = {"content-type": "application/merge-patch+json"} if op == "patch" else {}
        content = None if body is None else json.dumps(body)
        try:
            response = self.http.request(method, url + path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            self.owned.pop(key, None)
            self.history.maybe(write, type(exc).__name__)
            return write
        answer = f"{response.status_code} {response.text[:200]}"
        if response.status_code >= 500:
            self.owned.pop(key, None)
            self.history.maybe(write, answer)
            return write
        if response.status_code >= 300:
            self.owned.pop(key, None)  # refused: the outcome is known, but stop writing it
            self.history.refuse(write, answer)
            return write
        stored = response.json()
        if stored is None:  # a write answered 200 without saying what it stored
            self.owned.pop(key, None)
            self.history.maybe(write, answer)
            self.history.tally.add("null_deletes", detail=f"{op} {key} on {url}: {answer}")
            return write
        self.history.ack(write, stored)
        if op == "delete":
            self.owned.pop(key, None)
            if stored != _stamped(prev, stored):
                self.history.tally.add(
                    "wrong_events", detail=f"DELETE {key} answered {stored}, not the object"
                )
        else:
            self.owned[key] = stored
        return write

    def list_on(self, url: str) -> None:
        acked = self.history.max_acked
        sent = time.monotonic()
        try:
            response = self.http.get(url + "/orders")
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return  # 503 while the log is away, 504 while this node catches up
        body = response.json()
        rv = int(body["metadata"]["resourceVersion"])
        with self.lock:
            self.lists.append(ListCheck(url, sent, acked, rv, body["items"]))

    def take_lists(self) -> list[ListCheck]:
        with self.lock:
            out, self.lists = self.lists, []
        return out


def _stamped(prev: Obj | None, stored: Obj) -> Obj | None:
    if prev is None:
        return None
    out: Obj = json.loads(json.dumps(prev))
    out["metadata"]["resourceVersion"] = stored.get("metadata", {}).get("resourceVersion")
    return out


class Watcher(threading.Thread):
    """One client of one transport, resuming on random nodes until stopped."""

    def __init__(
        self,
        name: str,
        transport: str,
        selector: str | None,
        cluster: Cluster,
        seed: str,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"watcher-{name}", daemon=True)
        self.label = name
        self.transport = transport
        self.selector = selector
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.halt = stop
        self.records: list[Rec] = []
        self.lock = threading.Lock()
        self.cursor: int | None = None
        self.cursor_seen = 0.0  # when the cursor was received
        self.live = False
        self.connections = 0
        # faults, set by the schedule
        self.drop_after: int | None = None  # start over, drop after this many initial events
        self.restart = False
        self.stall_until = 0.0
        self.slow_until = 0.0
        self._initial_seen = 0
        self.http = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT, connect=1.0), trust_env=False)

    # -- the record ----------------------------------------------------------------------------

    def _rec(self, rec: Rec) -> None:
        with self.lock:
            self.records.append(rec)

    def take(self) -> list[Rec]:
        with self.lock:
            out, self.records = self.records, []
        return out

    def caught_up(self, head: int) -> bool:
        return self.live and self.cursor is not None and self.cursor >= head

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                url = self.cluster.pick(self.rng)
                if url is None:
                    time.sleep(0.05)
                    continue
                if self.drop_after is not None or self.restart:
                    self.restart = False
                    self._drop_state()
                try:
                    getattr(self, "_" + self.transport)(url)
                except _End:
                    pass
                except _NETWORK as exc:
                    self._rec(Rec("cut", time.monotonic(), note=type(exc).__name__))
                except Exception as exc:  # a bug of the watcher itself: reported, never silent
                    self._rec(Rec("crash", time.monotonic(), note=repr(exc)[:300]))
                    time.sleep(0.2)
                time.sleep(self.rng.uniform(0.0, 0.05))
        finally:
            self.http.close()

    def _drop_state(self) -> None:
        self.cursor = None
        self.live = False

    def _open(self) -> None:
        self.connections += 1
        self._initial_seen = 0
        self._rec(Rec("open", time.monotonic(), self.cursor))
        self.live = self.cursor is not None  # a resume has no initial events

    def _pace(self) -> None:
        """Stalled or slow reading, as the schedule asks; bounded."""
        now = time.monotonic()
        if now < self.stall_until:
            time.sleep(min(self.stall_until - now, 5.0))
        elif now < self.slow_until:
            time.sleep(0.03)
        if self.halt.is_set() or self.restart:
            raise _End

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self.selector} if self.selector else {}

    # -- what a stream says --------------------------------------------------------------------

    def _expired(self, note: str) -> None:
        rv = self.cursor
        if rv is not None:
            self._rec(Rec("expired", time.monotonic(), rv, note=note, since=self.cursor_seen))
        else:
            self._rec(Rec("open", time.monotonic(), None))  # a fresh start expired: start over
        self.cursor = None
        self.live = False
        self._initial_seen = 0

    def _event(self, etype: str, rv: int, obj: Obj) -> None:
        key = str(obj["metadata"]["name"])
        self._rec(Rec("event", time.monotonic(), rv, etype, key, obj))
        self.cursor, self.cursor_seen = rv, time.monotonic()
        if not self.live:
            self._initial_seen += 1
            if self.drop_after is not None and self._initial_seen >= self.drop_after:
                self.drop_after = None
                raise _End  # a drop inside the initial events: resume from this rv

    def _bookmark(self, rv: int, initial_end: bool) -> None:
        self._rec(Rec("bookmark", time.monotonic(), rv, note="initial-end" if initial_end else ""))
        self.cursor, self.cursor_seen = rv, time.monotonic()
        if initial_end:
            self.live = True
            self.drop_after = None

    def _envelope(self, env: Any) -> None:
        """A JSON-lines, WebSocket or SSE data envelope; raises :class:`_End` at the end."""
        etype = env["type"]
        obj = env.get("object")
        if etype == "BOOKMARK":
            annotations = obj.get("metadata", {}).get("annotations", {})
            initial_end = annotations.get(INITIAL_EVENTS_END) == "true"
            self._bookmark(int(obj["metadata"]["resourceVersion"]), initial_end)
        elif etype == "ERROR":
            if obj.get("code") == 410:
                self._expired(f"{self.transport} 410 {obj.get('message')}")
            else:
                self._rec(Rec("error", time.monotonic(), note=str(obj.get("message"))[:200]))
            raise _End
        elif etype == "RESET":
            self._expired("sse RESET")
        else:
            self._event(etype, int(env["resourceVersion"]), obj)

    def _status(self, response: httpx.Response) -> None:
        self._rec(Rec("error", time.monotonic(), note=f"HTTP {response.status_code}"))

    # -- transports ----------------------------------------------------------------------------

    def _sse(self, url: str) -> None:
        headers = {"accept": "text/event-stream"}
        if self.cursor is not None:
            headers["last-event-id"] = str(self.cursor)
        self._open()
        with self.http.stream("GET", url + "/orders", params=self._params(), headers=headers) as r:
            if r.status_code != 200:
                self._status(r)
                return
            parser = SSEParser()
            for chunk in r.iter_raw():
                for block in parser.feed(chunk):
                    self._sse_block(block)
                self._pace()

    def _sse_block(self, block: SSEMessage) -> None:
        if block.data is None:
            if block.id:
                self._bookmark(int(block.id), False)
            return
        env = json.loads(block.data)
        if env["type"] in ("ADDED", "MODIFIED", "DELETED") and block.id != env["resourceVersion"]:
            self._rec(Rec("crash", time.monotonic(), note=f"SSE id {block.id} for {env}"[:300]))
        self._envelope(env)

    def _jsonlines(self, url: str) -> None:
        params = {"watch": "true", "allowWatchBookmarks": "true", **self._params()}
        if self.cursor is not None:
            params["resourceVersion"] = str(self.cursor)
        self._open()
        with self.http.stream("GET", url + "/orders", params=params) as r:
            if r.status_code != 200:
                self._status(r)
                return
            pending = b""
            for chunk in r.iter_raw():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._envelope(json.loads(line))
                self._pace()

    def _longpoll(self, url: str) -> None:
        params = {
            "watch": "true",
            "feed": "longpoll",
            "timeoutSeconds": str(LONGPOLL_SECONDS),
            **self._params(),
        }
        initial = self.cursor is None
        if not initial:
            params["resourceVersion"] = str(self.cursor)
        self._open()
        response = self.http.get(url + "/orders", params=params)
        if response.status_code == 410:
            self._expired(f"longpoll 410 {response.text[:120]}")
            return
        if response.status_code != 200:
            self._status(response)
            return
        body = response.json()
        for env in body["events"]:
            self._event(env["type"], int(env["resourceVersion"]), env["object"])
            self._pace()
        self._bookmark(int(body["resourceVersion"]), initial)

    def _websocket(self, url: str) -> None:
        query = "allowWatchBookmarks=true"
        if self.selector:
            query += "&labelSelector=" + self.selector.replace("=", "%3D")
        if self.cursor is not None:
            query += f"&resourceVersion={self.cursor}"
        target = url.replace("http://", "ws://") + "/orders?" + query
        self._open()
        with connect(
            target, subprotocols=[PROTOCOL], open_timeout=READ_TIMEOUT, close_timeout=1
        ) as conn:
            while True:
                message = conn.recv(timeout=READ_TIMEOUT)
                self._envelope(json.loads(message))
                self._pace()
