"""The browser helper (``watchroutes/static/watchroutes.js``) in headless Chromium, against
the orders example app serving it from a plain route (``browser_app.py``): the informer's
Map follows creates, patches and deletes, survives a server restart (RESET, tombstones) in
each mode, never dispatches an id-only bookmark, and shows signed-out / token refresh."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx
import pytest

from .._services import free_port
from ..conformance._support import REPO, _wait_ready, order
from ..examples.test_live_page import Tab, wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

SNAPSHOT = """JSON.stringify(window.informer ? {
  state: informer.state,
  synced: informer.synced,
  keys: [...informer.store.keys()].sort(),
  phases: Object.fromEntries([...informer.store].map(([k, o]) => [k, o.status.phase])),
  stats: informer.stats,
  lastId: informer._lastId,
  log,
} : null)"""


class BrowserApp:
    """``python -m tests.client.browser_app`` on a fixed port (restarts keep the URL)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = ("--host", "127.0.0.1", "--port", str(self.port), "--heartbeat", "1", *args)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=5, trust_env=False)
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.start()

    def start(self, *extra: str) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        command = [sys.executable, "-m", "tests.client.browser_app", *self.args, *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=self.stderr, env=env
        )
        try:
            _wait_ready(self.process, 20)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            assert process.stdout is not None
            process.stdout.close()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None

    def restart(self, *extra: str) -> None:
        self.stop()
        self.start(*extra)

    def names(self, **headers: str) -> list[str]:
        response = self.http.get("/orders", headers=headers)
        assert response.status_code == 200, response.text
        return sorted(item["metadata"]["name"] for item in response.json()["items"])


@pytest.fixture
def apps() -> Iterator[Callable[..., BrowserApp]]:
    started: list[BrowserApp] = []

    def start(*args: str) -> BrowserApp:
        app = BrowserApp(*args)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()
        app.http.close()


def snapshot(tab: Tab) -> dict[str, Any] | None:
    raw = tab.evaluate(SNAPSHOT)
    value = None if raw is None else json.loads(raw)
    return None if value is None else dict(value)


