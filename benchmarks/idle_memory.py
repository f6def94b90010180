"""Memory per idle SSE watcher, for watchroutes and each peer, on the same machine.

Run it from the repository root::

    .venv/bin/python benchmarks/idle_memory.py                  # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/idle_memory.py --watchers 200 --rounds 1
    .venv/bin/python benchmarks/idle_memory.py --transport jsonlines   # watchroutes' servers only

For each server of ``sse_fanout_servers.py`` (watchroutes on uvicorn and on aiohttp, raw
asyncio with and without uvloop, sse-starlette, aiohttp; Flask on gunicorn and Django on
uvicorn, each with its hand-written peer), a fresh server process: its RSS (with its
children's: gunicorn's worker)
once it has served a first watcher and closed it (so that code paths are loaded and warm),
then its RSS with ``--watchers`` idle SSE watchers connected (each has received its first
bytes). The difference divided by the watchers is the memory an idle watcher costs. Medians
of ``--rounds``; the ratio columns divide by sse-starlette's figure (issue target: watchroutes
on uvicorn at most a third) and by plain aiohttp's (target: watchroutes' aiohttp adapter at
most 1.2 times); *vs peer* divides watchroutes' Flask and Django figures by their hand-written
peers' (``flask-generator``, ``django-streaming``; target: at most 1.2 times).
``--transport jsonlines`` opens Kubernetes JSON-lines watches (``?watch=true``, which only the
watchroutes servers answer) instead of SSE ones, ``--transport websocket`` WebSocket watches
(one subscription per socket; uvicorn's default WebSocket protocol for the Starlette app).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
from pathlib import Path

from sse_fanout import ServerProcess, close_all, open_watchers
from sse_fanout_servers import DEFAULT_SERVERS, PEERS, pin_to_cpu, raise_open_files_limit


def rss_kib(pid: int) -> int:
    """The RSS of ``pid`` and of its descendants (gunicorn's arbiter and its worker)."""
    with open(f"/proc/{pid}/status") as status:
        total = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(rss_kib(int(child)) for child in children)
    return total


#: How each transport's watch is asked for: (request target, Accept, more header lines).
TRANSPORTS = {
    "sse": ("/orders", "text/event-stream", ""),
    # the initial-events bookmark gives each watch its first bytes at once
    "jsonlines": (
        "/orders?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true",
        "application/json",
        "",
    ),
    # one subscription per socket (the URL's), its initial-events bookmark sent at once
    "websocket": (
        "/orders?allowWatchBookmarks=true",
        "*/*",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: watchroutes.v1\r\n",
    ),
}


async def measure(kind: str, watchers: int, transport: str = "sse") -> float:
    target, accept, headers = TRANSPORTS[transport]
    async with ServerProcess(kind, cpu=0) as server:
        assert server.proc is not None
        warm = await open_watchers(server, 1, 0, target, accept, headers)
        close_all(warm)
        await asyncio.sleep(0.5)
        before = rss_kib(server.proc.pid)
        opened = await open_watchers(server, watchers, 0, target, accept, headers)
        await asyncio.sleep(1.0)  # let the server settle (buffers, tasks started)
        after = rss_kib(server.proc.pid)
        close_all(opened)
    return (after - before) * 1024 / watchers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--servers", default=None, help="default: every server but the Flask and Django ones"
    )
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="sse")
    parser.add_argument("--quick", action="store_true", help="300 watchers, one round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.watchers, args.rounds = 300, 1
    if args.servers is None:
        args.servers = (
            ",".join(DEFAULT_SERVERS)
            if args.transport == "sse"
            else "watchroutes,watchroutes-aiohttp"
        )
    pin_to_cpu(1)
    raise_open_files_limit()
    gc.disable()
    results = {}
    for kind in args.servers.split(","):
        values = [
            asyncio.run(measure(kind, args.watchers, args.transport)) for _ in range(args.rounds)
        ]
        results[kind] = statistics.median(values)
        print(f"{kind}: {results[kind] / 1024:.1f} KiB per watcher", file=sys.stderr)
    base = results.get("sse-starlette")
    plain = results.get("aiohttp")
    print(f"\n{args.watchers} idle {args.transport} watchers, medians of {args.rounds}\n")
    print("| server | KiB per idle watcher | vs sse-starlette | vs aiohttp | vs peer |")
    print("|---|---:|---:|---:|---:|")
    for kind, value in results.items():
        ratio = f"{value / base:.2f}" if base else ""
        vs_plain = f"{value / plain:.2f}" if plain else ""
        peer = results.get(PEERS.get(kind, ""))
        vs_peer = f"{value / peer:.2f}" if peer else ""
        print(f"| {kind} | {value / 1024:.1f} | {ratio} | {vs_plain} | {vs_peer} |")
    if args.json:
        args.json.write_text(json.dumps({"watchers": args.watchers, "bytes": results}, indent=2))


if __name__ == "__main__":
    main()
