"""Resume: a client 10,000 events behind catches up, through each HTTP transport.

Run it from the repository root::

    .venv/bin/python benchmarks/resume.py                 # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/resume.py --events 2000 --rounds 1

A watchroutes server (``sse_fanout_servers.py watchroutes``: Starlette on uvicorn, and
``watchroutes-aiohttp``: the aiohttp adapter; the library's defaults, so a log of 10,000
events per resource; ``--servers`` to choose) is pinned to CPU 0; this process,
the client, to CPU 1. The client lists ``/orders`` for its resourceVersion, has the server
publish ``--events`` changes (about 330 bytes each on the wire) with nobody watching, and then
resumes from that resourceVersion, timing the request until it holds every event:

* ``sse``: ``Accept: text/event-stream`` with ``Last-Event-ID``;
* ``jsonlines``: ``?watch=true&resourceVersion=N``;
* ``longpoll``: ``?watch=true&feed=longpoll&resourceVersion=N&timeoutSeconds=0`` (default
  ``limit`` 500), each poll continuing from the last answer's resourceVersion.

Each transport resumes from the same rv on the same server, ``--passes`` times in a row per
round (the round's figure is their mean: the server's CPU time is counted in 10 ms ticks), for
``--rounds`` rounds (the table shows medians). The client checks that every catch-up received
exactly the published versions, once each, ascending, and exits non-zero otherwise.
*server CPU µs/event* is the server's CPU time over the catch-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

from sse_fanout import BenchmarkError, ServerProcess
from sse_fanout_servers import pin_to_cpu

TRANSPORTS: Final = ("sse", "jsonlines", "longpoll")
#: watchroutes through each adapter: Starlette on uvicorn, and aiohttp.
SERVERS: Final = ("watchroutes", "watchroutes-aiohttp")
EVENT: Final = re.compile(rb'\{"type":"MODIFIED","object":.*?"resourceVersion":"(\d+)"')
MARK: Final = b'{"type":"MODIFIED"'
TIMEOUT: Final = 60.0


async def exchange(server: ServerProcess, target: str, headers: str, events: int) -> bytes:
    """Send one GET; read until ``events`` MODIFIED envelopes arrived or the server closed."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        received = bytearray()
        seen = 0
        while seen < events:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            start = max(0, len(received) - len(MARK) + 1)
            received += chunk
            seen += received.count(MARK, start)
        return bytes(received)
    finally:
        writer.close()


def versions(body: bytes) -> list[int]:
    return [int(match[1]) for match in EVENT.finditer(body)]


async def catch_up(server: ServerProcess, transport: str, rv: int, events: int) -> list[int]:
    if transport == "sse":
        headers = f"Accept: text/event-stream\r\nLast-Event-ID: {rv}\r\n"
        return versions(await exchange(server, "/orders", headers, events))
    if transport == "jsonlines":
        target = f"/orders?watch=true&resourceVersion={rv}"
        return versions(await exchange(server, target, "", events))
    got: list[int] = []
    while len(got) < events:
        target = f"/orders?watch=true&feed=longpoll&timeoutSeconds=0&resourceVersion={rv}"
        body = await exchange(server, target, "", 1 << 30)
        head, _, payload = body.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise BenchmarkError(f"long poll answered {head.splitlines()[0]!r}")
        answer = json.loads(payload)
        if not answer["events"]:
            break
        got += [int(event["resourceVersion"]) for event in answer["events"]]
        rv = int(answer["resourceVersion"])
    return got


async def run(args: argparse.Namespace, kind: str) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {t: [] for t in args.transports}
    async with ServerProcess(kind, cpu=0) as server:
        listed = await server.control("GET", "/orders")
        start_rv = int(listed["metadata"]["resourceVersion"])
        await server.control("POST", f"/_bench/start?rate=1000000&seconds=60&count={args.events}")
        while (await server.control("GET", "/_bench/stats"))["running"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for _ in range(args.rounds):
            for transport in args.transports:
                cpu = server.cpu_seconds()
                began = time.perf_counter()
                for _ in range(args.passes):
                    got = await asyncio.wait_for(
                        catch_up(server, transport, start_rv, args.events), TIMEOUT
                    )
                    check(transport, got, start_rv, args.events)
                elapsed = (time.perf_counter() - began) / args.passes
                cpu = (server.cpu_seconds() - cpu) / args.passes
                results[transport].append(
                    {"seconds": elapsed, "events_per_s": args.events / elapsed, "cpu_s": cpu}
                )
                rate = args.events / elapsed
                print(f"{kind} {transport}: {rate:,.0f} events/s", file=sys.stderr)
    return results


def check(transport: str, got: list[int], start_rv: int, events: int) -> None:
    unique = len(set(got))
    lost, duplicated = events - unique, len(got) - unique
    if lost or duplicated or got != sorted(got) or (got and got[0] <= start_rv):
        raise BenchmarkError(
            f"{transport}: {lost} lost, {duplicated} duplicated of {events} "
            f"(ascending: {got == sorted(got)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="at most 10,000 (the log)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--passes", type=int, default=10, help="catch-ups per round (CPU time is in 10 ms ticks)"
    )
    parser.add_argument("--transports", type=lambda s: s.split(","), default=list(TRANSPORTS))
    parser.add_argument(
        "--servers",
        type=lambda s: s.split(","),
        default=list(SERVERS),
        help=f"default: {','.join(SERVERS)}",
    )
    parser.add_argument("--quick", action="store_true", help="one round of three passes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.passes = 1, 3
    pin_to_cpu(1)
    results = {kind: asyncio.run(run(args, kind)) for kind in args.servers}
    print(f"\nresume {args.events:,} events behind, medians of {args.rounds}\n")
    print("| server | transport | catch-up ms | events/s | server CPU µs/event |")
    print("|---|---|---:|---:|---:|")
    summary: dict[str, Any] = {}
    for kind, by_transport in results.items():
        for transport, runs in by_transport.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            rate = statistics.median(r["events_per_s"] for r in runs)
            cpu = statistics.median(r["cpu_s"] for r in runs) / args.events * 1e6
            summary[f"{kind}/{transport}"] = {
                "seconds": seconds,
                "events_per_s": rate,
                "cpu_us_per_event": cpu,
            }
            print(f"| {kind} | {transport} | {seconds * 1e3:,.0f} | {rate:,.0f} | {cpu:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "runs": results, **summary}))


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"resume benchmark failed: {exc}")
