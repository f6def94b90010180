"""SSE fan-out: watchroutes next to the raw-asyncio ceiling and the peers, paced, one event per
loop turn, and in grouped bursts.

Run it from the repository root::

    .venv/bin/python benchmarks/sse_fanout.py             # the tables in docs/benchmarks.md
    .venv/bin/python benchmarks/sse_fanout.py --quick     # 1,000 watchers, one run each
    .venv/bin/python benchmarks/sse_fanout.py --paced 1000:10 --per-turn 1000 --burst 1000 \\
        --repeat 1 --servers watchroutes,raw

Three cases, each for every server in ``--servers`` (default: all of
``sse_fanout_servers.DEFAULT_SERVERS``, every server but the Flask and Django ones, which are
compared with ``--servers flask,flask-generator,django,django-streaming``; then *vs peer*
divides each by its hand-written peer):

* **paced** (``--paced WATCHERS:RATE[,RATE...]``, default ``100:100``, ``1000:10`` and
  ``5000:2``: 10,000 deliveries per second each): the server publishes RATE events per second
  for ``--duration`` seconds (default 10) on an absolute schedule. Columns: publish-to-receive
  latency p50/p99/p99.9 (over every event of ``--sample`` watchers spread evenly over the
  connection order, default 200), *p99 vs raw*, server CPU and server CPU µs per delivery,
  and *kept up* (deliveries in the window ÷ published x watchers; 0.98 or more means the server
  and the load generator kept up).
* **per-turn** (``--per-turn WATCHERS[,WATCHERS...]``, default ``100,1000,5000``): the
  server publishes ``--turn-deliveries`` ÷ WATCHERS events (default 300,000 deliveries per run)
  as fast as it fans them out, **one event per turn of its event loop** (``await sleep(0)``
  after each publish): an app whose writes arrive one request or one broker message at a
  time. A system that wakes a task per watcher wakes every one of them for every event, and
  each writes that one event.
* **burst-grouped** (``--burst WATCHERS[,WATCHERS...]``, default ``100,1000,5000``): the same
  with ``--group`` events (default 20) back to back per loop turn and ``--deliveries`` ÷
  WATCHERS events (default 1,000,000 deliveries per run). A system that batches (a woken
  watcher writes everything queued with one send) writes each group once per watcher, the
  raw server still once per event and watcher: this measures batching, not the per-delivery
  cost.

Both throughput cases report deliveries per second from the first publish to the last
delivery, *vs raw*, *vs sse-starlette*, server CPU µs per delivery and *CPU vs raw*, in one
table (column *mode*) and in a summary grid per mode.

For every run a fresh server process (``sse_fanout_servers.py``, pinned to CPU 0) is started;
this process, the load generator, pins itself to CPU 1. It opens the watchers (raw asyncio
sockets to 127.0.0.1, ``Accept: text/event-stream``), waits until every one has its first
bytes, then asks the server (``POST /_bench/start``) to publish. Each event carries its publish
time (``time.monotonic_ns()``, one clock for every process on Linux). Every connection counts
its ``data:`` lines; the sampled ones also parse every ``id:`` and every ``"t":``. A run
*loses* events when a watcher the server did not close ends with fewer than were published,
*duplicates* when one gets more, or a sampled one sees an id that is not above the one before;
the benchmark exits non-zero if any run lost or duplicated anything. *dropped* counts watchers
the server closed (watchroutes' slow-consumer limit; such a client would resume).

``--repeat`` runs of each configuration (default 3, cells are medians), interleaved across
servers; ``--json PATH`` writes every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from sse_fanout_servers import DEFAULT_SERVERS, PEERS, SERVERS, pin_to_cpu, raise_open_files_limit

HERE: Final = Path(__file__).resolve().parent
SERVER_SCRIPT: Final = HERE / "sse_fanout_servers.py"
DEFAULT_PACED: Final = ("100:100", "1000:10", "5000:2")
DEFAULT_BURSTS: Final = "100,1000,5000"
DEFAULT_PER_TURN: Final = "100,1000,5000"
#: The publisher modes: a fixed rate (latency), one event per event-loop turn and groups of
#: ``--group`` events per turn (throughput).
PER_TURN: Final = "per-turn"
BURST: Final = "burst-grouped"
MODES: Final = ("paced", PER_TURN, BURST)
#: --quick: one run of each case at 1,000 watchers, for the servers a change is judged by.
QUICK_SERVERS: Final = "watchroutes,watchroutes-aiohttp,raw,sse-starlette,aiohttp"

DATA: Final = b"data: "
TAIL: Final = len(DATA) - 1
STAMP: Final = re.compile(rb'"t":(\d+)')
#: The id of a block that carries data: an id-only block (watchroutes' bookmark, every 15 s
#: by default) repeats the newest id and is no duplicate.
EVENT_ID: Final = re.compile(rb"^id: (\d+)\r?\n(?:event: [^\r\n]*\r?\n)?data: ", re.MULTILINE)
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")

#: Seconds allowed for: the server to print ``ready``, all watchers to connect and get their
#: first bytes, a control request, the server to exit after SIGTERM.
STARTUP_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 60.0
CONTROL_TIMEOUT: Final = 10.0
EXIT_TIMEOUT: Final = 10.0
#: Connections being opened at once (keeps the listen backlog from overflowing).
CONNECT_CONCURRENCY: Final = 100
#: Pause after the last watcher got its first bytes, so the initial-events-end bookmark is
#: counted before the baseline is taken.
SETTLE: Final = 0.5


class BenchmarkError(Exception):
    """A run that could not be completed (it is retried)."""


class Completion:
    """Set once every watcher has all the events it expects, or has been closed."""

    def __init__(self, watchers: int) -> None:
        self.remaining = watchers
        self.event = asyncio.Event()
        self.last = 0  # monotonic ns of the last watcher's completion

    def one_done(self) -> None:
        self.remaining -= 1
        self.last = time.monotonic_ns()
        if self.remaining <= 0:
            self.event.set()


class Watcher(asyncio.Protocol):
    """One SSE connection: counts ``data:`` lines; a sampled one also checks every id and
    records every event's latency."""

    def __init__(self, request: bytes, sampled: bool) -> None:
        self.request = request
        self.sampled = sampled
        self.latencies: list[int] = []
        self.last_id = -1
        self.disorder = 0  # ids not above the previous one (a duplicate or a reordering)
        self.count = 0
        self.base = 0  # count when the publisher started
        self.carry = b""  # the end of the last read when it may be the start of "data: "
        self.pending = bytearray()
        self.status_ok: bool | None = None
        self.first_bytes = asyncio.get_running_loop().create_future()
        self.closed = False
        self.closing = False  # we closed it (not the server)
        self.transport: asyncio.Transport | None = None
        self.goal = 0
        self.completion: Completion | None = None
        self.reported: Completion | None = None

    def expect(self, events: int, completion: Completion) -> None:
        """Report to ``completion`` once ``events`` arrived after the baseline (or at close);
        to each completion once (a burst asks twice: before and after the publisher ends)."""
        if completion is self.reported:
            return
        self.goal = self.base + events
        self.completion = completion
        self._check_done()

    def _check_done(self) -> None:
        completion = self.completion
        if completion is not None and (self.closed or self.count >= self.goal):
            self.completion = None
            self.reported = completion
            completion.one_done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status_ok is None:
            # (101: a WebSocket handshake, for the idle-memory benchmark)
            self.status_ok = data.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 101 "))
            if not self.first_bytes.done():
                self.first_bytes.set_result(self.status_ok)
        count = data.count(DATA)
        carry = self.carry
        if carry:  # the last read ended inside a "data: ": any match here starts in carry
            count += (carry + data[:TAIL]).count(DATA)
        self.count += count
        # A read that ends with a newline cannot end inside "data: " (no prefix has one).
        if data.endswith(b"\n"):
            self.carry = b""
        else:
            self.carry = data[-TAIL:] if len(data) >= TAIL else (carry + data)[-TAIL:]
        if self.sampled:
            self.parse_blocks(data)
        if self.completion is not None:
            self._check_done()

    def parse_blocks(self, data: bytes) -> None:
        received = time.monotonic_ns()
        pending = self.pending
        pending += data
        # Whole blocks only (an id or a timestamp may be cut by a read boundary); a block ends
        # with a blank line, LF or CRLF (sse-starlette writes CRLF).
        end = max(pending.rfind(b"\n\n"), pending.rfind(b"\n\r\n"))
        if end < 0:
            return
        last = self.last_id
        for match in EVENT_ID.finditer(pending, 0, end):
            rv = int(match[1])
            if rv <= last:
                self.disorder += 1
            last = rv
        self.last_id = last
        self.latencies.extend(received - int(match[1]) for match in STAMP.finditer(pending, 0, end))
        del pending[: pending.index(b"\n", end + 1) + 1]

    def baseline(self) -> None:
        self.base = self.count
        self.latencies.clear()
        self.disorder = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.first_bytes.done():
            self.first_bytes.set_result(False)
        self._check_done()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class Result:
    server: str
    mode: str  # "paced", "per-turn" or "burst-grouped" (MODES)
    watchers: int
    rate: float  # paced: target events/s; otherwise 0
    seconds: float  # paced: the publishing window; otherwise first publish to last delivery
    published: int
    #: Paced: deliveries in the window ÷ its length; otherwise all deliveries ÷ ``seconds``.
    delivered_per_s: float
    #: Paced: deliveries in the window ÷ (published in it x watchers).
    kept_up: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    latency_samples: int
    encodes_per_event: float | None
    server_cpu: float  # share of one core
    cpu_us_per_delivery: float | None
    client_cpu: float
    dropped: int
    lost: int
    duplicated: int


