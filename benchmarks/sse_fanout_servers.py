"""The servers that ``sse_fanout.py`` compares, each run in a process of its own.

::

    .venv/bin/python benchmarks/sse_fanout_servers.py watchroutes [--port 0] [--cpu 0]
    .venv/bin/python benchmarks/sse_fanout_servers.py raw [--port 0] [--cpu 0]
    (also watchroutes-httptools, watchroutes-asgi, watchroutes-aiohttp, raw-uvloop,
    sse-starlette, broadcaster, aiohttp, asgi-floor, starlette-floor)

``watchroutes``
    A Starlette app whose ``GET /orders`` is ``watch_endpoint(orders)``, served by uvicorn
    through ``watchroutes.adapters.uvicorn.Server``. Every call of
    ``watchroutes._core.events.encode`` (the package's JSON encoder, which ``Frame.json`` looks
    up as a module global) is counted, so the benchmark can show that an event is encoded once
    however many watchers receive it. ``Server`` serves it with its own h11 protocol, which
    offers each connection to the direct write path: a publish writes to every idle watcher
    itself.
``raw``
    The least a Python SSE fan-out can do: ``asyncio.start_server``, read the request head,
    write the response head and ``retry: 2000``, keep the transports, and write each event's
    ``id:``/``data:`` block to every one of them. No HTTP framework, no chunked encoding (the
    body ends when the connection does), no resume, no selectors: the reference for what the
    event loop and the kernel allow.
``watchroutes-httptools``
    The same app with uvicorn's httptools protocol instead of h11 (what ``uvicorn[standard]``
    and the ``server`` extra install; the asyncio loop still), also on the direct write path.
``watchroutes-asgi``
    The same app on uvicorn's own httptools protocol (``Server(direct=False)``, as under
    hypercorn or daphne): no direct write path, a task per watcher wakes for every event.
``watchroutes-aiohttp``
    The same hub through ``watchroutes.adapters.aiohttp`` (``watch_handler(orders)``) on
    aiohttp's own server, next to ``aiohttp`` below.
``raw-uvloop``
    The same on uvloop's event loop.
``asgi-floor``, ``starlette-floor``
    The least an SSE endpoint under uvicorn can do per event, to tell the cost of the stack
    from watchroutes' own: one task per watcher sleeping on a bare future, woken by the
    publisher, writing what is queued with one ASGI ``send`` (and a bare task noticing the
    disconnect). No resume, no heartbeat, no write timeout, no bound on the queue. As a plain
    ASGI app (``asgi-floor``) and as the endpoint of a Starlette route (``starlette-floor``).
``sse-starlette``
    sse-starlette's ``EventSourceResponse`` on Starlette and uvicorn, fed by one bounded
    ``asyncio.Queue`` per watcher (the pattern its documentation shows); each event's JSON is
    encoded once, and sse-starlette frames it for each watcher.
``broadcaster``
    encode/broadcaster's in-memory backend (``memory://``) feeding sse-starlette: each watcher
    subscribes to the channel and gets every message through broadcaster's own (unbounded)
    per-subscriber queue, the combination its README shows.
``aiohttp``
    aiohttp's ``StreamResponse`` with one bounded queue per watcher, writing each event's
    pre-encoded SSE block with ``await response.write``.
``flask``
    A Flask app whose ``GET /orders`` is ``watch_view(orders)`` (``watchroutes.adapters.flask``)
    on gunicorn, one ``gthread`` worker of ``WATCHROUTES_BENCH_THREADS`` threads (default
    1,100: a watch holds a thread), as the Flask example runs; ``Hub(max_watches=threads -
    50)``. The publisher is a thread of the worker calling ``orders.publish`` (the usual Flask
    case: a view or a background thread publishes).
``flask-generator``
    What a Flask user writes by hand on the same gunicorn: a ``queue.Queue`` per watcher fed by
    the publisher thread, streamed by a plain generator response that yields each event's
    pre-encoded SSE block.
``django``
    Django's ASGI application with ``path("orders", watch_view(orders))``, wrapped by
    ``watchroutes.adapters.django.asgi`` and served by uvicorn through
    ``watchroutes.adapters.uvicorn.Server``, as the Django example runs.
``django-streaming``
    What a Django user writes by hand on the same uvicorn: an async view returning a
    ``StreamingHttpResponse`` over an async generator that awaits one bounded
    ``asyncio.Queue`` per watcher.

The peers drop a watcher whose queue (1,000 events, watchroutes' default buffer) is full. All
answer the same control routes:

* ``POST /_bench/start?rate=R&seconds=D[&count=N][&burst=B]``: publish N events (default
  R x D) at R per second on an absolute schedule, for at most D seconds (events not published
  by then are skipped, so a saturated server shows up as a lower published rate). With
  ``burst=B`` there is no schedule: B events back to back, a yield to the event loop
  (``await asyncio.sleep(0)``, so the watchers run), the next B, until N are published or D
  seconds passed. ``burst=1`` is the *per-turn* publisher (one event per event-loop turn, as
  an app whose writes arrive one request at a time); ``burst=20`` the *burst-grouped* one.
  Each object is
  ``{"metadata": {"name": "o-<i % 100>"}, "t": <time.monotonic_ns() at publish>, "pad": ...}``.
  Answers ``{"t0": <ns>}``, the publisher's start.
* ``GET /_bench/stats``: ``{"published", "running", "encodes", "watchers"}`` (``encodes`` is
  the encoder calls since the last start, ``null`` for the raw server).

On the gunicorn servers (``flask``, ``flask-generator``) the publisher is a thread, which
cannot yield to an event loop: a burst group ends with ``time.sleep(0)`` (the watchers'
threads take the GIL), and the control routes and the watchers are served by the one worker
process (the server's CPU is the arbiter's and the worker's).

All print ``ready http://HOST:PORT`` once they accept connections and stop on SIGTERM/SIGINT.

Diagnostics, through the environment of the server process:

* ``WATCHROUTES_BENCH_GC=off|stats|threshold:A,B,C``: no collector, every collection's
  duration on stderr, or other thresholds.
* ``WATCHROUTES_BENCH_PROFILE=PATH``: cProfile the whole server into ``PATH.<server>``.
* ``WATCHROUTES_BENCH_SNAPSHOT=PREFIX``: ``tracemalloc`` from the start (frames:
  ``WATCHROUTES_BENCH_TRACE_FRAMES``, default 12); each ``SIGUSR1`` runs a full collection and
  writes ``PREFIX.<n>.tracemalloc`` (a snapshot) and ``PREFIX.<n>.json`` (the number of
  GC-tracked objects, and their count and shallow bytes by type), so that two snapshots around
  opening N idle watchers show what one watch holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from queue import Full, Queue
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl

#: Bytes of padding in each published object (the object is about 300 bytes of JSON).
PAD: Final = "x" * 200
#: Distinct keys the publisher cycles through (``o-0`` ... ``o-99``).
KEYS: Final = 100
#: The raw server closes a connection whose unsent bytes exceed this (its only bound).
RAW_MAX_PENDING: Final = 16 * 1024 * 1024

if TYPE_CHECKING:
    from watchroutes import Hub

Emit = Callable[[int, dict[str, Any]], Awaitable[None] | None]

#: The servers this script runs: watchroutes, the raw ceiling (on asyncio's loop and on
#: uvloop's), and the peers users pick instead.
SERVERS: Final = (
    "watchroutes",
    "watchroutes-httptools",
    "watchroutes-asgi",
    "watchroutes-aiohttp",
    "raw",
    "raw-uvloop",
    "sse-starlette",
    "broadcaster",
    "aiohttp",
    "asgi-floor",
    "starlette-floor",
    "flask",
    "flask-generator",
    "django",
    "django-streaming",
)
#: Each framework's watchroutes server and the hand-written peer it is compared with.
PEERS: Final = {"flask": "flask-generator", "django": "django-streaming"}
#: The servers a run without ``--servers`` compares: all but the Flask and Django ones (a
#: gunicorn thread per watcher does not reach the 5,000-watcher cases; they have a table of
#: their own, see docs/benchmarks.md).
DEFAULT_SERVERS: Final = tuple(s for s in SERVERS if s not in (*PEERS, *PEERS.values()))
#: gunicorn's threads in the Flask servers' one gthread worker (a watcher holds one).
FLASK_THREADS: Final = int(os.environ.get("WATCHROUTES_BENCH_THREADS", "1100"))
#: uvicorn's event loop for the ASGI servers: "asyncio", as the raw server's, unless
#: WATCHROUTES_BENCH_LOOP says otherwise ("uvloop"; uvicorn's default "auto" would pick uvloop
#: whenever it is installed, and it is, for raw-uvloop).
UVICORN_LOOP: Final = os.environ.get("WATCHROUTES_BENCH_LOOP", "asyncio")
#: Events queued per watcher by the peers before the watcher is dropped, as watchroutes'
#: default buffer.
PEER_BUFFER: Final = 1000


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (1,000 watchers need 1,000+ fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def pin_to_cpu(cpu: int | None) -> None:
    """Run this process on one CPU only (ignored where affinity is unsupported)."""
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def make_object(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"o-{i % KEYS}"}, "t": time.monotonic_ns(), "pad": PAD}


class Publisher:
    """Publishes ``count`` objects at ``rate`` per second through ``emit``."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.published = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, rate: float, seconds: float, count: int, burst: int = 0) -> int:
        if self.running:
            raise RuntimeError("a publisher is already running")
        t0 = time.monotonic_ns()
        self.published = 0
        self._launch(schedule(t0, rate, seconds, count, burst))
        return t0

    def _launch(self, steps: Iterator[int | float]) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(steps))

    async def _run(self, steps: Iterator[int | float]) -> None:
        for step in steps:
            if isinstance(step, float):
                await asyncio.sleep(step)  # (0.0: one turn of the event loop)
                continue
            result = self.emit(step, make_object(step))
            if inspect.isawaitable(result):  # an async publish (broadcaster)
                await result
            self.published += 1


