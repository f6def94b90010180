"""The example app's live page (examples/static/index.html) in a real headless Chromium.

The browser is driven over the Chrome DevTools Protocol (``--remote-debugging-port=0``, the
port read back from ``DevToolsActivePort``) with ``websocket-client``. Everything stays on
127.0.0.1. Without a ``chromium`` binary the tests are skipped, unless
``WATCHROUTES_REQUIRE_BROWSER=1`` is set, where a missing browser fails them.
``WATCHROUTES_SCREENSHOT=PATH`` also saves the screenshot of the live page there.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websocket

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]
BROWSER_MODULE = (ROOT / "watchroutes" / "static" / "watchroutes.js").read_bytes()
SERVE_ON = ("--host", "127.0.0.1", "--port", "0")
WAIT = 10.0  # seconds for any one thing the page should show
T = TypeVar("T")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1000,640",
)

SNAPSHOT = """(() => {
  const text = (id) => {
    const el = document.querySelector(`[data-testid="${id}"]`);
    return el ? el.textContent : null;
  };
  return {
    href: location.href,
    state: text("state"),
    synced: text("synced"),
    count: text("count"),
    error: text("error"),
    rows: [...document.querySelectorAll("tr[data-name]")].map((tr) => {
      const badge = tr.querySelector(".phase");
      return [tr.dataset.name, badge ? badge.textContent : null];
    }),
  };
})()"""


@dataclass(frozen=True)
class Snapshot:
    href: str
    state: str | None
    synced: str | None
    count: str | None
    error: str | None
    rows: dict[str, str | None]


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process started here (and its process group), politely first."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()  # a SIGKILL ends it; on a loaded machine the reaping may take seconds


# --- the example server -------------------------------------------------------------------


@dataclass
class App:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    started: list[App] = []

    def start(*args: str, framework: str = "starlette") -> App:
        log = tmp_path / f"server-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "examples", framework, *SERVE_ON, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        app = App(proc, "", log)
        started.append(app)

        def ready() -> str | None:
            for line in app.output().splitlines():
                if line.startswith("ready http://127.0.0.1:"):
                    return line.split()[1]
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{app.output()}")
            return None

        app.url = wait_until("the server to print its address", ready)
        return app

    yield start
    for app in started:
        stop(app.proc)


# --- the browser --------------------------------------------------------------------------


class CDPError(Exception):
    pass


class Browser:
    """A minimal Chrome DevTools Protocol client on the browser target (flat sessions)."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=WAIT, suppress_origin=True)
        self.ids = itertools.count(1)

    def close(self) -> None:
        self.ws.close()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:  # events are not needed here: skip them
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                break
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def new_tab(self) -> Tab:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Tab(self, str(target), str(session))


class Tab:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session
        self.url = "about:blank"

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.call(method, self.session, **params)

    def open(self, url: str) -> None:
        assert url.startswith("http://127.0.0.1:"), url
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")
        self.url = url

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:60]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def snapshot(self) -> Snapshot:
        raw = self.evaluate(SNAPSHOT)
        return Snapshot(
            href=raw["href"],
            state=raw["state"],
            synced=raw["synced"],
            count=raw["count"],
            error=raw["error"],
            rows=dict(raw["rows"]),
        )

    def wait_for(self, what: str, check: Callable[[Snapshot], bool]) -> Snapshot:
        last: list[Snapshot] = []

        def probe() -> Snapshot | None:
            snap = self.snapshot()
            last[:] = [snap]
            return snap if snap.href == self.url and check(snap) else None

        try:
            return wait_until(what, probe)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page shows {last}") from None

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        self.browser.call("Target.closeTarget", targetId=self.target)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        reason = "no chromium binary on PATH (apt-get install chromium)"
        if os.environ.get("WATCHROUTES_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WATCHROUTES_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="watchroutes-chromium-") as profile:
        log = Path(profile) / "chromium.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            port_file = Path(profile) / "DevToolsActivePort"

            def endpoint() -> str | None:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"chromium exited with {proc.returncode}:\n"
                        + log.read_text(errors="replace")[-3000:]
                    )
                lines = port_file.read_text().split() if port_file.exists() else []
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 else None

            client = Browser(wait_until("chromium's DevTools port", endpoint, timeout=20))
            try:
                yield client
            finally:
                client.close()
        finally:
            stop(proc)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    page = browser.new_tab()
    page.call("Page.enable")
    page.call("Runtime.enable")
    yield page
    page.close()


# --- the scenarios ------------------------------------------------------------------------


def is_live(count: int) -> Callable[[Snapshot], bool]:
    def check(s: Snapshot) -> bool:
        live = s.state == "live" and s.synced == "synced"
        return live and s.count == str(count) == str(len(s.rows))

    return check


