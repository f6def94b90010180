"""Helpers of the conformance suite: example-app servers, and SSE / JSON-lines readers.

Every server is a real ``python -m examples FRAMEWORK`` subprocess on 127.0.0.1 (uvicorn);
every stream is read incrementally with httpx (``iter_raw``) and every read is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import httpx
import pytest

from watchroutes.testing import SSEMessage, SSEParser
from watchroutes.testing.httpx import StreamingASGITransport

from .._services import NATS_URL, POSTGRES_URL, REDIS_URL, require

__all__ = [
    "EXIT_TIMEOUT",
    "FRAMEWORKS",
    "INITIAL_EVENTS_END",
    "Launch",
    "LineStream",
    "READY_TIMEOUT",
    "SSEStream",
    "STATUS_KEYS",
    "Server",
    "assert_status",
    "assert_status_object",
    "envelope",
    "is_bookmark",
    "is_initial_end",
    "name_of",
    "order",
    "rv_of",
    "xfail_if",
]

#: Each example app on its real server (uvicorn; gunicorn for Flask), in memory through
#: ``watchroutes.testing.httpx.StreamingASGITransport`` (the same scenarios, no sockets), and
#: on a shared log (``--backend``: the same wire behaviour through a Redis-backed hub; Flask
#: and Django share one in ``test_shared_log_frameworks``, a cluster of mixed adapters).
#:
#: One variant per distinct code path, to keep CI well under 30 minutes with five frameworks:
#: FastAPI in memory is the Starlette adapter in memory again, and a hub on PostgreSQL or
#: NATS serves the wire through the same follower as on Redis. Those engines keep their own
#: checks: the backend contract suite, the multi-process scenarios of ``test_shared_log`` on
#: every engine, and the fault suite (``tests/faults``).
FRAMEWORKS: Final = (
    "starlette",
    "fastapi",
    "aiohttp",
    "flask",
    "django",
    "starlette-memory",
    "starlette-redis",
    "aiohttp-redis",
)
READY_TIMEOUT: Final = 20.0
EXIT_TIMEOUT: Final = 10.0
#: Any single read from a server; a stream that stays silent longer is a failure.
READ_TIMEOUT: Final = 5.0
REPO: Final = Path(__file__).resolve().parents[2]
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"
STATUS_KEYS: Final = ["kind", "apiVersion", "metadata", "status", "code", "reason", "message"]
_READY = re.compile(rb"^ready (http://127\.0\.0\.1:\d+)\s*$")


def xfail_if(request: pytest.FixtureRequest, condition: bool, reason: str) -> None:
    """Mark the running test as a strict expected failure (a known bug) when ``condition``."""
    if condition:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def order(
    name: str, region: str = "eu", *, qty: int = 1, item: str = "book", phase: str = "new"
) -> dict[str, Any]:
    """An order following the object convention of protocol.md §6."""
    return {
        "metadata": {"name": name, "labels": {"region": region}},
        "spec": {"item": item, "qty": qty},
        "status": {"phase": phase},
    }


def assert_status(response: httpx.Response, code: int, reason: str, *mentions: str) -> Any:
    """``response`` is an HTTP ``code`` with a Status body (protocol.md §3.5): the Status."""
    assert response.status_code == code, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    status = response.json()
    assert_status_object(status, code, reason, *mentions)
    return status


def assert_status_object(status: Any, code: int, reason: str, *mentions: str) -> None:
    assert isinstance(status, dict)
    keys = [k for k in status if k != "details"]
    assert keys == STATUS_KEYS, status
    assert status["kind"] == "Status"
    assert status["apiVersion"] == "v1"
    assert status["metadata"] == {}
    assert status["status"] == "Failure"
    assert status["code"] == code
    assert status["reason"] == reason
    assert isinstance(status["message"], str)
    for word in mentions:
        assert word in status["message"], (word, status["message"])


class SSEStream:
    """An SSE response read block by block as the server writes it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.raw = bytearray()
        self.ended = False
        self._chunks = response.iter_raw()
        self._queue: deque[SSEMessage] = deque()

    def _fill(self) -> bool:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.ended = True
            return False
        self.raw += chunk
        self._queue.extend(self.parser.feed(chunk))
        return True

    def read_raw(self, size: int, timeout: float = READ_TIMEOUT) -> bytes:
        """At least ``size`` raw bytes from the start of the body (or all of a shorter one)."""
        deadline = time.monotonic() + timeout
        while len(self.raw) < size and not self.ended:
            assert time.monotonic() < deadline, f"only {bytes(self.raw)!r} within {timeout} s"
            self._fill()
        return bytes(self.raw)

    def next(self, timeout: float = READ_TIMEOUT) -> SSEMessage | None:
        """The next block; ``None`` when the server ended the body."""
        deadline = time.monotonic() + timeout
        while not self._queue:
            if self.ended:
                return None
            assert time.monotonic() < deadline, f"no SSE block within {timeout} s"
            self._fill()
        return self._queue.popleft()

    def until(
        self, predicate: Callable[[SSEMessage], bool], timeout: float = READ_TIMEOUT
    ) -> list[SSEMessage]:
        """Blocks up to and including the first one matching ``predicate``."""
        deadline = time.monotonic() + timeout
        out: list[SSEMessage] = []
        while True:
            block = self.next(max(0.01, deadline - time.monotonic()))
            assert block is not None, f"the stream ended before the expected block: {out}"
            out.append(block)
            if predicate(block):
                return out

    def data_events(self, count: int, timeout: float = READ_TIMEOUT) -> list[Any]:
        """The envelopes of the next ``count`` data blocks (skipping other blocks)."""
        deadline = time.monotonic() + timeout
        out: list[Any] = []
        while len(out) < count:
            block = self.next(max(0.01, deadline - time.monotonic()))
            assert block is not None, f"the stream ended after {out}"
            if block.data is not None:
                out.append(envelope(block))
        return out

    def rest(self, timeout: float = READ_TIMEOUT) -> list[SSEMessage]:
        """Every block until the server ends the body."""
        deadline = time.monotonic() + timeout
        out: list[SSEMessage] = []
        while True:
            block = self.next(max(0.01, deadline - time.monotonic()))
            if block is None:
                return out
            out.append(block)