def schedule(t0: int, rate: float, seconds: float, count: int, burst: int) -> Iterator[int | float]:
    """The publisher's steps: an ``int`` is the index of the event to publish now, a ``float``
    the seconds to sleep (or yield: ``0.0``) before the next step.

    Paced (``burst`` 0), an open loop: every event that is due is published when the
    publisher runs, late ones in a burst, so a saturated server does not slow the publisher
    down (the events queue up in the server, where the latency shows them). A server whose
    publishing itself is the bottleneck (the raw one writes to every socket inside ``emit``)
    publishes fewer: nothing is published after the window, so the run stays bounded.

    With ``burst``: as fast as the server fans out, ``burst`` events, then one yield (every
    woken watcher writes before the next group), so no queue grows past about ``burst`` events
    and the throughput is the fan-out's, not the publisher's."""
    stop = t0 + int(seconds * 1e9)
    i = 0
    if burst:
        while i < count and time.monotonic_ns() < stop:
            for _ in range(min(burst, count - i)):
                yield i
                i += 1
            yield 0.0
        return
    interval = 1e9 / rate
    while i < count:
        woke = time.monotonic_ns()
        # Publish what was due when the publisher woke, then sleep (late events wait a turn).
        while i < count and t0 + int(i * interval) <= woke:
            if time.monotonic_ns() >= stop:
                return
            yield i
            i += 1
        now = time.monotonic_ns()
        if now >= stop:
            return
        yield max(0.0, (t0 + int(i * interval) - now) / 1e9)


