"""Plain servers end open watches on their exit signal (protocol.md §5.6), with the hub entered in
the app's lifespan and nothing else: ``uvicorn mod:app``, ``fastapi run``, ``hypercorn
mod:app``, each a real process on 127.0.0.1 (``plain_server_app``). Also: the hub's chaining
of the process's signal handlers, in this process, and the warning a hub on the in-memory log
gives in a worker of a multi-process server.

Each server test opens an SSE, a JSON-lines and a WebSocket watch of ``team=a``, writes one
``team=a`` order (seen by all three) and one ``team=b`` order (seen by none, so each watch is
behind the newest version), signals the server and checks that it exits within
``EXIT_TIMEOUT`` and that every stream ended with a final bookmark at the newest version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from watchroutes import Hub
from watchroutes._runtime import lifecycle, signals
from watchroutes.backends.memory import MemoryLog
from watchroutes.testing import SSEMessage, SSEParser

REPO: Final = Path(__file__).resolve().parents[2]
APP: Final = "tests.runtime.plain_server_app"
READY_TIMEOUT: Final = 20.0
#: The graceful period: a server must be gone this long after its exit signal.
EXIT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 5.0
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"
SELECTOR: Final = "labelSelector=team%3Da"
WARNING_TEXT: Final = "each worker has its own log"
#: How each server says where it listens (uvicorn, fastapi-cli and hypercorn alike).
LISTENING: Final = re.compile(r"http://127\.0\.0\.1:(\d+)")


def _command(server: str) -> list[str]:
    """The command line that runs ``server`` on 127.0.0.1, on a port of its choice (0)."""
    python = [sys.executable, "-m"]
    port = ["--host", "127.0.0.1", "--port", "0"]
    if server == "uvicorn":
        return [*python, "uvicorn", f"{APP}:app", *port]
    if server == "fastapi":
        path = "tests/runtime/plain_server_app.py"
        return [*python, "fastapi", "run", path, "--app", "fastapi_app", *port]
    if server == "uvicorn-Server":  # watchroutes' Server and the lifespan both enter the hub
        script = (
            "import contextlib, uvicorn\n"
            f"from {APP} import app, hub\n"
            "from watchroutes.adapters.uvicorn import Server\n"
            "config = uvicorn.Config(app, host='127.0.0.1', port=0)\n"
            "with contextlib.suppress(KeyboardInterrupt):\n"
            "    Server(config, hubs=[hub]).run()\n"
        )
        return [sys.executable, "-c", script]
    bind = ["--bind", "127.0.0.1:0"]
    if server == "hypercorn":  # a supervisor and one worker process (hypercorn's default)
        return [*python, "hypercorn", f"{APP}:app", *bind]
    assert server == "hypercorn-w0"  # the server in this process: asyncio's signal handlers
    return [*python, "hypercorn", f"{APP}:app", "--workers", "0", *bind]


class Process:
    """A server in its own session (so that a signal can go to its whole group, as Ctrl-C in
    a terminal does), its output in a temporary file; killed, group and all, at the end."""

    def __init__(self, command: list[str]) -> None:
        self.port = 0
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "NO_COLOR": "1"}
        env.pop("WEB_CONCURRENCY", None)
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        """Wait for the server's "running on http://127.0.0.1:PORT" line, then for an answer."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited at start:\n{self.output()}")
            if not self.port:
                ports = {int(p) for p in LISTENING.findall(self.output())} - {0}
                self.port = ports.pop() if ports else 0
            if not self.port:
                time.sleep(0.05)
                continue
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/orders", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"the server did not start in {READY_TIMEOUT} s:\n{self.output()}")

    def signal(self, signum: int, *, group: bool) -> None:
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float) -> float:
        """Seconds the process took to exit (fails past ``timeout``)."""
        start = time.monotonic()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server still runs {timeout} s after its signal:\n{self.output()}")
        return time.monotonic() - start

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def running(command: list[str]) -> Iterator[Process]:
    process = Process(command)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


