"""The cost of per-principal authorization on the fan-out path (protocol.md §7).

Run it from the repository root::

    .venv/bin/python benchmarks/authorized_fanout.py            # the tables in docs/benchmarks.md
    .venv/bin/python benchmarks/authorized_fanout.py --quick    # fewer rounds, up to 10,000
    .venv/bin/python benchmarks/authorized_fanout.py --json results.json

In one process, without network, on the sans-IO core the hub runs (``HubState``): each
principal watches the orders it owns. Every publish is the whole core path (a new rv, the log
append, the encoding once, the fan-out, the buffer append) and each published change is
delivered to exactly its owner's watcher; the run checks that every watcher got exactly its
own events.

1. **Deliveries per second, 1,000 principals**:

   - ``no auth``: each watcher asks ``labelSelector=owner=<name>`` itself (no hooks);
   - ``authorized``: the watcher asks nothing; its filter is built as admission builds it
     (``authorize`` returns the forced selector ``owner=<name>``, ``can_see`` checks the
     owner label), so the index finds the one watcher and the predicate confirms it;
   - ``predicate only``: ``can_see`` without a forced selector: every watcher's predicate
     runs on every publish (what to avoid at scale; shown for contrast).

2. **Publish cost against watchers** (authorized as above): 10, 1,000, 10,000 and 100,000
   principals, each watching its own objects; µs per publish and the ratio to 10.

Targets (issue 16): ``authorized`` delivers at least 0.8x what ``no auth`` does, and a publish
with 100,000 authorized watchers costs at most 3x one with 10.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

from watchroutes import Access, AuthRequest, Principal, WatchScope
from watchroutes._core.events import EventType
from watchroutes._core.registry import Subscription
from watchroutes._core.selectors import EVERYTHING, Filter, compile_filter, restrict
from watchroutes._core.state import HubState


def authenticate(request: AuthRequest) -> Principal | None:  # (not on the measured path)
    return None


def authorize(principal: Principal, scope: WatchScope) -> str:
    return f"owner={principal.name}"


def can_see(principal: Principal, obj: Any) -> bool:
    return bool(obj["metadata"]["labels"].get("owner") == principal.name)


ACCESS = Access(authenticate, authorize, can_see)
PREDICATE_ONLY = Access(authenticate, None, can_see)


def watch_filter(case: str, user: str) -> Filter:
    """A watcher's filter, built as admission builds it (``guard.admit``)."""
    if case == "no auth":
        return compile_filter(f"owner={user}")
    principal = Principal(user)
    if case == "predicate only":
        return restrict(EVERYTHING, None, PREDICATE_ONLY.visibility(principal))
    forced = compile_filter(authorize(principal, WatchScope("orders", None, None, None, "sse")))
    return restrict(EVERYTHING, forced, ACCESS.visibility(principal))


def order(user: int, n: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"o-{user}", "labels": {"owner": f"u-{user}", "region": "eu"}},
        "spec": {"item": "book", "qty": n % 5 + 1},
        "status": {"phase": "paid", "n": n},
    }


def run_case(case: str, principals: int, publishes: int, rounds: int) -> dict[str, Any]:
    state = HubState(now_us=time.time_ns() // 1000, retention_events=1000)
    state.add_resource("orders")
    subs: list[Subscription] = [
        state.registry.subscribe("orders", watch_filter(case, f"u-{i}"), max_buffer=publishes + 10)
        for i in range(principals)
    ]
    for i in range(min(principals, publishes)):  # each object exists before it changes
        state.append("orders", EventType.ADDED, order(i, 0), now=0.0, now_us=0)
    for sub in subs:
        sub.drain()
    samples: list[float] = []
    for _ in range(rounds + 1):  # the first round warms up
        owners = [n % min(principals, publishes) for n in range(publishes)]
        objects = [order(owner, n + 1) for n, owner in enumerate(owners)]
        start = time.perf_counter_ns()
        for obj in objects:
            state.append("orders", EventType.MODIFIED, obj, now=0.0, now_us=0)
        elapsed = time.perf_counter_ns() - start
        # (the writers' side, not timed: the runtime wakes only the watchers that got events)
        delivered = 0
        for sub in subs:
            delivered += len(sub.drain())
        if delivered != publishes:
            raise SystemExit(f"{case}/{principals}: {delivered} deliveries of {publishes}")
        samples.append(elapsed / publishes / 1000)
    us = statistics.median(samples[1:])
    return {
        "case": case,
        "principals": principals,
        "us_per_publish": us,
        "deliveries_per_s": 1e6 / us,
        "samples": samples[1:],
    }


def check_owners(principals: int) -> None:
    """Every watcher receives exactly its own events (and a move is a DELETED/ADDED pair)."""
    state = HubState(now_us=0, retention_events=100)
    state.add_resource("orders")
    subs = [
        state.registry.subscribe("orders", watch_filter("authorized", f"u-{i}"), max_buffer=10)
        for i in range(principals)
    ]
    state.append("orders", EventType.ADDED, order(0, 0), now=0.0, now_us=0)
    moved = order(0, 1)
    moved["metadata"]["labels"]["owner"] = "u-1"
    state.append("orders", EventType.MODIFIED, moved, now=0.0, now_us=0)
    got = [[e.type for e in sub.drain()] for sub in subs[:3]]
    if got != [[EventType.ADDED, EventType.DELETED], [EventType.ADDED], []]:
        raise SystemExit(f"unexpected transitions {got}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 10,000 watchers, 3 rounds")
    parser.add_argument("--publishes", type=int, default=1000, help="publishes per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    check_owners(3)
    fanout: list[dict[str, Any]] = []
    for case in ("no auth", "authorized", "predicate only"):
        print(f"fan-out {case} ...", file=sys.stderr)
        publishes = args.publishes if case != "predicate only" else max(20, args.publishes // 20)
        fanout.append(run_case(case, 1000, publishes, rounds))
    base = fanout[0]["deliveries_per_s"]
    print(f"Python {platform.python_version()}, {platform.machine()}; medians of {rounds} rounds")
    print()
    print("| 1,000 principals, each its own objects | deliveries/s | ratio to no auth |")
    print("|---|---:|---:|")
    for r in fanout:
        r["ratio"] = r["deliveries_per_s"] / base
        print(f"| {r['case']} | {r['deliveries_per_s']:,.0f} | {r['ratio']:.2f} |")
    sizes = [10, 1_000, 10_000] if args.quick else [10, 1_000, 10_000, 100_000]
    publish: list[dict[str, Any]] = []
    for principals in sizes:
        print(f"publish x {principals:,} ...", file=sys.stderr)
        publish.append(run_case("authorized", principals, args.publishes, rounds))
    print()
    print("| authorized watchers | µs per publish | ratio to 10 |")
    print("|---:|---:|---:|")
    for r in publish:
        r["ratio"] = r["us_per_publish"] / publish[0]["us_per_publish"]
        print(f"| {r['principals']:,} | {r['us_per_publish']:,.2f} | {r['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"fanout": fanout, "publish": publish}, fh, indent=2)
    failed = fanout[1]["ratio"] < 0.8 or publish[-1]["ratio"] > 3
    if failed:
        print("\nbelow target (0.8x deliveries, 3x publish cost)", file=sys.stderr)


if __name__ == "__main__":
    main()