def parse_start(query: str) -> tuple[float, float, int, int]:
    params = dict(parse_qsl(query))
    rate = float(params["rate"])
    seconds = float(params["seconds"])
    count = int(params.get("count", round(rate * seconds)))
    burst = int(params.get("burst", 0))
    if not (rate > 0 and seconds > 0 and count >= 0 and burst >= 0):
        raise ValueError("rate and seconds must be positive, count and burst non-negative")
    return rate, seconds, count, burst


# -- watchroutes on uvicorn ------------------------------------------------------------------


class _Watchroutes:
    """The hub every watchroutes server publishes to, with its encoder counted."""

    def __init__(self, max_watches: int | None = None) -> None:
        import watchroutes._core.events as events_module
        from watchroutes import Hub

        self.encodes = 0
        self.encodes_at_start = 0
        real_encode = events_module.encode

        def counting_encode(value: Any) -> bytes:
            self.encodes += 1
            return real_encode(value)

        events_module.encode = counting_encode
        self.hub = Hub(max_watches=max_watches)
        self.orders = self.hub.resource("orders", kind="Order")
        orders = self.orders
        self.publisher = Publisher(lambda i, obj: orders.publish("MODIFIED", obj))

    def on_start(self) -> None:
        self.encodes_at_start = self.encodes

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.publisher.published,
            "running": self.publisher.running,
            "encodes": self.encodes - self.encodes_at_start,
            "watchers": self.hub.statistics().active_watches,
        }


def run_watchroutes(
    host: str, port: int, http: Literal["h11", "httptools"] = "h11", *, direct: bool = True
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute

    from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint

    wr = _Watchroutes()
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(wr.orders)),
            WebSocketRoute("/orders", websocket_endpoint(wr.orders)),  # idle_memory.py
            *_control_routes(wr.publisher, wr.stats, wr.on_start),
        ]
    )
    _run_uvicorn(app, host, port, hubs=[wr.hub], http=http, direct=direct)