class Stream:
    """An HTTP watch read incrementally, each read bounded by ``READ_TIMEOUT``."""

    def __init__(self, client: httpx.Client, url: str, headers: dict[str, str]) -> None:
        self._cm = client.stream("GET", url, headers=headers)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200
        self._chunks = self.response.iter_raw()
        self.ended = False

    def chunk(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self.ended = True
            return b""

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class SSE(Stream):
    def __init__(self, client: httpx.Client, url: str) -> None:
        super().__init__(client, url, {"accept": "text/event-stream"})
        self._parser = SSEParser()
        self.blocks: list[SSEMessage] = []

    def until(self, done: Callable[[SSEMessage], bool]) -> None:
        while not self.ended:
            fresh = self._parser.feed(self.chunk())
            self.blocks += fresh
            if any(done(block) for block in fresh):
                return
        pytest.fail(f"the SSE stream ended early: {self.blocks}")

    def rest(self) -> list[SSEMessage]:
        start = len(self.blocks)
        while not self.ended:
            self.blocks += self._parser.feed(self.chunk())
        return self.blocks[start:]


class Lines(Stream):
    def __init__(self, client: httpx.Client, url: str) -> None:
        super().__init__(client, url, {})
        self._buffer = b""
        self.lines: list[dict[str, Any]] = []

    def _take(self) -> list[dict[str, Any]]:
        *complete, self._buffer = (self._buffer + self.chunk()).split(b"\n")
        fresh = [json.loads(line) for line in complete]
        self.lines += fresh
        return fresh

    def until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        while not self.ended:
            if any(done(line) for line in self._take()):
                return
        pytest.fail(f"the JSON-lines stream ended early: {self.lines}")

    def rest(self) -> list[dict[str, Any]]:
        start = len(self.lines)
        while not self.ended:
            self._take()
        assert self._buffer == b"", "the stream ended in the middle of a line"
        return self.lines[start:]


def _initial_end(envelope: dict[str, Any]) -> bool:
    annotations = envelope["object"]["metadata"].get("annotations") or {}
    return envelope["type"] == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END) == "true"


def _sse_envelope(block: SSEMessage) -> dict[str, Any] | None:
    return None if block.data is None else dict(json.loads(block.data))


def _ws_until(ws: ClientConnection, done: Callable[[dict[str, Any]], bool]) -> None:
    while True:
        message = json.loads(ws.recv(READ_TIMEOUT))
        if done(message):
            return


def _ws_rest(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    messages: list[dict[str, Any]] = []
    try:
        while True:
            messages.append(json.loads(ws.recv(READ_TIMEOUT)))
    except ConnectionClosed as closed:
        return messages, None if closed.rcvd is None else closed.rcvd.code


def _create(base: str, name: str, team: str) -> str:
    order = {"metadata": {"name": name, "labels": {"team": team}}}
    answer = httpx.post(f"{base}/orders", json=order, timeout=READ_TIMEOUT)
    assert answer.status_code == 201, answer.text
    rv: str = answer.json()["metadata"]["resourceVersion"]
    return rv


def _ends_watches(server: str, signum: int, *, group: bool) -> float:
    """Run ``server`` with three watches open, signal it; the seconds it took to exit."""
    with (
        running(_command(server)) as process,
        httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT)) as client,
    ):
        base = process.base
        sse = SSE(client, f"{base}/orders?{SELECTOR}")
        lines = Lines(client, f"{base}/orders?watch=true&allowWatchBookmarks=true&{SELECTOR}")
        ws_url = f"ws://127.0.0.1:{process.port}/orders?allowWatchBookmarks=true&{SELECTOR}"
        with connect(ws_url, open_timeout=READ_TIMEOUT, close_timeout=1) as ws:
            sse.until(lambda b: (e := _sse_envelope(b)) is not None and _initial_end(e))
            lines.until(_initial_end)
            _ws_until(ws, _initial_end)

            seen = _create(base, "a-1", "a")
            sse.until(lambda b: b.id == seen)
            lines.until(lambda e: e["resourceVersion"] == seen)
            _ws_until(ws, lambda m: m.get("resourceVersion") == seen)
            newest = _create(base, "b-1", "b")  # matches no watch: each is now behind

            process.signal(signum, group=group)
            signalled = time.monotonic()
            blocks = sse.rest()
            tail = lines.rest()
            messages, code = _ws_rest(ws)
        took = process.wait_exit(EXIT_TIMEOUT - (time.monotonic() - signalled))
        output = process.output()
        sse.close()
        lines.close()

    assert blocks[-1] == SSEMessage(id=newest), blocks  # an id-only block: the final bookmark
    assert all(b.data is None for b in blocks), blocks
    assert [e["type"] for e in tail] == ["BOOKMARK"], tail
    assert tail[-1]["resourceVersion"] == newest
    assert [(m["type"], m["resourceVersion"]) for m in messages] == [("BOOKMARK", newest)]
    assert code == 1012, code  # shutdown: reconnect elsewhere with the last version
    assert "Traceback" not in output, output
    return took


