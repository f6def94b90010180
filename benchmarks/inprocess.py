"""In-process fan-out: a burst of events to 10,000 subscribers, without network.

Run it from the repository root::

    .venv/bin/python benchmarks/inprocess.py            # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/inprocess.py --quick

A delivery is one event handed to one subscriber's consumer. Two systems:

- ``core``: the sans-IO core alone (``HubState``): each publish assigns the rv, appends to the
  log, and offers one cached frame to every subscription; then every consumer drains its queue.
- ``tasks``: ``Hub.publish`` with one anyio task per subscriber, woken through the
  subscription's waker as the watch pump is, draining everything queued per wake-up: what the
  runtime adds (wake-ups, scheduling) to the core.

Each round publishes ``--events`` events (a burst) to ``--subscribers`` subscribers watching
everything, and checks that every subscriber got every event once, in rv order. Medians of
``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from watchroutes import Hub
from watchroutes._core.events import EventType
from watchroutes._core.registry import Subscription
from watchroutes._core.selectors import EVERYTHING
from watchroutes._core.state import HubState


def _obj(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"o-{i % 100}", "labels": {"r": "eu"}}, "n": i}


def _check(received: list[list[int]], events: int) -> None:
    for rvs in received:
        if len(rvs) != events or rvs != sorted(set(rvs)):
            raise SystemExit(f"a subscriber got {len(rvs)} of {events} events, or out of order")


def core(subscribers: int, events: int) -> float:
    state = HubState(now_us=time.time_ns() // 1000)
    state.add_resource("orders", max_events=events + 1)
    subs = [state.registry.subscribe("orders", EVERYTHING, events) for _ in range(subscribers)]
    received: list[list[int]] = [[] for _ in subs]
    began = time.perf_counter()
    for i in range(events):
        state.append("orders", EventType.ADDED, _obj(i), now=0.0, now_us=0)
    for sub, got in zip(subs, received, strict=True):
        got.extend(f.rv for f in sub.drain())  # type: ignore[misc]
    seconds = time.perf_counter() - began
    _check(received, events)
    return subscribers * events / seconds


async def _tasks(subscribers: int, events: int) -> float:
    hub = Hub(buffer=events, retention_events=events + 1)
    hub.resource("orders")
    received: list[list[int]] = [[] for _ in range(subscribers)]
    finished = anyio.Event()
    left = [subscribers]

    async def consume(sub: Subscription, got: list[int]) -> None:
        while len(got) < events:
            event = anyio.Event()
            sub.waker = event.set
            if not len(sub):
                await event.wait()
            got.extend(f.rv for f in sub.drain())  # type: ignore[misc]
        left[0] -= 1
        if not left[0]:
            finished.set()

    async with hub, anyio.create_task_group() as tg:
        for got in received:
            sub = hub.state.registry.subscribe("orders", EVERYTHING, events)
            tg.start_soon(consume, sub, got)
        await anyio.sleep(0.1)  # every consumer waits
        began = time.perf_counter()
        for i in range(events):
            hub.publish("orders", "ADDED", _obj(i))
        await finished.wait()
        seconds = time.perf_counter() - began
    _check(received, events)
    return subscribers * events / seconds


def tasks(subscribers: int, events: int) -> float:
    return anyio.run(_tasks, subscribers, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    events = args.events or (20 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 5)
    n = args.subscribers
    print(f"# in-process fan-out: {events} events to {n:,} subscribers, medians of {rounds}")
    print(f"# {platform.platform()}, Python {platform.python_version()}")
    print()
    print("| system | deliveries/s | µs per event |")
    print("|---|---:|---:|")
    results = []
    for name, system in (("core", core), ("tasks", tasks)):
        rate = statistics.median(system(n, events) for _ in range(rounds))
        results.append({"system": name, "subscribers": n, "events": events, "rate": rate})
        print(f"| {name} | {rate:,.0f} | {n / rate * 1e6:,.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
