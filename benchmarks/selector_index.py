"""Publish cost against the number of watchers, with and without the selector index.

Run it from the repository root::

    .venv/bin/python benchmarks/selector_index.py            # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/selector_index.py --quick    # fewer rounds, up to 10,000
    .venv/bin/python benchmarks/selector_index.py --json results.json

In one process, without network: a ``HubState`` (the sans-IO core the hub runs) with N
subscriptions on one resource, of which 10 match every published change. Each publish is the
whole core path: a new rv, the log append with retention, the JSON encoding (once), the
fan-out and the 10 buffer appends. Cases:

- ``name``: each subscription watches one object (``/orders/{name}``, that is
  ``metadata.name=<name>``); 10 watch the published object, the rest 1 of N-10 others.
- ``label``: each subscription has ``labelSelector=shard=<s>``; 10 share the published
  object's shard.
- ``scan``: the same selection written as ``shard in (<s>,none)``, which has no equality term,
  so every subscription is evaluated on every publish (what a publish costs without the index).

Every case publishes ``--publishes`` MODIFIED events (after a warm-up) and reports the median
of ``--rounds`` rounds in µs per publish, the ratio to the 10-subscription case of the same
kind, and checks that exactly the 10 matching subscriptions received every event.

A second table gives predicate evaluations per second (``Filter.matches``) and transition
decisions per second for typical selectors against a typical object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from watchroutes._core.events import Entry, EventType
from watchroutes._core.registry import Subscription, transition
from watchroutes._core.selectors import Filter, compile_filter
from watchroutes._core.state import HubState

MATCHING = 10
TARGET = "target"


def selector(kind: str, index: int) -> Filter:
    value = TARGET if index < MATCHING else f"v-{index}"
    if kind == "name":
        return compile_filter(name=value)
    if kind == "label":
        return compile_filter(f"shard={value}")
    return compile_filter(f"shard in ({value},none)")


def published(kind: str, n: int) -> dict[str, Any]:
    name = TARGET if kind == "name" else "o-1"
    return {
        "metadata": {"name": name, "labels": {"shard": TARGET, "region": "eu"}},
        "status": {"phase": "paid", "n": n},
    }


def run_case(kind: str, watchers: int, publishes: int, rounds: int) -> dict[str, Any]:
    state = HubState(now_us=time.time_ns() // 1000, retention_events=1000)
    state.add_resource("orders")
    subs: list[Subscription] = [
        state.registry.subscribe("orders", selector(kind, i), max_buffer=publishes + 10)
        for i in range(watchers)
    ]
    matching = subs[:MATCHING]
    state.append("orders", EventType.ADDED, published(kind, 0), now=0.0, now_us=0)
    for sub in matching:
        sub.drain()
    samples: list[float] = []
    for _ in range(rounds + 1):  # the first round warms up
        objects = [published(kind, i) for i in range(publishes)]
        start = time.perf_counter_ns()
        for obj in objects:
            state.append("orders", EventType.MODIFIED, obj, now=0.0, now_us=0)
        elapsed = time.perf_counter_ns() - start
        samples.append(elapsed / publishes / 1000)
        for sub in matching:
            got = sub.drain()
            if len(got) != publishes:
                raise SystemExit(f"{kind}/{watchers}: a matching watcher got {len(got)}")
        if any(len(sub) for sub in subs[MATCHING:]):
            raise SystemExit(f"{kind}/{watchers}: a non-matching watcher received an event")
    return {
        "kind": kind,
        "watchers": watchers,
        "us_per_publish": statistics.median(samples[1:]),
        "samples": samples[1:],
    }


def rate(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Calls of ``fn`` per second (best of 3 timed batches)."""
    batch = 1000
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < seconds:
            for _ in range(batch):
                fn()
            count += batch
        best = max(best, count / (time.perf_counter() - start))
    return best


PREDICATES = [
    ("region=eu", None),
    ("region in (eu,uk),tier!=free", None),
    ("!archived,region notin (us)", None),
    (None, "status.phase=paid"),
    (None, "metadata.name=o-1"),
    ("region=eu", "status.phase!=cancelled,spec.customer.id=c-9"),
]


def predicate_rates() -> list[dict[str, Any]]:
    obj: dict[str, Any] = {
        "metadata": {"name": "o-1", "labels": {"region": "eu", "tier": "gold", "team": "a"}},
        "spec": {"customer": {"id": "c-9"}, "total": 12.5},
        "status": {"phase": "paid"},
    }
    prev = {**obj, "metadata": {**obj["metadata"], "labels": {"region": "us"}}}
    entry = Entry(
        rv=2, resource="orders", key="o-1", type=EventType.MODIFIED, object=obj, prev=prev, time=0
    )
    rows = []
    for labels, fields in PREDICATES:
        flt = compile_filter(labels, fields)

        def evaluate(flt: Filter = flt) -> bool:
            return flt.matches(obj)

        def decide(flt: Filter = flt) -> EventType | None:
            return transition(flt, entry)

        rows.append(
            {
                "labelSelector": labels or "",
                "fieldSelector": fields or "",
                "matches": flt.matches(obj),
                "evaluations_per_s": rate(evaluate),
                "transitions_per_s": rate(decide),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 10,000 watchers, 3 rounds")
    parser.add_argument("--publishes", type=int, default=200, help="publishes per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    sizes = [10, 1_000, 10_000] if args.quick else [10, 1_000, 10_000, 100_000]
    rounds = 3 if args.quick else args.rounds
    results: list[dict[str, Any]] = []
    for kind in ("name", "label", "scan"):
        for watchers in sizes:
            publishes = args.publishes if kind != "scan" else max(5, args.publishes // 20)
            print(f"{kind} x {watchers:,} ...", file=sys.stderr)
            results.append(run_case(kind, watchers, publishes, rounds))
    base = {r["kind"]: r["us_per_publish"] for r in results if r["watchers"] == sizes[0]}
    print(f"Python {platform.python_version()}, {platform.machine()}; medians of {rounds} rounds")
    print()
    print("| selectors | watchers | matching | µs per publish | ratio to 10 watchers |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        ratio = r["us_per_publish"] / base[r["kind"]]
        r["ratio"] = ratio
        label = {
            "name": "`/orders/{name}` (indexed)",
            "label": "`shard=<s>` (indexed)",
            "scan": "`shard in (<s>,none)` (scanned)",
        }[r["kind"]]
        print(
            f"| {label} | {r['watchers']:,} | {MATCHING} | {r['us_per_publish']:,.1f} "
            f"| {ratio:,.2f} |"
        )
    print()
    rates = predicate_rates()
    print("| labelSelector | fieldSelector | matches | evaluations/s | transitions/s |")
    print("|---|---|---|---:|---:|")
    for row in rates:
        print(
            f"| `{row['labelSelector']}` | `{row['fieldSelector']}` | {row['matches']} "
            f"| {row['evaluations_per_s']:,.0f} | {row['transitions_per_s']:,.0f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"publish": results, "predicates": rates}, fh, indent=2)


if __name__ == "__main__":
    main()
