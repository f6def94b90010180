"""Publish throughput and publish-to-receive latency through each shared log backend.

Run it from the repository root (Redis, PostgreSQL and NATS on 127.0.0.1, as in CI)::

    .venv/bin/python benchmarks/backends.py                 # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/backends.py --quick         # fewer events, one round
    .venv/bin/python benchmarks/backends.py --engines redis --json results.json

For each engine and each number of publishing processes (1 and 4), three systems:

- ``raw``: the engine's own client in a loop, one write per round trip (Redis ``XADD``,
  PostgreSQL ``INSERT`` in autocommit, JetStream ``publish``): the ceiling;
- ``append``: ``LogBackend.append`` (rv assignment, expectation, state, retention, wake-up);
- ``hub``: ``await resource.apublish`` on a hub that also follows the log, as every node does
  (the above, plus encoding the object and applying every event on this node).

Each publisher writes ``--events`` 100-byte objects as fast as one connection allows. A
separate process follows the log (``LogBackend.follow``, the mechanism every node uses) and
records, for every event, the time from its publish to its arrival; it also checks that every
event arrived exactly once and in rv order, and the run fails loudly otherwise. For Redis, the
table also gives ``redis-benchmark`` on ``XADD`` (one client, no pipelining) as a second
ceiling. Publishers are pinned to core 1 and the follower to core 0 where the machine allows;
the servers share both. Medians of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from watchroutes._core.backend import LogBackend, Retention, Write

REDIS = "redis://127.0.0.1:6379/0"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
NATS = "nats://127.0.0.1:4222"
KEEP = Retention(max_events=100_000, max_age=600.0)
ENGINES = ("redis", "postgres", "nats")


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        os.sched_setaffinity(0, {core})


def backend_for(engine: str, name: str) -> LogBackend:
    if engine == "redis":
        from watchroutes.backends.redis import RedisLog

        return RedisLog(REDIS, prefix=name)
    if engine == "postgres":
        from watchroutes.backends.postgres import PostgresLog

        return PostgresLog(POSTGRES, schema=name)
    from watchroutes.backends.nats import NatsLog

    return NatsLog(NATS, stream=name)


def _payload(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"o-{i % 100}"}, "t": time.time_ns(), "pad": "x" * 40}


# -- publishers ---------------------------------------------------------------------------------


async def _raw(engine: str, name: str, worker: int, events: int, spans: Any) -> None:
    if engine == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        await client.ping()
        began = time.monotonic()
        for i in range(events):
            await client.xadd(f"raw:{name}", {"o": msgspec.json.encode(_payload(i))})
        spans.put((began, time.monotonic()))
        await client.aclose()
    elif engine == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            began = time.monotonic()
            for i in range(events):
                await conn.execute(
                    f"INSERT INTO raw_{name} (body) VALUES (%s)",
                    (msgspec.json.encode(_payload(i)),),
                )
            spans.put((began, time.monotonic()))
    else:
        import nats

        nc = await nats.connect(NATS)
        js = nc.jetstream()
        began = time.monotonic()
        for i in range(events):
            await js.publish(f"raw_{name}.x", msgspec.json.encode(_payload(i)))
        spans.put((began, time.monotonic()))
        await nc.close()


async def _append(engine: str, name: str, worker: int, events: int, spans: Any) -> None:
    log = backend_for(engine, name)
    await log.open({"bench": KEEP})
    began = time.monotonic()
    for i in range(events):
        key = f"w{worker}-{i % 100}"
        body = msgspec.json.encode(_payload(i))
        await log.append(Write(resource="bench", key=key, type="MODIFIED", object=body), KEEP)
    spans.put((began, time.monotonic()))
    await log.close()


async def _hub(engine: str, name: str, worker: int, events: int, spans: Any) -> None:
    from watchroutes import Hub

    hub = Hub(backend=backend_for(engine, name), retention_events=KEEP.max_events)
    bench = hub.resource("bench")
    async with hub:
        began = time.monotonic()
        for i in range(events):
            obj = _payload(i)
            obj["metadata"]["name"] = f"w{worker}-{i % 100}"
            await bench.apublish("MODIFIED", obj)
        spans.put((began, time.monotonic()))


def publisher(
    system: str, engine: str, name: str, worker: int, events: int, go: Any, spans: Any
) -> None:
    _pin(1)
    run = {"raw": _raw, "append": _append, "hub": _hub}[system]
    go.wait()
    asyncio.run(run(engine, name, worker, events, spans))


# -- the follower --------------------------------------------------------------------------------


async def _follow(engine: str, name: str, expected: int, ready: Any, out: Any) -> None:
    latencies: list[float] = []
    rvs: list[int] = []
    if engine == "redis" and name.startswith("raw"):
        raise AssertionError("raw systems are not followed")
    log = backend_for(engine, name)
    loaded = await log.open({"bench": KEEP})
    ready.set()
    first = last = 0.0
    async for batch in log.follow({"bench": KEEP}, loaded.head):
        now = time.time_ns()
        for record in batch.records:
            sent = msgspec.json.decode(record.object)["t"]
            latencies.append((now - sent) / 1e6)
            rvs.append(record.rv)
        if rvs and not first:
            first = time.monotonic()
        last = time.monotonic()
        if len(rvs) >= expected:
            break
    await log.close()
    out.put({"latencies": latencies, "rvs": rvs, "seconds": last - first})


def follower(engine: str, name: str, expected: int, ready: Any, out: Any) -> None:
    _pin(0)
    asyncio.run(_follow(engine, name, expected, ready, out))


# -- set-up and clean-up -------------------------------------------------------------------------


async def _prepare(engine: str, name: str, system: str) -> None:
    if system != "raw":
        return
    if engine == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            await conn.execute(f"CREATE TABLE raw_{name} (id bigserial PRIMARY KEY, body bytea)")
    elif engine == "nats":
        import nats

        client = await nats.connect(NATS)
        await client.jetstream().add_stream(name=f"raw_{name}", subjects=[f"raw_{name}.>"])
        await client.close()


async def _cleanup(engine: str, name: str) -> None:
    if engine == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        keys = [k async for k in client.scan_iter(match=f"*{name}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    elif engine == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            await conn.execute(f"DROP TABLE IF EXISTS raw_{name}")
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    else:
        import nats

        nc = await nats.connect(NATS)
        js = nc.jetstream()
        for stream in (name, f"raw_{name}", f"{name}_state", f"KV_{name}_state"):
            try:
                await js.delete_stream(stream)
            except Exception:  # not every system creates every stream
                continue
        await nc.close()


def run_case(engine: str, system: str, publishers: int, events: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    name = f"bench{uuid.uuid4().hex[:8]}"
    asyncio.run(_prepare(engine, name, system))
    try:
        go = ctx.Event()
        ready = ctx.Event()
        out = ctx.Queue()
        total = publishers * events
        watch = None
        if system != "raw":
            watch = ctx.Process(target=follower, args=(engine, name, total, ready, out))
            watch.start()
            if not ready.wait(30):
                raise RuntimeError("the follower did not start")
        spans = ctx.Queue()
        procs = [
            ctx.Process(target=publisher, args=(system, engine, name, w, events, go, spans))
            for w in range(publishers)
        ]
        for p in procs:
            p.start()
        time.sleep(1.0 if system == "hub" else 0.3)  # let the hubs load before the clock starts
        go.set()
        for p in procs:
            p.join(300)
            if p.exitcode != 0:
                raise RuntimeError(f"a {system} publisher failed ({p.exitcode})")
        times = [spans.get(timeout=10) for _ in procs]  # each loop, without start-up
        seconds = max(end for _, end in times) - min(start for start, _ in times)
        row: dict[str, Any] = {"per_second": total / seconds}
        if watch is not None:
            result = out.get(timeout=120)
            watch.join(30)
            rvs = result["rvs"]
            lost = total - len(set(rvs))
            duplicated = len(rvs) - len(set(rvs))
            if lost or duplicated or rvs != sorted(rvs):
                raise SystemExit(
                    f"{engine}/{system}: lost {lost}, duplicated {duplicated}, "
                    f"in order: {rvs == sorted(rvs)}"
                )
            lat = sorted(result["latencies"])
            row["p50_ms"] = lat[len(lat) // 2]
            row["p99_ms"] = lat[int(len(lat) * 0.99)]
        return row
    finally:
        asyncio.run(_cleanup(engine, name))


def redis_benchmark(events: int) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    key = f"rb{uuid.uuid4().hex[:8]}"
    output = subprocess.run(
        [binary, "-q", "-n", str(events), "-c", "1", "XADD", key, "*", "o", "x" * 100],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subprocess.run(["redis-cli", "DEL", key], capture_output=True, check=False)
    # "XADD ...: 12345.68 requests per second, p50=0.071 msec"
    for token in output.replace("\r", "\n").split():
        try:
            value = float(token)
        except ValueError:
            continue
        if value > 100:
            return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--events", type=int, default=None, help="per publisher")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    events = args.events or (500 if args.quick else 3000)
    rounds = args.rounds or (1 if args.quick else 3)
    results: list[dict[str, Any]] = []
    print(f"# shared log backends, {events} events per publisher, medians of {rounds}")
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores")
    print()
    print("| engine | publishers | system | publishes/s | vs raw | p50 ms | p99 ms |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for engine in args.engines.split(","):
        for publishers in (1, 4):
            raw_rate = None
            for system in ("raw", "append", "hub"):
                rows = [run_case(engine, system, publishers, events) for _ in range(rounds)]
                rate = statistics.median(r["per_second"] for r in rows)
                row = {"engine": engine, "publishers": publishers, "system": system, "rate": rate}
                if system == "raw":
                    raw_rate = rate
                ratio = f"{rate / raw_rate:.2f}" if raw_rate else ""
                p50 = p99 = ""
                if "p50_ms" in rows[0]:
                    row["p50_ms"] = statistics.median(r["p50_ms"] for r in rows)
                    row["p99_ms"] = statistics.median(r["p99_ms"] for r in rows)
                    p50, p99 = f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}"
                results.append(row)
                print(
                    f"| {engine} | {publishers} | {system} | {rate:,.0f} | {ratio} | {p50} "
                    f"| {p99} |",
                    flush=True,
                )
        if engine == "redis":
            rb = redis_benchmark(events * 10)
            if rb is not None:
                results.append({"engine": "redis", "system": "redis-benchmark XADD", "rate": rb})
                print(f"| redis | 1 client | redis-benchmark XADD | {rb:,.0f} | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