@pytest.mark.network
@pytest.mark.parametrize(
    ("server", "signum", "group"),
    [
        pytest.param("uvicorn", signal.SIGINT, True, id="uvicorn-ctrl-c"),
        pytest.param("uvicorn", signal.SIGTERM, False, id="uvicorn-sigterm"),
        pytest.param("uvicorn-Server", signal.SIGINT, True, id="uvicorn-Server-and-lifespan"),
        pytest.param("fastapi", signal.SIGINT, True, id="fastapi-run-ctrl-c"),
        pytest.param("hypercorn", signal.SIGINT, True, id="hypercorn-ctrl-c"),
        pytest.param("hypercorn", signal.SIGTERM, False, id="hypercorn-sigterm-supervisor"),
        pytest.param("hypercorn-w0", signal.SIGINT, False, id="hypercorn-in-process"),
    ],
)
def test_plain_server_ends_watches_on_exit_signal(server: str, signum: int, group: bool) -> None:
    took = _ends_watches(server, signum, group=group)
    assert took < EXIT_TIMEOUT


# -- one log per worker ---------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize(("server", "workers"), [("uvicorn", 2), ("uvicorn", 1), ("hypercorn", 2)])
def test_multi_worker_warning(server: str, workers: int) -> None:
    command = [*_command(server), "--workers", str(workers)]
    with running(command) as process:
        deadline = time.monotonic() + READY_TIMEOUT
        while workers > 1 and process.output().count(WARNING_TEXT) < workers:
            assert time.monotonic() < deadline, process.output()
            time.sleep(0.05)
        process.signal(signal.SIGINT, group=True)
        process.wait_exit(EXIT_TIMEOUT)
        output = process.output()
    # One warning per worker process, naming the shared backends; none with one worker.
    assert output.count(WARNING_TEXT) == (workers if workers > 1 else 0), output
    if workers > 1:
        assert 'Hub(backend="redis://..."' in output
        assert f"{server} --workers {workers}" in output


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["/venv/bin/gunicorn", "-w", "4", "app:app"], {}, "gunicorn --workers 4"),
        (["/venv/bin/gunicorn", "--workers=3", "app:app"], {}, "gunicorn --workers 3"),
        (["/venv/bin/gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "-w 2"}, "gunicorn --workers 2"),
        (["/venv/bin/gunicorn", "app:app"], {"WEB_CONCURRENCY": "5"}, "gunicorn --workers 5"),
        (["/venv/bin/gunicorn", "-w", "1", "app:app"], {}, None),
        (["/venv/bin/uvicorn", "app:app", "--workers", "2", "--reload"], {}, None),
    ],
)
def test_worker_server_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")  # as gunicorn's arbiter sets it
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(lifecycle, "_parent_command_line", list)
    monkeypatch.setattr(lifecycle, "_siblings", lambda: 0)
    assert lifecycle.worker_server() == expected