def wait_for(tab: Tab, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    last: list[Any] = []

    def probe() -> dict[str, Any] | None:
        snap = snapshot(tab)
        last[:] = [snap]
        return snap if snap is not None and check(snap) else None

    try:
        return wait_until(what, probe)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page has {last}") from None


@pytest.mark.parametrize("mode", ["eventsource", "fetch", "longpoll"])
def test_the_map_follows_writes_and_survives_a_restart(
    tab: Tab, apps: Callable[..., BrowserApp], mode: str
) -> None:
    app = apps("--seed", "3")
    tab.open(f"{app.url}/client.html?mode={mode}")
    snap = wait_for(tab, "the initial state", lambda s: s["synced"] and s["state"] == "live")
    assert snap["keys"] == app.names() == ["o-1", "o-2", "o-3"]

    assert app.http.post("/orders", json=order("o-9")).status_code == 201
    patched = app.http.patch(
        "/orders/o-1",
        content=json.dumps({"status": {"phase": "paid"}}),
        headers={"content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200
    assert app.http.delete("/orders/o-2").status_code == 200
    snap = wait_for(tab, "the writes", lambda s: s["keys"] == ["o-1", "o-3", "o-9"])
    wait_for(tab, "o-1 paid", lambda s: s["phases"]["o-1"] == "paid")

    # A new server process on the same port: a new in-memory log, where the page's last id
    # is unknown. The page gets the new state (RESET, or 410 and a relist) and deletes the rest.
    app.restart("--seed", "2")
    expected = app.names()
    assert expected == ["o-1", "o-2"]
    snap = wait_for(
        tab,
        "the state of the new server",
        lambda s: s["keys"] == expected and s["state"] == "live" and s["stats"]["relists"] >= 1,
    )
    assert snap["phases"]["o-1"] == "new"  # the new server's o-1, not the paid one
    tombstones = [c for c in snap["log"]["changes"] if c[3]]
    assert sorted(c[1] for c in tombstones) == ["o-3", "o-9"]
    assert "reconnecting" in snap["log"]["states"]
    assert snap["log"]["states"][-1] == "live"
    # Every (key, rv) was reported once.
    versions = [(c[1], c[2]) for c in snap["log"]["changes"] if not c[3]]
    assert len(versions) == len(set(versions)), versions
    assert app.http.delete("/orders/o-2").status_code == 200
    wait_for(tab, "a live delete after the restart", lambda s: s["keys"] == ["o-1"])


def test_id_only_bookmarks_are_never_dispatched(tab: Tab, apps: Callable[..., BrowserApp]) -> None:
    app = apps("--seed", "0")
    tab.open(f"{app.url}/client.html?mode=fetch&labelSelector=region%3Dus")
    wait_for(tab, "the empty initial state", lambda s: s["synced"] and s["state"] == "live")
    # Changes this watcher does not match: the server moves its id with id-only blocks.
    for i in range(3):
        assert app.http.post("/orders", json=order(f"eu-{i}", "eu")).status_code == 201
    head = app.http.get("/orders").json()["metadata"]["resourceVersion"]
    snap = wait_for(tab, "an id-only bookmark at the head", lambda s: s["lastId"] == head)
    assert snap["stats"]["bookmarks"] >= 2  # the initial-events end, and the id-only block
    assert snap["log"]["events"] == ["BOOKMARK"]  # only the initial-events end was dispatched
    assert snap["keys"] == []
    assert app.http.post("/orders", json=order("us-1", "us")).status_code == 201
    snap = wait_for(tab, "a matching order", lambda s: s["keys"] == ["us-1"])
    assert snap["log"]["events"] == ["BOOKMARK", "ADDED"]


@pytest.mark.parametrize("mode", ["eventsource", "fetch"])
def test_401_signs_out_unless_the_token_callback_helps(
    tab: Tab, apps: Callable[..., BrowserApp], mode: str
) -> None:
    app = apps("--seed", "1", "--token", "s3cret")
    tab.open(f"{app.url}/client.html?mode={mode}")
    snap = wait_for(tab, "signed-out", lambda s: s["state"] == "signed-out")
    assert snap["log"]["states"][-1] == "signed-out:401"
    assert not snap["synced"]

    tab.open(f"{app.url}/client.html?mode={mode}&token=old&refresh=s3cret")
    snap = wait_for(tab, "live after a refresh", lambda s: s["state"] == "live")
    assert snap["keys"] == ["o-1"]
    assert "signed-out" not in snap["log"]["states"]


class Proxy:
    """A TCP forwarder to a server: ``cut()`` closes every connection through it (a dropped
    connection, as a network failure or a load balancer would do it); ``freeze()`` makes them
    silently lose everything (a half-open connection: nothing arrives, nothing fails)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.frozen: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            client.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(source, target), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if source not in self.frozen:
                    target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        with self.lock:
            self.frozen.update(self.sockets)

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()
        for thread in self.threads:
            thread.join(5)


@pytest.mark.parametrize("mode", ["eventsource", "fetch"])
def test_a_dropped_connection_resumes_without_a_relist(
    tab: Tab, apps: Callable[..., BrowserApp], mode: str
) -> None:
    app = apps("--seed", "2")
    proxy = Proxy(app.port)
    try:
        tab.open(f"{proxy.url}/client.html?mode={mode}")
        wait_for(tab, "live", lambda s: s["synced"] and s["state"] == "live")
        proxy.cut()
        assert app.http.post("/orders", json=order("o-5")).status_code == 201
        assert app.http.delete("/orders/o-1").status_code == 200
        snap = wait_for(
            tab,
            "the missed changes",
            lambda s: s["keys"] == ["o-2", "o-5"] and s["state"] == "live",
        )
    finally:
        proxy.close()
    assert "reconnecting" in snap["log"]["states"]
    assert snap["stats"]["relists"] == 0  # resumed from its id: nothing was listed again
    changes = [c[:2] for c in snap["log"]["changes"][2:]]
    assert changes == [["ADDED", "o-5"], ["DELETED", "o-1"]]  # real deletes, no tombstones


def test_a_silent_connection_is_noticed_in_fetch_mode(
    tab: Tab, apps: Callable[..., BrowserApp]
) -> None:
    app = apps("--seed", "2")
    proxy = Proxy(app.port)
    try:
        tab.open(f"{proxy.url}/client.html?mode=fetch&readTimeout=1500")
        wait_for(tab, "live", lambda s: s["synced"] and s["state"] == "live")
        proxy.freeze()  # heartbeats (every second) stop arriving; the socket stays open
        assert app.http.post("/orders", json=order("o-5")).status_code == 201
        snap = wait_for(tab, "o-5", lambda s: s["keys"] == ["o-1", "o-2", "o-5"])
    finally:
        proxy.close()
    assert "reconnecting" in snap["log"]["states"]
    assert snap["stats"]["relists"] == 0