def run_watchroutes_aiohttp(host: str, port: int) -> None:
    """The same hub through the aiohttp adapter, on aiohttp's own server."""
    from aiohttp import web

    from watchroutes.adapters.aiohttp import setup, watch_handler

    wr = _Watchroutes()
    app = web.Application()
    setup(app, wr.hub, freeze_gc=True)  # (as the uvicorn Server does)
    app.router.add_get("/orders", watch_handler(wr.orders))  # also WebSockets (idle_memory.py)
    _serve_aiohttp(app, host, port, wr.publisher, wr.stats, wr.on_start)


# -- the raw asyncio reference ---------------------------------------------------------------

_SSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"retry: 2000\n\n"
)


class RawServer:
    """asyncio streams, a set of transports, one ``write`` per watcher per event."""

    def __init__(self) -> None:
        self.transports: set[asyncio.WriteTransport] = set()
        self.handlers: set[asyncio.Task[Any]] = set()
        self.connections: set[asyncio.StreamWriter] = set()
        self.rv = 0
        self.too_slow = 0
        self.publisher = Publisher(self.broadcast)

    def broadcast(self, i: int, obj: dict[str, Any]) -> None:
        self.rv += 1
        rv = str(self.rv)
        obj["metadata"]["resourceVersion"] = rv
        envelope = {"type": "MODIFIED", "object": obj, "resourceVersion": rv}
        block = b"id: %d\ndata: %s\n\n" % (
            self.rv,
            json.dumps(envelope, separators=(",", ":")).encode(),
        )
        for transport in list(self.transports):
            if transport.is_closing():
                self.transports.discard(transport)
            elif transport.get_write_buffer_size() > RAW_MAX_PENDING:
                self.too_slow += 1
                self.transports.discard(transport)
                transport.abort()
            else:
                transport.write(block)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)
        self.connections.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
            path, _, query = target.partition("?")
            if method == "GET" and path == "/orders":
                await self.stream(reader, writer)
            elif method == "POST" and path == "/_bench/start":
                await self.start(writer, query)
            elif method == "GET" and path == "/_bench/stats":
                body = {
                    "published": self.publisher.published,
                    "running": self.publisher.running,
                    "encodes": None,
                    "watchers": len(self.transports),
                }
                await respond(writer, 200, body)
            else:
                await respond(writer, 404, {"error": "not found"})
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        finally:
            self.connections.discard(writer)
            writer.close()

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        transport.write(_SSE_HEAD)
        self.transports.add(transport)
        try:
            while await reader.read(4096):
                pass
        finally:
            self.transports.discard(transport)

    async def start(self, writer: asyncio.StreamWriter, query: str) -> None:
        try:
            rate, seconds, count, burst = parse_start(query)
        except (KeyError, ValueError) as exc:
            await respond(writer, 400, {"error": str(exc)})
            return
        if self.publisher.running:
            await respond(writer, 409, {"error": "already running"})
            return
        await respond(writer, 202, {"t0": self.publisher.start(rate, seconds, count, burst)})


async def respond(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(data), data)
    )
    await writer.drain()


async def serve_raw(host: str, port: int) -> None:
    raw = RawServer()
    server = await asyncio.start_server(raw.handle, host, port, backlog=4096)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"ready http://{bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        if raw.publisher.task is not None:
            raw.publisher.task.cancel()
        for writer in list(raw.connections):
            writer.transport.abort()
        # Let the handlers see their connections end: a handler task still pending when
        # asyncio.run() cancels it makes Python 3.11's start_server callback log an error.
        if raw.handlers:
            await asyncio.wait(raw.handlers, timeout=5.0)


# -- peers: what users would pick instead ----------------------------------------------------


def _envelope_block(rv: int, obj: dict[str, Any]) -> tuple[str, bytes]:
    """The event as JSON (encoded once per event) and as one SSE block."""
    obj["metadata"]["resourceVersion"] = str(rv)
    data = json.dumps(
        {"type": "MODIFIED", "object": obj, "resourceVersion": str(rv)}, separators=(",", ":")
    )
    return data, b"id: %d\ndata: %s\n\n" % (rv, data.encode())


