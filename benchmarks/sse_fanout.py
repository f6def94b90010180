"""SSE fan-out: watchroutes (Starlette on uvicorn) next to a raw-asyncio SSE server.

Run it from the repository root::

    .venv/bin/python benchmarks/sse_fanout.py                   # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/sse_fanout.py --watchers 1000 --rate 50,200 --duration 4
    .venv/bin/python benchmarks/sse_fanout.py --run 1:1000 --run 1000:50,200 --repeat 1

The default (``1:1000`` and ``1000:50,200,1000``, 3 repeats) takes about four minutes.

Flags: ``--run WATCHERS:RATE[,RATE...]`` (repeatable; the default is given above)
or ``--watchers N --rate R[,R...]`` for one watcher count; ``--duration`` seconds of
publishing (default 4); ``--repeat`` runs of each configuration (default 3, the table shows
medians); ``--servers`` (default: all of watchroutes, raw, raw-uvloop, sse-starlette,
aiohttp); ``--sample`` connections that parse timestamps (default 50); ``--drain``
seconds to wait for the last events (default 15); ``--json PATH`` writes every run's numbers.

For every run a fresh server process (``sse_fanout_servers.py``, pinned to CPU 0) is started;
this process, the load generator, pins itself to CPU 1. It opens the watchers (raw asyncio
sockets to 127.0.0.1, ``Accept: text/event-stream``), waits until every one has its first
bytes, then asks the server (``POST /_bench/start``) to publish ``rate`` events per second for
``duration`` seconds. The publisher is open loop: events that fall due while the server is
busy are published in a burst when it next runs. Each event carries its publish time
(``time.monotonic_ns()``, one clock for every process on Linux). Every connection counts its
``data:`` lines; up to ``--sample`` of them also parse each event's ``"t":`` for the
publish-to-receive latency.

Columns: *published/s* is what the server's publisher achieved (below the target when the
server's event loop is saturated); *delivered/s* is events received by all watchers together
between the publisher's start and the end of the window, divided by its length; *expected/s*
is rate x watchers; *watchroutes/raw* divides watchroutes' delivered/s by raw's; *p50/p99* are
publish-to-receive latencies over every event the sampled connections received (the drain
after the window included, so a backlog shows); *encodes/event* is calls of watchroutes' JSON
encoder per published event; *server CPU* and *client CPU* are each process's CPU time over
the window (100 % = one core); *dropped* counts watchers the server closed (its slow-consumer
limit). Each cell is the median of the runs.
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

from sse_fanout_servers import SERVERS, pin_to_cpu, raise_open_files_limit

HERE: Final = Path(__file__).resolve().parent
SERVER_SCRIPT: Final = HERE / "sse_fanout_servers.py"
DEFAULT_RUNS: Final = ("1:1000", "1000:50,200,1000")

DATA: Final = b"data: "
TAIL: Final = len(DATA) - 1
STAMP: Final = re.compile(rb'"t":(\d+)')
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")

#: Seconds allowed for: the server to print ``ready``, all watchers to connect and get their
#: first bytes, a control request, the server to exit after SIGTERM.
STARTUP_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 30.0
CONTROL_TIMEOUT: Final = 10.0
EXIT_TIMEOUT: Final = 10.0
#: Connections being opened at once (keeps the listen backlog from overflowing).
CONNECT_CONCURRENCY: Final = 100
#: Pause after the last watcher got its first bytes, so the initial-events-end bookmark is
#: counted before the baseline is taken.
SETTLE: Final = 0.3


class BenchmarkError(Exception):
    """A run that could not be completed (it is retried)."""


class Completion:
    """Set once every watcher has all the events it expects, or has been closed."""

    def __init__(self, watchers: int) -> None:
        self.remaining = watchers
        self.event = asyncio.Event()

    def one_done(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.event.set()


class Watcher(asyncio.Protocol):
    """One SSE connection: counts ``data:`` lines; a sampled one also records latencies."""

    def __init__(self, request: bytes, latencies: list[int] | None) -> None:
        self.request = request
        self.latencies = latencies  # None: not sampled
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

    def expect(self, events: int, completion: Completion) -> None:
        """Report to ``completion`` once ``events`` arrived after the baseline (or at close)."""
        self.goal = self.base + events
        self.completion = completion
        self._check_done()

    def _check_done(self) -> None:
        completion = self.completion
        if completion is not None and (self.closed or self.count >= self.goal):
            self.completion = None
            completion.one_done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status_ok is None:
            self.status_ok = data.startswith(b"HTTP/1.1 200 ")
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
        if self.latencies is not None:
            self.record_latencies(data)
        if self.completion is not None:
            self._check_done()

    def record_latencies(self, data: bytes) -> None:
        assert self.latencies is not None
        received = time.monotonic_ns()
        pending = self.pending
        pending += data
        # Whole blocks only (a timestamp may be cut by a read boundary); a block ends with a
        # blank line, LF or CRLF (sse-starlette writes CRLF).
        end = max(pending.rfind(b"\n\n"), pending.rfind(b"\n\r\n"))
        if end >= 0:
            for match in STAMP.finditer(pending, 0, end):
                self.latencies.append(received - int(match[1]))
            del pending[: pending.index(b"\n", end + 1) + 1]

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
    watchers: int
    rate: float
    duration: float
    published: int
    published_per_s: float
    delivered_in_window: int
    delivered_per_s: float
    delivered_total: int
    expected_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    latency_samples: int
    encodes_per_event: float | None
    server_cpu: float
    client_cpu: float
    dropped: int
    #: Events never received by the end of the drain (published x watchers - delivered).
    undelivered: int


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
        """utime + stime of the server process, from /proc (clock-tick resolution)."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

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

        response = await asyncio.wait_for(exchange(), CONTROL_TIMEOUT)
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status >= 300:
            raise BenchmarkError(f"{method} {target}: {status} {body[:200]!r}")
        return json.loads(body)