class ServerProcess:
    """A server subprocess: started, announced, and always terminated."""

    def __init__(self, kind: str, cpu: int) -> None:
        self.kind = kind
        self.cpu = cpu
        self.proc: asyncio.subprocess.Process | None = None
        self.host = "127.0.0.1"
        self.port = 0

    async def __aenter__(self) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVER_SCRIPT),
            self.kind,
            "--host",
            self.host,
            "--port",
            "0",
            "--cpu",
            str(self.cpu),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_TIMEOUT)
            match = re.fullmatch(rb"ready http://([\d.]+):(\d+)\s*", line)
            if match is None:
                raise BenchmarkError(f"{self.kind} server did not announce itself: {line!r}")
            self.port = int(match[2])
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def cpu_seconds(self) -> float:
        """utime + stime of the server process and its children (gunicorn's worker), from
        /proc (clock-tick resolution)."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    async def control(self, method: str, target: str) -> Any:
        """One request on its own connection (``Connection: close``); the JSON body."""

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(
                    f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                return await reader.read()
            finally:
                writer.close()

        try:
            response = await asyncio.wait_for(exchange(), CONTROL_TIMEOUT)
        except TimeoutError:
            raise BenchmarkError(f"{method} {target}: no answer in {CONTROL_TIMEOUT:g} s") from None
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status >= 300:
            raise BenchmarkError(f"{method} {target}: {status} {body[:200]!r}")
        return json.loads(body)

    async def stats(self, deadline: float) -> Any:
        """``GET /_bench/stats``, asked again until ``deadline`` while a server busy draining
        its queues cannot answer in time."""
        while True:
            try:
                return await self.control("GET", "/_bench/stats")
            except BenchmarkError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live descendants, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            for child in (task / "children").read_text().split():
                total += process_cpu_seconds(int(child))
    return total


async def open_watchers(
    server: ServerProcess,
    count: int,
    sample: int,
    target: str = "/orders",
    accept: str = "text/event-stream",
    headers: str = "",
) -> list[Watcher]:
    """Open ``count`` watchers (SSE unless ``target`` and ``accept`` ask otherwise); ``sample``
    of them, spread evenly over the connection order (a server that serves watchers in the
    order they came must not look faster because only the first ones are timed), check ids and
    time events. ``headers`` are more request header lines, each ending in CRLF (a WebSocket
    handshake's)."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nAccept: {accept}\r\n"
        f"{headers}\r\n"
    ).encode()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    every = count / sample if sample else 0.0
    sampled = {int(i * every) for i in range(min(sample, count))}
    watchers = [Watcher(request, i in sampled) for i in range(count)]

    async def connect(watcher: Watcher) -> None:
        async with gate:
            await loop.create_connection(lambda: watcher, server.host, server.port)
            await watcher.first_bytes

    try:
        # one at a time through the gate, in order: the connection order is the list's
        await asyncio.wait_for(
            asyncio.gather(*(connect(w) for w in watchers)),
            CONNECT_TIMEOUT,
        )
    except (TimeoutError, OSError) as exc:
        close_all(watchers)
        raise BenchmarkError(f"connecting {count} watchers failed: {exc!r}") from exc
    if not all(w.status_ok and not w.closed for w in watchers):
        close_all(watchers)
        raise BenchmarkError("a watcher was refused or closed before the start")
    return watchers