class QueueFanout:
    """Per-watcher bounded queues, the pattern the peers' docs show: a publish puts the event
    on every watcher's queue; a watcher whose queue is full is dropped."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[tuple[int, str, bytes]]] = set()
        self.rv = 0
        self.too_slow = 0
        self.publisher = Publisher(self.broadcast)

    def broadcast(self, i: int, obj: dict[str, Any]) -> None:
        self.rv += 1
        data, block = _envelope_block(self.rv, obj)
        for queue in list(self.queues):
            try:
                queue.put_nowait((self.rv, data, block))
            except asyncio.QueueFull:
                self.too_slow += 1
                self.queues.discard(queue)

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.publisher.published,
            "running": self.publisher.running,
            "encodes": None,
            "watchers": len(self.queues),
        }


def run_sse_starlette(host: str, port: int) -> None:
    """sse-starlette's EventSourceResponse on Starlette and uvicorn, one queue per watcher."""
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    fanout = QueueFanout()

    async def orders(request: Request) -> Response:
        queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue(maxsize=PEER_BUFFER)
        fanout.queues.add(queue)

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                while True:
                    rv, data, _ = await queue.get()
                    yield {"id": str(rv), "data": data}
            finally:
                fanout.queues.discard(queue)

        return EventSourceResponse(events(), ping=15)

    app = Starlette(
        routes=[Route("/orders", orders), *_control_routes(fanout.publisher, fanout.stats)]
    )
    _run_uvicorn(app, host, port)


def run_broadcaster(host: str, port: int) -> None:
    """encode/broadcaster (memory backend) feeding sse-starlette, as broadcaster's README shows."""
    from broadcaster import Broadcast
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    broadcast = Broadcast("memory://")
    subscribers = 0
    rv = 0

    async def emit(i: int, obj: dict[str, Any]) -> None:
        nonlocal rv
        rv += 1
        data, _ = _envelope_block(rv, obj)
        await broadcast.publish("orders", f"{rv}\n{data}")

    publisher = Publisher(emit)

    async def orders(request: Request) -> Response:
        async def events() -> AsyncIterator[dict[str, Any]]:
            nonlocal subscribers
            async with broadcast.subscribe("orders") as subscriber:
                subscribers += 1
                try:
                    async for event in subscriber:  # type: ignore[union-attr]
                        if event is None:
                            return
                        rv, _, data = event.message.partition("\n")
                        yield {"id": rv, "data": data}
                finally:
                    subscribers -= 1

        return EventSourceResponse(events(), ping=15)

    def stats() -> dict[str, Any]:
        return {
            "published": publisher.published,
            "running": publisher.running,
            "encodes": None,
            "watchers": subscribers,
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with broadcast:
            yield

    app = Starlette(
        routes=[Route("/orders", orders), *_control_routes(publisher, stats)], lifespan=lifespan
    )
    _run_uvicorn(app, host, port, lifespan="on")


class _FloorWatcher:
    __slots__ = ("future", "queue")

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.future: asyncio.Future[None] | None = None

    def offer(self, block: bytes) -> None:
        self.queue.append(block)
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)