async def open_watchers(server: ServerProcess, count: int, sample: int) -> list[Watcher]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET /orders HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    watchers = [Watcher(request, [] if i < sample else None) for i in range(count)]

    async def connect(watcher: Watcher) -> None:
        async with gate:
            await loop.create_connection(lambda: watcher, server.host, server.port)
            await watcher.first_bytes

    try:
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


async def run_once(
    kind: str,
    watchers_count: int,
    rate: float,
    *,
    duration: float,
    sample: int,
    drain: float,
    server_cpu: int,
) -> Result:
    async with ServerProcess(kind, server_cpu) as server:
        watchers = await open_watchers(server, watchers_count, sample)
        try:
            await asyncio.sleep(SETTLE)
            for w in watchers:
                w.base = w.count
            baseline = sum(w.base for w in watchers)
            for w in watchers:
                if w.latencies is not None:
                    w.latencies.clear()
            count = round(rate * duration)
            started = await server.control(
                "POST", f"/_bench/start?rate={rate:g}&seconds={duration:g}&count={count}"
            )
            t0: int = started["t0"]
            server_cpu0 = server.cpu_seconds()
            client_cpu0 = time.process_time()
            wall0 = time.monotonic_ns()
            await asyncio.sleep(max(0.0, (t0 + duration * 1e9 - time.monotonic_ns()) / 1e9))
            in_window = sum(w.count for w in watchers) - baseline
            t1 = time.monotonic_ns()
            server_busy = (server.cpu_seconds() - server_cpu0) / ((t1 - wall0) / 1e9)
            client_busy = (time.process_time() - client_cpu0) / ((t1 - wall0) / 1e9)
            window = (t1 - t0) / 1e9

            # Let the publisher finish, then wait for the last events (bounded by --drain).
            stats = await server.control("GET", "/_bench/stats")
            deadline = time.monotonic() + drain
            while stats["running"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                stats = await server.control("GET", "/_bench/stats")
            published: int = stats["published"]
            done = Completion(len(watchers))
            for w in watchers:
                w.expect(published, done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.event.wait(), max(0.0, deadline - time.monotonic()))
            delivered_total = sum(w.count for w in watchers) - baseline
            dropped = sum(1 for w in watchers if w.closed and not w.closing)
            # Encoder calls once everything was delivered: a lazy per-watcher encode counts.
            stats = await server.control("GET", "/_bench/stats")
        finally:
            close_all(watchers)

    latencies = sorted(v for w in watchers if w.latencies is not None for v in w.latencies)
    encodes = stats["encodes"]
    return Result(
        server=kind,
        watchers=watchers_count,
        rate=rate,
        duration=duration,
        published=published,
        published_per_s=published / duration,
        delivered_in_window=in_window,
        delivered_per_s=in_window / window,
        delivered_total=delivered_total,
        expected_per_s=rate * watchers_count,
        p50_ms=percentile(latencies, 0.50) / 1e6 if latencies else None,
        p99_ms=percentile(latencies, 0.99) / 1e6 if latencies else None,
        latency_samples=len(latencies),
        encodes_per_event=encodes / published if encodes is not None and published else None,
        server_cpu=server_busy,
        client_cpu=client_busy,
        dropped=dropped,
        undelivered=published * watchers_count - delivered_total,
    )


async def run_with_retries(
    kind: str, watchers: int, rate: float, args: argparse.Namespace
) -> Result:
    for attempt in range(1, args.attempts + 1):
        gc.collect()
        try:
            return await run_once(
                kind,
                watchers,
                rate,
                duration=args.duration,
                sample=args.sample,
                drain=args.drain,
                server_cpu=args.server_cpu,
            )
        except (BenchmarkError, OSError, TimeoutError) as exc:
            print(f"  attempt {attempt} failed: {exc!r}", file=sys.stderr, flush=True)
    raise BenchmarkError(f"{kind} {watchers}x{rate:g}/s failed {args.attempts} times")


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def table(results: list[Result], servers: Sequence[str]) -> str:
    configs: list[tuple[int, float]] = []
    for r in results:
        if (r.watchers, r.rate) not in configs:
            configs.append((r.watchers, r.rate))
    head = (
        "| server | watchers | target rate/s | published/s | delivered events/s | "
        "expected events/s | watchroutes/raw | p50 ms | p99 ms | encodes/event | "
        "server CPU | client CPU | dropped watchers | undelivered events |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for watchers, rate in configs:
        delivered: dict[str, float | None] = {}
        for kind in servers:
            runs = [r for r in results if (r.server, r.watchers, r.rate) == (kind, watchers, rate)]
            delivered[kind] = median(r.delivered_per_s for r in runs)
        for kind in servers:
            runs = [r for r in results if (r.server, r.watchers, r.rate) == (kind, watchers, rate)]
            if not runs:
                continue
            ratio = None
            wr, raw = delivered.get("watchroutes"), delivered.get("raw")
            if kind == "watchroutes" and wr is not None and raw:
                ratio = wr / raw
            cells = [
                kind,
                f"{watchers:,}",
                fmt(rate),
                fmt(median(r.published_per_s for r in runs)),
                fmt(delivered[kind]),
                fmt(rate * watchers),
                fmt(ratio, 2),
                fmt(median(r.p50_ms for r in runs), 1),
                fmt(median(r.p99_ms for r in runs), 1),
                fmt(median(r.encodes_per_event for r in runs), 2),
                fmt(median(100 * r.server_cpu for r in runs), 0, " %"),
                fmt(median(100 * r.client_cpu for r in runs), 0, " %"),
                fmt(median(r.dropped for r in runs)),
                fmt(median(r.undelivered for r in runs)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> str:
    """The 1-minute load average (other work on the machine shows here)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def versions() -> str:
    found = [f"Python {sys.version.split()[0]}"]
    for name in ("watchroutes", "starlette", "uvicorn", "h11", "anyio"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def parse_runs(args: argparse.Namespace) -> list[tuple[int, float]]:
    specs: list[str] = list(args.run or [])
    if args.watchers is not None or args.rate is not None:
        if args.watchers is None or args.rate is None:
            raise SystemExit("--watchers and --rate go together")
        specs.append(f"{args.watchers}:{args.rate}")
    configs: list[tuple[int, float]] = []
    for spec in specs or DEFAULT_RUNS:
        count, _, rates = spec.partition(":")
        try:
            configs.extend((int(count), float(rate)) for rate in rates.split(","))
        except ValueError:
            raise SystemExit(f"bad run {spec!r}: use WATCHERS:RATE[,RATE...]") from None
    for watchers, rate in configs:
        if watchers < 1 or rate <= 0:
            raise SystemExit("watchers must be at least 1 and rates positive")
    return configs


async def main_async(args: argparse.Namespace) -> list[Result]:
    configs = parse_runs(args)
    servers = [s for s in args.servers.split(",") if s]
    results: list[Result] = []
    # Repeats are the outer loop and servers alternate, so a burst of load from elsewhere on
    # the machine hits one run of several configurations rather than every run of one.
    for repeat in range(1, args.repeat + 1):
        for watchers, rate in configs:
            for kind in servers:
                print(
                    f"[{repeat}/{args.repeat}] {kind}: {watchers} watchers, {rate:g}/s "
                    f"for {args.duration:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                result = await run_with_retries(kind, watchers, rate, args)
                print(
                    f"  published {result.published_per_s:,.0f}/s, delivered "
                    f"{result.delivered_per_s:,.0f}/s (expected {result.expected_per_s:,.0f}), "
                    f"p50 {fmt(result.p50_ms, 1)} ms, p99 {fmt(result.p99_ms, 1)} ms, "
                    f"server CPU {100 * result.server_cpu:.0f} %, client CPU "
                    f"{100 * result.client_cpu:.0f} %, dropped {result.dropped}, undelivered "
                    f"{result.undelivered}",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="SSE fan-out benchmark: watchroutes on uvicorn vs a raw asyncio server."
    )
    parser.add_argument("--run", action="append", metavar="WATCHERS:RATE[,RATE...]")
    parser.add_argument("--watchers", type=int, help="one watcher count (with --rate)")
    parser.add_argument("--rate", help="events per second, comma-separated (with --watchers)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of publishing")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--sample", type=int, default=50, help="connections timing events")
    parser.add_argument("--drain", type=float, default=15.0, help="max seconds to drain")
    parser.add_argument("--attempts", type=int, default=3, help="tries per run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    args = parser.parse_args(argv)
    for kind in args.servers.split(","):
        if kind not in SERVERS:
            parser.error(f"unknown server {kind!r}; choose from {', '.join(SERVERS)}")
    if args.duration <= 0 or args.repeat < 1 or args.attempts < 1:
        parser.error("--duration, --repeat and --attempts must be positive")

    pin_to_cpu(None if args.client_cpu < 0 else args.client_cpu)
    raise_open_files_limit()
    started = time.monotonic()
    load_before = load_average()
    results = asyncio.run(main_async(args))
    print(table(results, [s for s in args.servers.split(",") if s]))
    print(
        f"\n{args.repeat} runs per row (medians), {args.duration:g} s of publishing each; "
        f"{time.monotonic() - started:.0f} s in all.\n{os.cpu_count()} CPUs, server on CPU "
        f"{args.server_cpu}, load generator on CPU {args.client_cpu}; load average "
        f"{load_before} before, {load_average()} after.\n{versions()}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