def close_all(watchers: Iterable[Watcher]) -> None:
    for watcher in watchers:
        watcher.close()


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


@dataclass
class Case:
    mode: str  # one of MODES
    watchers: int
    rate: float = 0.0  # paced
    events: int = 0  # per-turn and burst-grouped
    repeat: int = 1  # runs of this case (``--repeat``, or fewer with ``--repeat-at``)


async def run_once(kind: str, case: Case, args: argparse.Namespace) -> Result:
    async with ServerProcess(kind, args.server_cpu) as server:
        watchers = await open_watchers(server, case.watchers, args.sample)
        try:
            await asyncio.sleep(SETTLE)
            for w in watchers:
                w.baseline()
            baseline = sum(w.base for w in watchers)
            if case.mode == "paced":
                count = round(case.rate * args.duration)
                query = f"rate={case.rate:g}&seconds={args.duration:g}&count={count}"
            else:
                count = case.events
                group = 1 if case.mode == PER_TURN else args.group
                query = f"rate=1&seconds={args.drain:g}&count={count}&burst={group}"
            server_cpu0 = server.cpu_seconds()
            client_cpu0 = time.process_time()
            started = await server.control("POST", f"/_bench/start?{query}")
            t0: int = started["t0"]
            done = Completion(len(watchers))
            if case.mode == "paced":
                end = t0 + args.duration * 1e9
                await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
                in_window = sum(w.count for w in watchers) - baseline
                t1 = time.monotonic_ns()
                server_cpu = server.cpu_seconds() - server_cpu0
                client_cpu = time.process_time() - client_cpu0
            else:
                for w in watchers:
                    w.expect(count, done)
            # Let the publisher finish, then wait for the last events (bounded by --drain).
            deadline = time.monotonic() + args.drain
            stats = await server.stats(deadline)
            # (A saturated publisher thread checks its window only between groups, so it may
            # overshoot: its count is read once it has stopped.)
            while stats["running"] and time.monotonic() < deadline + CONTROL_TIMEOUT:
                await asyncio.sleep(0.05)
                stats = await server.stats(deadline)
            published: int = stats["published"]
            if case.mode != "paced" and published < count:  # the publisher ran out of time
                done = Completion(len(watchers))
            for w in watchers:
                w.expect(published, done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.event.wait(), max(0.0, deadline - time.monotonic()))
            if case.mode != "paced":
                t1 = done.last if done.event.is_set() else time.monotonic_ns()
                server_cpu = server.cpu_seconds() - server_cpu0
                client_cpu = time.process_time() - client_cpu0
                in_window = sum(w.count for w in watchers) - baseline
            # Closed by the server (before close_all below marks every watcher as ours).
            alive = [w for w in watchers if not w.closed]
            # Encoder calls once everything was delivered: a lazy per-watcher encode counts.
            stats = await server.stats(time.monotonic() + args.drain)
        finally:
            close_all(watchers)

    got = [w.count - w.base for w in alive]
    lost = sum(max(0, published - n) for n in got)
    duplicated = sum(max(0, n - published) for n in got) + sum(w.disorder for w in watchers)
    latencies = sorted(v for w in watchers for v in w.latencies)
    encodes = stats["encodes"]
    seconds = (t1 - t0) / 1e9
    delivered = in_window
    if case.mode == "paced":
        due = min(published, round(case.rate * seconds)) * case.watchers
        kept_up = in_window / due if due else 0.0
    else:
        kept_up = delivered / (published * case.watchers) if published else 0.0
    return Result(
        server=kind,
        mode=case.mode,
        watchers=case.watchers,
        rate=case.rate,
        seconds=seconds,
        published=published,
        delivered_per_s=delivered / seconds,
        kept_up=kept_up,
        p50_ms=percentile(latencies, 0.50) / 1e6 if latencies else None,
        p99_ms=percentile(latencies, 0.99) / 1e6 if latencies else None,
        p999_ms=percentile(latencies, 0.999) / 1e6 if latencies else None,
        latency_samples=len(latencies),
        encodes_per_event=encodes / published if encodes is not None and published else None,
        server_cpu=server_cpu / seconds,
        cpu_us_per_delivery=1e6 * server_cpu / delivered if delivered else None,
        client_cpu=client_cpu / seconds,
        dropped=len(watchers) - len(alive),
        lost=lost,
        duplicated=duplicated,
    )