FRAMEWORKS = ["starlette", "fastapi", "aiohttp", "flask", "django"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_page_follows_creates_patches_and_deletes(
    tab: Tab, start_app: Callable[..., App], tmp_path: Path, framework: str
) -> None:
    app = start_app("--seed", "3", framework=framework)
    tab.open(app.url + "/")
    snap = tab.wait_for("the seeded orders, live", is_live(3))
    assert snap.rows == {"o-1": "new", "o-2": "new", "o-3": "new"}
    assert snap.error == ""

    with httpx.Client(base_url=app.url, timeout=WAIT) as http:
        # the page's informer is the package's browser module, served by the example
        module = http.get("/static/watchroutes.js")
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.content == BROWSER_MODULE
        page = http.get("/").text
        assert 'import { Informer } from "/static/watchroutes.js";' in page
        assert "new EventSource" not in page  # no stream code of its own
        assert tab.evaluate("typeof EventSource") == "function"  # the informer's mode
        order = {
            "metadata": {"name": "o-9", "labels": {"region": "eu"}},
            "spec": {"item": "book", "qty": 2},
            "status": {"phase": "new"},
        }
        assert http.post("/orders", json=order).status_code == 201
        tab.wait_for("o-9 to appear", lambda s: s.rows.get("o-9") == "new")

        patched = http.patch(
            "/orders/o-1",
            content=json.dumps({"status": {"phase": "paid"}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched.status_code == 200, patched.text
        tab.wait_for("o-1 to be paid", lambda s: s.rows.get("o-1") == "paid")

        assert http.delete("/orders/o-2").status_code == 200
        tab.wait_for("o-2 to disappear", lambda s: "o-2" not in s.rows)

    snap = tab.wait_for("the final table", is_live(3))
    assert snap.rows == {"o-1": "paid", "o-3": "new", "o-9": "new"}
    assert list(snap.rows) == ["o-1", "o-3", "o-9"]  # in name order
    cells = tab.evaluate(
        "[...document.querySelectorAll('tr[data-name=\"o-9\"] td')].map(td => td.textContent)"
    )
    assert cells[:5] == ["o-9", "eu", "book", "2", "new"]

    png = tab.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "live-page.png").write_bytes(png)
    if target := os.environ.get("WATCHROUTES_SCREENSHOT"):
        Path(target).write_bytes(png)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_token_in_the_query_is_live_and_missing_token_is_closed(
    tab: Tab, start_app: Callable[..., App], framework: str
) -> None:
    app = start_app("--seed", "2", "--token", "s3cret", framework=framework)

    tab.open(app.url + "/?access_token=s3cret")
    tab.wait_for("the page to go live with the token", is_live(2))
    # The page's own controls send the token as a bearer header.
    tab.evaluate(
        """(() => {
          const form = document.getElementById("create");
          const field = (name) => form.elements.namedItem(name);
          field("name").value = "o-7";
          field("region").value = "us";
          field("item").value = "mug";
          field("qty").value = "3";
          form.requestSubmit();
        })()"""
    )
    tab.wait_for("o-7 created from the form", lambda s: s.rows.get("o-7") == "new")
    tab.evaluate("document.querySelector('tr[data-name=\"o-7\"] button').click()")
    tab.wait_for("o-7 advanced by its button", lambda s: s.rows.get("o-7") == "paid")
    tab.evaluate("[...document.querySelectorAll('tr[data-name=\"o-1\"] button')].pop().click()")
    snap = tab.wait_for("o-1 deleted by its button", lambda s: "o-1" not in s.rows)
    assert snap.rows == {"o-2": "new", "o-7": "paid"}
    assert snap.error == ""

    tab.open(app.url + "/")
    snap = tab.wait_for("the page to give up without a token", lambda s: s.state == "closed")
    assert snap.rows == {}
    assert snap.synced == "loading"
    assert "access_token" in (snap.error or "")
    assert tab.evaluate("document.getElementById('reconnect').hidden") is False

    tab.open(app.url + "/?access_token=wrong")
    tab.wait_for("the page to give up with a wrong token", lambda s: s.state == "closed")


def test_server_stop_is_shown(tab: Tab, start_app: Callable[..., App]) -> None:
    app = start_app("--seed", "1")
    tab.open(app.url + "/")
    tab.wait_for("the page to go live", is_live(1))

    app.proc.send_signal(signal.SIGINT)
    snap = tab.wait_for(
        "the page to notice the server stopped", lambda s: s.state in ("reconnecting", "closed")
    )
    assert snap.rows == {"o-1": "new"}  # the last known table stays on screen
    # uvicorn re-raises the SIGINT after its graceful shutdown: 0 or "killed by SIGINT".
    assert app.proc.wait(WAIT) in (0, -signal.SIGINT), app.output()
    # The server is gone: the EventSource keeps retrying (connection refused) in the background.
    time.sleep(2.5)  # past the stream's "retry: 2000"
    assert tab.snapshot().state in ("reconnecting", "closed")