def run_floor(host: str, port: int, *, starlette: bool) -> None:
    """The stack's floor: a task per watcher, a future per wake-up, one ``send`` per batch."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    watchers: set[_FloorWatcher] = set()
    rv = 0

    def emit(i: int, obj: dict[str, Any]) -> None:
        nonlocal rv
        rv += 1
        _, block = _envelope_block(rv, obj)
        for watcher in watchers:
            watcher.offer(block)

    publisher = Publisher(emit)

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        head = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        loop = asyncio.get_running_loop()
        watcher = _FloorWatcher()
        watchers.add(watcher)
        task = asyncio.current_task()
        assert task is not None

        async def peer() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()

        gone = asyncio.ensure_future(peer())
        try:
            while True:
                if not watcher.queue:
                    watcher.future = loop.create_future()
                    await watcher.future
                    watcher.future = None
                data = b"".join(watcher.queue)
                watcher.queue.clear()
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except asyncio.CancelledError:
            pass
        finally:
            watchers.discard(watcher)
            gone.cancel()

    def stats() -> dict[str, Any]:
        return {
            "published": publisher.published,
            "running": publisher.running,
            "encodes": None,
            "watchers": len(watchers),
        }

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await stream(scope, receive, send)

    async def orders(request: Request) -> Endpoint:
        return Endpoint()

    control = Starlette(routes=_control_routes(publisher, stats))
    if starlette:
        app: Any = Starlette(routes=[Route("/orders", orders), *control.routes])
    else:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/orders":
                await stream(scope, receive, send)
            else:
                await control(scope, receive, send)

    _run_uvicorn(app, host, port)


def run_aiohttp(host: str, port: int) -> None:
    """aiohttp's StreamResponse, one queue per watcher, pre-encoded blocks."""
    from aiohttp import web

    fanout = QueueFanout()

    async def orders(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue(maxsize=PEER_BUFFER)
        fanout.queues.add(queue)
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                _, _, block = await queue.get()
                await response.write(block)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            fanout.queues.discard(queue)
        return response

    app = web.Application()
    app.router.add_get("/orders", orders)
    _serve_aiohttp(app, host, port, fanout.publisher, fanout.stats)


# -- Flask on gunicorn (gthread) and Django on uvicorn ---------------------------------------


class ThreadPublisher(Publisher):
    """:class:`Publisher` as a thread (a WSGI app has no event loop): the same schedule, and
    ``time.sleep(0)`` where the asyncio one yields a loop turn."""

    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _launch(self, steps: Iterator[int | float]) -> None:
        self.thread = threading.Thread(
            target=self._publish, args=(steps,), name="publisher", daemon=True
        )
        self.thread.start()

    def _publish(self, steps: Iterator[int | float]) -> None:
        for step in steps:
            if isinstance(step, float):
                time.sleep(step)  # (0.0: the watchers' threads take the GIL)
                continue
            self.emit(step, make_object(step))
            self.published += 1


def _flask_control(
    app: Any,
    publisher: ThreadPublisher,
    stats: Callable[[], dict[str, Any]],
    on_start: Callable[[], None] = lambda: None,
) -> None:
    """``POST /_bench/start`` and ``GET /_bench/stats`` on a Flask app."""
    from flask import jsonify, request

    def start() -> Any:
        try:
            rate, seconds, count, burst = parse_start(request.query_string.decode())
        except (KeyError, ValueError) as exc:
            return jsonify({"error": str(exc)}), 400
        if publisher.running:
            return jsonify({"error": "already running"}), 409
        on_start()
        return jsonify({"t0": publisher.start(rate, seconds, count, burst)}), 202

    def get_stats() -> Any:
        return jsonify(stats())

    app.add_url_rule("/_bench/start", view_func=start, methods=["POST"])
    app.add_url_rule("/_bench/stats", view_func=get_stats)


def _run_gunicorn(app: Any, host: str, port: int, hooks: dict[str, Any] | None = None) -> None:
    """Serve ``app`` with gunicorn, one gthread worker of ``FLASK_THREADS`` threads (as the
    Flask example), announcing ``ready URL`` from the worker."""
    from gunicorn.app.base import BaseApplication

    hooks = dict(hooks or {})
    post_worker_init = hooks.pop("post_worker_init", lambda worker: None)

    def ready(worker: Any) -> None:
        post_worker_init(worker)
        bound_host, bound_port = worker.sockets[0].getsockname()[:2]
        print(f"ready http://{bound_host}:{bound_port}", flush=True)

    options = {
        "bind": f"{host}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": FLASK_THREADS,
        "worker_connections": FLASK_THREADS + 100,
        "backlog": 4096,
        "graceful_timeout": 3,
        "keepalive": 5,
        "post_worker_init": ready,
        "accesslog": None,
        "loglevel": "warning",
        **hooks,
    }

    class Bench(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return app

    Bench().run()


def run_flask(host: str, port: int) -> None:
    """watchroutes' Flask adapter on gunicorn gthread, published from a thread."""
    from flask import Flask

    from watchroutes.adapters.flask import WatchRoutes, post_worker_init, watch_view, worker_int

    wr = _Watchroutes(max_watches=FLASK_THREADS - 50)  # plain requests keep a few threads
    orders = wr.orders
    publisher = ThreadPublisher(lambda i, obj: orders.publish("MODIFIED", obj))
    wr.publisher = publisher
    app = Flask("bench")
    WatchRoutes(app, wr.hub)
    app.add_url_rule("/orders", view_func=watch_view(orders))
    _flask_control(app, publisher, wr.stats, wr.on_start)
    _run_gunicorn(app, host, port, {"post_worker_init": post_worker_init, "worker_int": worker_int})


class _GeneratorWatcher:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: Queue[bytes | None] = Queue(maxsize=PEER_BUFFER)


def run_flask_generator(host: str, port: int) -> None:
    """The hand-written Flask peer: a queue.Queue per watcher, a generator response."""
    from flask import Flask, Response

    watchers: set[_GeneratorWatcher] = set()
    lock = threading.Lock()
    rv = 0

    def emit(i: int, obj: dict[str, Any]) -> None:
        nonlocal rv
        rv += 1
        _, block = _envelope_block(rv, obj)
        with lock:
            current = list(watchers)
        for watcher in current:
            try:
                watcher.queue.put_nowait(block)
            except Full:  # too slow: dropped (its generator ends at the sentinel)
                with lock:
                    watchers.discard(watcher)
                with watcher.queue.mutex:
                    watcher.queue.queue.clear()
                watcher.queue.put_nowait(None)

    publisher = ThreadPublisher(emit)
    app = Flask("bench")

    @app.get("/orders")
    def orders() -> Response:
        watcher = _GeneratorWatcher()
        with lock:
            watchers.add(watcher)

        def events() -> Iterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while (block := watcher.queue.get()) is not None:
                    yield block
            finally:
                with lock:
                    watchers.discard(watcher)

        return Response(events(), mimetype="text/event-stream")

    def stats() -> dict[str, Any]:
        with lock:
            count = len(watchers)
        return {
            "published": publisher.published,
            "running": publisher.running,
            "encodes": None,
            "watchers": count,
        }

    _flask_control(app, publisher, stats)
    _run_gunicorn(app, host, port)


def _configure_django(urlpatterns: list[Any]) -> Any:
    """Django configured in code (no project), with ``urlpatterns``; its ASGI application."""
    import types

    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    urls = types.ModuleType("bench_urls")
    urls.urlpatterns = urlpatterns  # type: ignore[attr-defined]
    sys.modules["bench_urls"] = urls
    settings.configure(
        DEBUG=False,
        SECRET_KEY="watchroutes-benchmark-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="bench_urls",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()
    return get_asgi_application()


def _with_control(
    app: Any,
    publisher: Publisher,
    stats: Callable[[], dict[str, Any]],
    on_start: Callable[[], None] = lambda: None,
) -> Any:
    """``app`` with the control routes (a Starlette app beside it, on the same loop)."""
    from starlette.applications import Starlette

    control = Starlette(routes=_control_routes(publisher, stats, on_start))

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_bench/"):
            await control(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def run_django(host: str, port: int) -> None:
    """watchroutes' Django adapter under ASGI, on uvicorn (the hub in its ``Server``)."""
    from django.urls import path

    from watchroutes.adapters.django import asgi, watch_view

    wr = _Watchroutes()
    application = _configure_django([path("orders", watch_view(wr.orders))])
    app = asgi(application, wr.hub)
    _run_uvicorn(_with_control(app, wr.publisher, wr.stats, wr.on_start), host, port, [wr.hub])


def run_django_streaming(host: str, port: int) -> None:
    """The hand-written Django peer: StreamingHttpResponse over an async generator."""
    from django.http import HttpRequest, StreamingHttpResponse
    from django.urls import path

    fanout = QueueFanout()

    async def orders(request: HttpRequest) -> StreamingHttpResponse:
        queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue(maxsize=PEER_BUFFER)
        fanout.queues.add(queue)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    _, _, block = await queue.get()
                    yield block
            finally:
                fanout.queues.discard(queue)

        return StreamingHttpResponse(events(), content_type="text/event-stream")

    application = _configure_django([path("orders", orders)])
    _run_uvicorn(_with_control(application, fanout.publisher, fanout.stats), host, port)


def _serve_aiohttp(
    app: Any,
    host: str,
    port: int,
    publisher: Publisher,
    stats: Callable[[], dict[str, Any]],
    on_start: Callable[[], None] = lambda: None,
) -> None:
    """Serve ``app`` with aiohttp's server and the control routes, announcing ``ready URL``."""
    from aiohttp import web

    async def start(request: web.Request) -> web.Response:
        try:
            rate, seconds, count, burst = parse_start(request.query_string)
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if publisher.running:
            return web.json_response({"error": "already running"}, status=409)
        on_start()
        t0 = publisher.start(rate, seconds, count, burst)
        return web.json_response({"t0": t0}, status=202)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats())

    app.router.add_post("/_bench/start", start)
    app.router.add_get("/_bench/stats", get_stats)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"ready http://{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if publisher.task is not None:
            publisher.task.cancel()
        await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def _control_routes(
    publisher: Publisher,
    stats: Callable[[], dict[str, Any]],
    on_start: Callable[[], None] = lambda: None,
) -> list[Any]:
    """``POST /_bench/start`` and ``GET /_bench/stats`` for a Starlette server."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def start(request: Request) -> Response:
        try:
            rate, seconds, count, burst = parse_start(request.url.query)
        except (KeyError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if publisher.running:
            return JSONResponse({"error": "already running"}, status_code=409)
        on_start()
        t0 = publisher.start(rate, seconds, count, burst)
        return JSONResponse({"t0": t0}, status_code=202)

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats())

    return [Route("/_bench/start", start, methods=["POST"]), Route("/_bench/stats", get_stats)]


def _run_uvicorn(
    app: Any,
    host: str,
    port: int,
    hubs: Sequence[Hub] = (),
    http: Literal["h11", "httptools"] = "h11",
    lifespan: Literal["on", "off"] = "off",
    direct: bool = False,
) -> None:
    """Serve ``app`` with uvicorn, announcing ``ready URL``; watchroutes' ``Server`` also ends
    the hubs' watches on the exit signal, and with ``direct`` serves with the protocols of the
    direct write path (for the peers it is a plain uvicorn server)."""
    import uvicorn

    from watchroutes.adapters.uvicorn import Server

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        backlog=4096,
        loop=UVICORN_LOOP,
        http=http,
    )
    Server(config, hubs=list(hubs), announce=True, direct=direct).run()


def _report_gc() -> None:
    """Print every collection's generation and duration to stderr (diagnostics)."""
    import gc

    began = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            ms = 1e3 * (time.perf_counter() - began[0])
            print(f"gc gen{info['generation']} {ms:.2f} ms", file=sys.stderr, flush=True)

    gc.callbacks.append(callback)


def _install_snapshots(prefix: str) -> None:
    """Trace allocations from now on; on SIGUSR1 write a snapshot and the GC-tracked objects by
    type (see the module docstring)."""
    import gc
    import tracemalloc
    from collections import Counter

    tracemalloc.start(int(os.environ.get("WATCHROUTES_BENCH_TRACE_FRAMES", "12")))
    taken = 0

    def snapshot(signum: int, frame: object) -> None:
        nonlocal taken
        taken += 1
        gc.collect()
        path = f"{prefix}.{taken}"
        tracemalloc.take_snapshot().dump(f"{path}.tracemalloc")
        objects = gc.get_objects()
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for obj in objects:
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        report = {
            "gc_objects": len(objects),
            "traced": tracemalloc.get_traced_memory()[0],
            "types": {k: [counts[k], sizes[k]] for k in counts},
        }
        del objects
        with open(f"{path}.json", "w") as out:
            json.dump(report, out)
        print(f"snapshot {path}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, snapshot)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("server", choices=SERVERS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to; -1: do not pin")
    args = parser.parse_args(argv)
    pin_to_cpu(None if args.cpu < 0 else args.cpu)
    raise_open_files_limit()
    if os.environ.get("WATCHROUTES_BENCH_GC") == "off":  # to tell collector pauses apart
        import gc

        gc.disable()
    snapshot_to = os.environ.get("WATCHROUTES_BENCH_SNAPSHOT")
    if snapshot_to:
        _install_snapshots(snapshot_to)
    gc_mode = os.environ.get("WATCHROUTES_BENCH_GC", "")
    if gc_mode == "stats":
        _report_gc()
    elif gc_mode.startswith("threshold:"):  # e.g. threshold:10000,10,10
        import gc

        gc.set_threshold(*map(int, gc_mode.split(":", 1)[1].split(",")))
    profile_to = os.environ.get("WATCHROUTES_BENCH_PROFILE")
    if profile_to:  # cProfile the server; the stats go to this path + the server's name
        import cProfile

        # uvicorn re-raises the exit signal once it has shut down, which would end the process
        # before the stats are written: exit normally instead.
        signal.raise_signal = lambda signum: None
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            serve(args)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{args.server}")
    else:
        serve(args)
    sys.exit(0)


def serve(args: argparse.Namespace) -> None:
    if args.server == "watchroutes":
        run_watchroutes(args.host, args.port)
    elif args.server == "watchroutes-httptools":
        run_watchroutes(args.host, args.port, http="httptools")
    elif args.server == "watchroutes-asgi":
        run_watchroutes(args.host, args.port, http="httptools", direct=False)
    elif args.server == "watchroutes-aiohttp":
        run_watchroutes_aiohttp(args.host, args.port)
    elif args.server == "broadcaster":
        run_broadcaster(args.host, args.port)
    elif args.server in ("asgi-floor", "starlette-floor"):
        run_floor(args.host, args.port, starlette=args.server == "starlette-floor")
    elif args.server == "sse-starlette":
        run_sse_starlette(args.host, args.port)
    elif args.server == "aiohttp":
        run_aiohttp(args.host, args.port)
    elif args.server == "flask":
        run_flask(args.host, args.port)
    elif args.server == "flask-generator":
        run_flask_generator(args.host, args.port)
    elif args.server == "django":
        run_django(args.host, args.port)
    elif args.server == "django-streaming":
        run_django_streaming(args.host, args.port)
    elif args.server == "raw-uvloop":
        import uvloop

        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_raw(args.host, args.port))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_raw(args.host, args.port))


if __name__ == "__main__":
    main()