async def run_with_retries(kind: str, case: Case, args: argparse.Namespace) -> Result:
    for attempt in range(1, args.attempts + 1):
        gc.collect()
        try:
            return await run_once(kind, case, args)
        except (BenchmarkError, OSError, TimeoutError) as exc:
            print(f"  attempt {attempt} failed: {exc!r}", file=sys.stderr, flush=True)
    raise BenchmarkError(f"{kind} {case} failed {args.attempts} times")


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b, 2) if a is not None and b else "-"


def _groups(results: list[Result], mode: str) -> list[tuple[int, float]]:
    keys: list[tuple[int, float]] = []
    for r in results:
        if r.mode == mode and (r.watchers, r.rate) not in keys:
            keys.append((r.watchers, r.rate))
    return keys


def paced_table(results: list[Result], servers: Sequence[str]) -> str:
    head = (
        "| server | watchers | events/s | p50 ms | p99 ms | p99.9 ms | p99 vs raw | "
        "p99.9 / p99 | server CPU | CPU µs/delivery | kept up | encodes/event | client CPU | "
        "dropped | lost | duplicated |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for watchers, rate in _groups(results, "paced"):
        runs = {
            k: [
                r
                for r in results
                if (r.mode, r.server, r.watchers, r.rate) == ("paced", k, watchers, rate)
            ]
            for k in servers
        }
        raw_p99 = median(r.p99_ms for r in runs.get("raw", []))
        for kind in servers:
            rs = runs[kind]
            if not rs:
                continue
            p99 = median(r.p99_ms for r in rs)
            p999 = median(r.p999_ms for r in rs)
            cells = [
                kind,
                f"{watchers:,}",
                fmt(rate),
                fmt(median(r.p50_ms for r in rs), 1),
                fmt(p99, 1),
                fmt(p999, 1),
                ratio(p99, raw_p99) if kind != "raw" else "-",
                ratio(p999, p99),
                fmt(median(100 * r.server_cpu for r in rs), 0, " %"),
                fmt(median(r.cpu_us_per_delivery for r in rs), 1),
                fmt(median(r.kept_up for r in rs), 3),
                fmt(median(r.encodes_per_event for r in rs), 2),
                fmt(median(100 * r.client_cpu for r in rs), 0, " %"),
                fmt(median(r.dropped for r in rs)),
                fmt(max(r.lost for r in rs)),
                fmt(max(r.duplicated for r in rs)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_table(results: list[Result], servers: Sequence[str]) -> str:
    """Both throughput modes, one row per mode, watcher count and server."""
    head = (
        "| mode | server | watchers | events | deliveries/s | vs raw | vs sse-starlette | "
        "vs peer | server CPU µs/delivery | CPU vs raw | CPU vs peer | client CPU | dropped | "
        "lost | duplicated |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for watchers in sorted({r.watchers for r in results if r.mode != "paced"}):
        for mode in (PER_TURN, BURST):
            runs = {
                k: [r for r in results if (r.mode, r.server, r.watchers) == (mode, k, watchers)]
                for k in servers
            }
            rate = {k: median(r.delivered_per_s for r in rs) for k, rs in runs.items()}
            cpu = {k: median(r.cpu_us_per_delivery for r in rs) for k, rs in runs.items()}
            for kind in servers:
                rs = runs[kind]
                if not rs:
                    continue
                cells = [
                    mode,
                    kind,
                    f"{watchers:,}",
                    fmt(median(r.published for r in rs)),
                    fmt(rate[kind]),
                    ratio(rate[kind], rate.get("raw")) if kind != "raw" else "-",
                    ratio(rate[kind], rate.get("sse-starlette"))
                    if kind != "sse-starlette"
                    else "-",
                    ratio(rate[kind], rate.get(PEERS[kind])) if kind in PEERS else "-",
                    fmt(cpu[kind], 1),
                    ratio(cpu[kind], cpu.get("raw")) if kind != "raw" else "-",
                    ratio(cpu[kind], cpu.get(PEERS[kind])) if kind in PEERS else "-",
                    fmt(median(100 * r.client_cpu for r in rs), 0, " %"),
                    fmt(median(r.dropped for r in rs)),
                    fmt(max(r.lost for r in rs)),
                    fmt(max(r.duplicated for r in rs)),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_grid(results: list[Result], servers: Sequence[str], mode: str, what: str) -> str:
    """One mode as a grid: watchers down, servers across; ``what`` is ``"rate"`` (deliveries/s
    and x raw) or ``"cpu"`` (server CPU µs per delivery and x raw) or ``"p99"`` (paced)."""
    shown = [k for k in servers if any(r.mode == mode and r.server == k for r in results)]
    lines = [
        "| watchers | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for watchers in sorted({r.watchers for r in results if r.mode == mode}):
        value: dict[str, float | None] = {}
        for kind in shown:
            rs = [r for r in results if (r.mode, r.server, r.watchers) == (mode, kind, watchers)]
            if what == "rate":
                value[kind] = median(r.delivered_per_s for r in rs)
            elif what == "cpu":
                value[kind] = median(r.cpu_us_per_delivery for r in rs)
            else:
                value[kind] = median(r.p99_ms for r in rs)
        cells = []
        for kind in shown:
            v = value[kind]
            shown_value = fmt(v / 1000, 1, "k") if what == "rate" and v is not None else fmt(v, 1)
            if kind != "raw" and "raw" in value:
                shown_value += f" ({ratio(v, value['raw'])})"
            cells.append(shown_value)
        lines.append(f"| {watchers:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repeat_note(args: argparse.Namespace) -> str:
    """`` (5,000 watchers: 1)`` for ``--repeat-at 5000:1``."""
    specs = [s.split(":") for s in args.repeat_at or ()]
    return "".join(f" ({int(w):,} watchers: {n})" for w, n in specs)


def load_average() -> str:
    """The 1-minute load average (other work on the machine shows here)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def versions() -> str:
    found = [f"Python {sys.version.split()[0]}"]
    for name in (
        "watchroutes",
        "starlette",
        "uvicorn",
        "h11",
        "httptools",
        "anyio",
        "uvloop",
        "flask",
        "gunicorn",
        "django",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def parse_cases(args: argparse.Namespace) -> list[Case]:
    cases: list[Case] = []
    for spec in filter(None, args.paced if args.paced is not None else DEFAULT_PACED):
        count, _, rates = spec.partition(":")
        try:
            cases.extend(Case("paced", int(count), rate=float(r)) for r in rates.split(","))
        except ValueError:
            raise SystemExit(f"bad --paced {spec!r}: use WATCHERS:RATE[,RATE...]") from None
    throughput = (
        (PER_TURN, "--per-turn", args.per_turn, DEFAULT_PER_TURN, args.turn_deliveries),
        (BURST, "--burst", args.burst, DEFAULT_BURSTS, args.deliveries),
    )
    for mode, flag, given, default, deliveries in throughput:
        counts = given if given is not None else default
        try:
            for count in filter(None, counts.split(",")):
                watchers = int(count)
                cases.append(Case(mode, watchers, events=max(1, deliveries // watchers)))
        except ValueError:
            raise SystemExit(f"bad {flag} {counts!r}: use WATCHERS[,WATCHERS...]") from None
    repeats: dict[int, int] = {}
    for spec in args.repeat_at or ():
        count, _, times = spec.partition(":")
        try:
            repeats[int(count)] = int(times)
        except ValueError:
            raise SystemExit(f"bad --repeat-at {spec!r}: use WATCHERS:RUNS") from None
    for case in cases:
        if case.watchers < 1 or (case.mode == "paced" and case.rate <= 0):
            raise SystemExit("watchers must be at least 1 and rates positive")
        case.repeat = min(args.repeat, repeats.get(case.watchers, args.repeat))
    return cases


async def main_async(
    args: argparse.Namespace, servers: Sequence[str], results: list[Result], failed: list[str]
) -> None:
    """Run every case; a configuration that fails every attempt is noted in ``failed`` and
    the run goes on (a peer that cannot keep up at 5,000 watchers must not hide the rest)."""
    cases = parse_cases(args)
    # Repeats are the outer loop and servers alternate, so a burst of load from elsewhere on
    # the machine hits one run of several configurations rather than every run of one.
    for repeat in range(1, args.repeat + 1):
        for case in cases:
            if repeat > case.repeat:
                continue
            for kind in servers:
                what = f"{case.rate:g}/s" if case.mode == "paced" else f"{case.events} events"
                print(
                    f"[{repeat}/{args.repeat}] {kind}: {case.mode}, {case.watchers} watchers, "
                    f"{what}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    r = await run_with_retries(kind, case, args)
                except BenchmarkError as exc:
                    print(f"  {exc}", file=sys.stderr, flush=True)
                    failed.append(f"{kind} {case.mode} {case.watchers} watchers")
                    continue
                print(
                    f"  {r.delivered_per_s:,.0f} deliveries/s, kept up {r.kept_up:.3f}, "
                    f"p50 {fmt(r.p50_ms, 1)} p99 {fmt(r.p99_ms, 1)} p99.9 {fmt(r.p999_ms, 1)} ms "
                    f"({r.latency_samples} samples), server CPU {100 * r.server_cpu:.0f} % "
                    f"({fmt(r.cpu_us_per_delivery, 1)} µs/delivery), client CPU "
                    f"{100 * r.client_cpu:.0f} %, dropped {r.dropped}, lost {r.lost}, "
                    f"duplicated {r.duplicated}",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
                if args.json is not None:  # every run so far, should a later one hang
                    args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--paced", action="append", metavar="WATCHERS:RATE[,RATE...]", help='"" for none'
    )
    parser.add_argument(
        "--per-turn", metavar="WATCHERS[,WATCHERS...]", help='one event per loop turn; "" for none'
    )
    parser.add_argument(
        "--burst", metavar="WATCHERS[,WATCHERS...]", help='grouped bursts; "" for none'
    )
    parser.add_argument("--quick", action="store_true", help="1,000 watchers, one run each")
    parser.add_argument("--duration", type=float, default=10.0, help="paced: seconds")
    parser.add_argument("--deliveries", type=int, default=1_000_000, help="burst: per run")
    parser.add_argument(
        "--turn-deliveries", type=int, default=300_000, help="per-turn: deliveries per run"
    )
    parser.add_argument("--group", type=int, default=20, help="burst: events per loop turn")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--repeat-at",
        action="append",
        metavar="WATCHERS:RUNS",
        help="fewer runs for the cases of that many watchers (e.g. 5000:1)",
    )
    parser.add_argument("--servers", default=None, help=f"default: {','.join(DEFAULT_SERVERS)}")
    parser.add_argument("--sample", type=int, default=200, help="watchers checking ids")
    parser.add_argument("--drain", type=float, default=60.0, help="max seconds to drain")
    parser.add_argument("--attempts", type=int, default=3, help="tries per run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.paced = args.paced or ["1000:10"]
        args.burst = "1000" if args.burst is None else args.burst
        args.per_turn = "1000" if args.per_turn is None else args.per_turn
        args.repeat, args.duration = 1, 5.0
        args.deliveries = min(args.deliveries, 300_000)
        args.turn_deliveries = min(args.turn_deliveries, 100_000)
        args.servers = args.servers or QUICK_SERVERS
    servers = [s for s in (args.servers or ",".join(DEFAULT_SERVERS)).split(",") if s]
    for kind in servers:
        if kind not in SERVERS:
            parser.error(f"unknown server {kind!r}; choose from {', '.join(SERVERS)}")
    if args.duration <= 0 or args.repeat < 1 or args.attempts < 1 or args.group < 1:
        parser.error("--duration, --repeat, --attempts and --group must be positive")

    pin_to_cpu(None if args.client_cpu < 0 else args.client_cpu)
    raise_open_files_limit()
    started = time.monotonic()
    load_before = load_average()
    results: list[Result] = []
    failed: list[str] = []
    with contextlib.suppress(KeyboardInterrupt):  # ^C prints the tables of what has run
        asyncio.run(main_async(args, servers, results, failed))
    if any(r.mode == "paced" for r in results):
        print(f"\nPaced ({args.duration:g} s of publishing per run)\n")
        print(paced_table(results, servers))
    if any(r.mode != "paced" for r in results):
        print(
            f"\nThroughput: per-turn (one event per event-loop turn) and burst-grouped "
            f"({args.group} events per turn)\n"
        )
        print(throughput_table(results, servers))
    grids = (
        ("paced", "p99", "paced: p99 ms at 10,000 deliveries/s (x raw)"),
        ("paced", "cpu", "paced: server CPU µs per delivery (x raw)"),
        (PER_TURN, "rate", "per-turn: deliveries/s (x raw)"),
        (PER_TURN, "cpu", "per-turn: server CPU µs per delivery (x raw)"),
        (BURST, "rate", "burst-grouped: deliveries/s (x raw)"),
        (BURST, "cpu", "burst-grouped: server CPU µs per delivery (x raw)"),
    )
    for mode, what, title in grids:
        if any(r.mode == mode for r in results):
            print(f"\n{title}\n")
            print(summary_grid(results, servers, mode, what))
    print(
        f"\n{args.repeat} runs per row{repeat_note(args)} (medians; lost and duplicated: the worst "
        "run); "
        f"{time.monotonic() - started:.0f} s in all.\n{os.cpu_count()} CPUs, server on CPU "
        f"{args.server_cpu}, load generator on CPU {args.client_cpu}; load average "
        f"{load_before} before, {load_average()} after.\n{versions()}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if failed:  # in the printed table's notes too, not only on stderr
        print(f"No result (every attempt failed): {'; '.join(failed)}.")
    bad = [r for r in results if r.lost or r.duplicated]
    for r in bad:
        print(
            f"FAILED: {r.server} {r.mode} {r.watchers} watchers lost {r.lost} and "
            f"duplicated {r.duplicated} events",
            file=sys.stderr,
        )
    # A peer that cannot finish a case is a finding; watchroutes failing one is a failure.
    if bad or any(what.startswith("watchroutes") for what in failed):
        sys.exit(1)


if __name__ == "__main__":
    main()