def envelope(block: SSEMessage) -> Any:
    """The JSON envelope of a data block."""
    assert block.data is not None, block
    return json.loads(block.data)


def is_initial_end(block: SSEMessage) -> bool:
    if block.data is None:
        return False
    env = envelope(block)
    if env["type"] != "BOOKMARK":
        return False
    annotations = env["object"].get("metadata", {}).get("annotations", {})
    return bool(env["type"] == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END) == "true")


class LineStream:
    """A JSON-lines response read line by line; checks that no line is ever blank."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw = bytearray()
        self.ended = False
        self._pending = b""
        self._chunks = response.iter_raw()
        self._queue: deque[Any] = deque()

    def _fill(self) -> bool:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.ended = True
            assert not self._pending, f"bytes after the last newline: {self._pending!r}"
            return False
        self.raw += chunk
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            assert line.strip(), f"a blank line in {bytes(self.raw)!r}"
            self._queue.append(json.loads(line))
        return True

    def next(self, timeout: float = READ_TIMEOUT) -> Any:
        """The next envelope; ``None`` when the server ended the body."""
        deadline = time.monotonic() + timeout
        while not self._queue:
            if self.ended:
                return None
            assert time.monotonic() < deadline, f"no line within {timeout} s"
            self._fill()
        return self._queue.popleft()

    def take(self, count: int, timeout: float = READ_TIMEOUT) -> list[Any]:
        deadline = time.monotonic() + timeout
        out: list[Any] = []
        while len(out) < count:
            event = self.next(max(0.01, deadline - time.monotonic()))
            assert event is not None, f"the stream ended after {out}"
            out.append(event)
        return out

    def until(self, predicate: Callable[[Any], bool], timeout: float = READ_TIMEOUT) -> list[Any]:
        deadline = time.monotonic() + timeout
        out: list[Any] = []
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            assert event is not None, f"the stream ended before the expected line: {out}"
            out.append(event)
            if predicate(event):
                return out

    def rest(self, timeout: float = READ_TIMEOUT) -> list[Any]:
        deadline = time.monotonic() + timeout
        out: list[Any] = []
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event is None:
                return out
            out.append(event)


def is_bookmark(event: Any) -> bool:
    return bool(event["type"] == "BOOKMARK")


def name_of(event: Any) -> str:
    return str(event["object"]["metadata"]["name"])


def rv_of(obj: Any) -> int:
    """The ``metadata.resourceVersion`` of an object, which must be a decimal string."""
    value = obj["metadata"]["resourceVersion"]
    assert isinstance(value, str), value
    assert value.isdigit(), value
    return int(value)


class Server:
    """One running ``python -m examples FRAMEWORK`` process and a client for it."""

    def __init__(
        self,
        framework: str,
        process: subprocess.Popen[bytes],
        base_url: str,
        stderr: IO[bytes],
        args: tuple[str, ...],
    ) -> None:
        self.framework = framework
        self.process = process
        self.base_url = base_url
        self.args = args
        self._stderr = stderr
        self.client = httpx.Client(base_url=base_url, timeout=READ_TIMEOUT, trust_env=False)
        self.returncode: int | None = None

    in_memory: bool = False

    def needs_process(self) -> None:
        """Skip the running test when it needs a real server process and sockets."""
        if self.in_memory:
            pytest.skip("needs a real server process")

    #: Removes this server's own shared log (``-redis``, ``-postgres``, ``-nats`` variants) at stop.
    cleanup: Callable[[], None] | None = None

    @classmethod
    def start(cls, framework: str, *args: str) -> Server:
        if framework.endswith("-memory"):
            return MemoryServer.start_memory(framework.removesuffix("-memory"), *args)
        base, _, engine = framework.partition("-")
        cleanup = None
        if engine:
            url, cleanup = shared_log(engine)
            args = ("--backend", url, *args)
        server = cls._spawn(base, args)
        server.cleanup = cleanup
        return server

    @classmethod
    def _spawn(cls, framework: str, args: tuple[str, ...]) -> Server:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        command = [
            sys.executable,
            "-m",
            "examples",
            framework,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        try:
            url = _wait_ready(process, READY_TIMEOUT)
        except BaseException:
            process.kill()
            process.wait(EXIT_TIMEOUT)
            assert process.stdout is not None
            process.stdout.close()
            stderr.seek(0)
            log = stderr.read().decode(errors="replace")
            stderr.close()
            raise AssertionError(f"{command} did not become ready:\n{log}") from None
        return cls(framework, process, url, stderr, args)

    # -- lifecycle ---------------------------------------------------------------------------

    def signal_stop(self) -> None:
        """Send SIGTERM (once) without waiting."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to exit; fail if it takes longer than ``timeout``."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(EXIT_TIMEOUT)
            message = f"the {self.framework} server did not exit within {timeout} s of SIGTERM"
            raise AssertionError(message) from None
        self.returncode = code
        return code

    def stop(self) -> str:
        """SIGTERM, wait at most 10 s, check the exit status; returns the server's stderr."""
        self.client.close()
        try:
            self.signal_stop()
            code = self.wait_exit()
            assert code in (0, -signal.SIGTERM), f"exit status {code}"
        finally:
            if self.process.poll() is None:  # pragma: no cover - only after a failure
                self.process.kill()
                self.process.wait(EXIT_TIMEOUT)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._stderr.seek(0)
            log = self._stderr.read().decode(errors="replace")
            self._stderr.close()
            if self.cleanup is not None:
                self.cleanup()
        return log

    # -- plain requests ----------------------------------------------------------------------

    def create(self, name: str, region: str = "eu", **fields: Any) -> Any:
        response = self.client.post("/orders", json=order(name, region, **fields))
        assert response.status_code == 201, response.text
        return response.json()

    def patch(self, name: str, patch: Mapping[str, Any]) -> Any:
        response = self.client.patch(
            f"/orders/{name}",
            content=json.dumps(patch),
            headers={"content-type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text
        return response.json()

    def relabel(self, name: str, region: str) -> Any:
        return self.patch(name, {"metadata": {"labels": {"region": region}}})

    def delete(self, name: str) -> Any:
        response = self.client.delete(f"/orders/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    def list(self) -> Any:
        response = self.client.get("/orders")
        assert response.status_code == 200, response.text
        return response.json()

    def head(self) -> int:
        """The log's head, from the id-only block that starts an SSE watch without initial
        events (independent of the plain list, so a list bug does not hide other checks)."""
        with self.sse(params={"sendInitialEvents": "false", "timeoutSeconds": "5"}) as stream:
            block = stream.until(lambda b: b.id is not None)[-1]
        assert block.data is None, block
        assert block.id is not None
        return int(block.id)

    def state(self, path: str = "/orders", params: Mapping[str, str] | None = None) -> Any:
        """The current objects by name and the snapshot rv, from a watch's initial events
        (independent of the plain list)."""
        query = {"allowWatchBookmarks": "true", "timeoutSeconds": "5", **(params or {})}
        with self.lines(path, query) as stream:
            events = stream.until(is_bookmark)
        objects = {name_of(e): e["object"] for e in events[:-1]}
        assert all(e["type"] == "ADDED" for e in events[:-1]), events
        return objects, int(events[-1]["resourceVersion"])

    def metric(self, name: str) -> float:
        response = self.client.get("/metrics")
        assert response.status_code == 200
        declared = False
        total = 0.0
        for line in response.text.splitlines():
            if line.startswith((f"# TYPE {name} ", f"# TYPE {name.removesuffix('_total')} ")):
                declared = True
            elif line.startswith((name + " ", name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        assert declared, f"{name} not in /metrics:\n{response.text}"
        return total  # every labelled series together

    # -- streams -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def sse(
        self,
        path: str = "/orders",
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[SSEStream]:
        """An SSE watch (``Accept: text/event-stream``); asserts a 200 event stream."""
        hdrs = {"accept": "text/event-stream", **(headers or {})}
        with self.client.stream("GET", path, params=params, headers=hdrs) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            yield SSEStream(response)

    @contextlib.contextmanager
    def lines(
        self,
        path: str = "/orders",
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[LineStream]:
        """A JSON-lines watch (``watch=true``); asserts a 200 ``application/json`` stream."""
        query = {"watch": "true", **(params or {})}
        with self.client.stream("GET", path, params=query, headers=headers) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"] == "application/json"
            yield LineStream(response)


def shared_log(engine: str) -> tuple[str, Callable[[], None]]:
    """A fresh shared log on ``engine`` (``redis``, ``postgres``, ``nats``): its URL and its
    removal."""
    require(engine)
    name = f"conformance_{uuid.uuid4().hex[:12]}"
    if engine == "redis":
        return f"{REDIS_URL}?prefix={name}", lambda: wipe_redis(name)
    if engine == "postgres":
        return f"{POSTGRES_URL}?schema={name}", lambda: drop_schema(name)
    if engine == "nats":
        return f"{NATS_URL}?stream={name}", lambda: delete_stream(name)
    raise ValueError(f"no shared log engine {engine!r}")


def delete_stream(stream: str) -> None:
    """Delete the log's JetStream stream and its state bucket."""
    import nats
    import nats.js.errors

    async def delete() -> None:
        client = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
        try:
            js = client.jetstream()
            for name in (stream, f"KV_{stream}_state"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
        finally:
            await client.close()

    asyncio.run(delete())


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def wipe_redis(prefix: str) -> None:
    """Delete the keys of the log under ``prefix`` in the test Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class MemoryServer(Server):
    """The same app built in this process and driven through the streaming ASGI transport.

    ``signal_stop`` starts the hub's shutdown as the server's exit signal would.
    """

    in_memory = True

    def __init__(self, framework: str, app: Any, args: tuple[str, ...]) -> None:
        self.framework = framework
        self.args = args
        self.app = app
        self.base_url = "http://testserver"
        # (the plain ASGI path, as under Hypercorn: the real-server variants run the direct
        # write path and the hand-over of watchroutes' uvicorn protocols)
        self.transport = StreamingASGITransport(app, direct=False)
        self.client = httpx.Client(
            transport=self.transport, base_url=self.base_url, timeout=READ_TIMEOUT
        )
        self.returncode = None
        self._closing = False

    @classmethod
    def start_memory(cls, framework: str, *args: str) -> MemoryServer:
        from examples.__main__ import parse

        name, settings = parse([framework, *args])
        if name == "fastapi":
            from examples.fastapi_app import create_app as create_fastapi

            return cls(framework, create_fastapi(settings), args)
        from examples.starlette_app import create_app

        return cls(framework, create_app(settings), args)

    def signal_stop(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.portal.start_task_soon(self.app.state.hub.aclose)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        self.returncode = 0
        return 0

    def stop(self) -> str:
        self.transport.portal.call(self.app.state.hub.aclose)
        self.client.close()  # closes the transport and its event loop
        return ""


def _wait_ready(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ready line within {timeout} s")
            if selector.select(remaining):
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"exited with {process.wait()} before it was ready")
                buffer += chunk
    match = _READY.match(buffer.split(b"\n", 1)[0])
    if match is None:
        raise RuntimeError(f"unexpected first line {buffer!r}")
    return match.group(1).decode()


#: ``launch(*flags)``: start a server of the test's framework with extra flags.
Launch = Callable[..., Server]