def test_no_worker_in_a_plain_process() -> None:
    assert lifecycle.worker_server() is None


# -- chaining in this process ---------------------------------------------------------------------


def test_python_handler_chained_and_restored() -> None:
    calls: list[int] = []

    def previous(signum: int, frame: object) -> None:
        calls.append(signum)

    async def main() -> None:
        hub = Hub()
        async with hub:
            chained = signal.getsignal(signal.SIGTERM)
            assert chained is not previous
            signal.raise_signal(signal.SIGTERM)
            assert calls == [signal.SIGTERM]  # the server's handler ran, at once
            await anyio.sleep(0.01)
            assert hub.closing  # the hub's shutdown began, on the loop
        assert signal.getsignal(signal.SIGTERM) is previous

    original = signal.signal(signal.SIGTERM, previous)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_handler_replaced_since_is_left_alone() -> None:
    def previous(signum: int, frame: object) -> None: ...

    def later(signum: int, frame: object) -> None: ...

    async def main() -> None:
        async with Hub():
            signal.signal(signal.SIGTERM, later)
        assert signal.getsignal(signal.SIGTERM) is later

    original = signal.signal(signal.SIGTERM, previous)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_default_and_ignored_dispositions_are_left_alone() -> None:
    async def main() -> None:
        async with Hub():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_opt_out() -> None:
    def previous(signum: int, frame: object) -> None: ...

    async def main() -> None:
        async with Hub(handle_signals=False):
            assert signal.getsignal(signal.SIGTERM) is previous

    original = signal.signal(signal.SIGTERM, previous)
    try:
        anyio.run(main)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_asyncio_loop_handler_chained_and_restored() -> None:
    calls: list[str] = []

    def previous(tag: str) -> None:
        calls.append(tag)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, previous, "server")
        hub = Hub()
        async with hub:
            assert signals._loop_handler(loop, signal.SIGTERM) != (previous, ("server",))
            signal.raise_signal(signal.SIGTERM)
            for _ in range(100):
                if hub.closing and calls:
                    break
                await asyncio.sleep(0.01)
            assert calls == ["server"]
            assert hub.closing
        assert signals._loop_handler(loop, signal.SIGTERM) == (previous, ("server",))
        loop.remove_signal_handler(signal.SIGTERM)

    original = signal.getsignal(signal.SIGTERM)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, original)


def test_trio_loop() -> None:
    calls: list[int] = []

    def previous(signum: int, frame: object) -> None:
        calls.append(signum)

    async def main() -> None:
        hub = Hub()
        async with hub:
            signal.raise_signal(signal.SIGTERM)
            await anyio.sleep(0.01)
            assert calls == [signal.SIGTERM]
            assert hub.closing
        assert signal.getsignal(signal.SIGTERM) is previous

    original = signal.signal(signal.SIGTERM, previous)
    try:
        anyio.run(main, backend="trio")
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_shared_log_hub_begins_shutdown_on_the_signal(backend: str) -> None:
    # On a shared log the handler first lets the node apply its own writes (a task on the loop).
    calls: list[int] = []

    def previous(signum: int, frame: object) -> None:
        calls.append(signum)

    async def main() -> None:
        hub = Hub(backend=MemoryLog())
        hub.resource("orders")
        async with hub:
            await hub.acreate("orders", {"metadata": {"name": "o-1"}})
            signal.raise_signal(signal.SIGTERM)
            for _ in range(200):
                if hub.closing:
                    break
                await anyio.sleep(0.01)
            assert hub.closing
            assert calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is previous

    original = signal.signal(signal.SIGTERM, previous)
    try:
        anyio.run(main, backend=backend)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_begin_shutdown_twice_is_harmless() -> None:
    async def main() -> None:
        hub = Hub()
        async with hub:
            hub.begin_shutdown()
            hub.begin_shutdown()
            assert hub.closing

    anyio.run(main)
