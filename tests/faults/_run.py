"""A fault run: a cluster, its writers and watchers, and a sequence of seeded schedules.

Each schedule draws (from ``Random(f"{seed}:{index}")``) a fault, the writers' counts and the
readers' misbehaviour; writers write while the fault happens; then the schedule heals (SIGCONT,
restarts), writes a marker, waits until every watcher has got past it, and checks everything
received and listed since the previous schedule against the history. The nodes stay up from one
schedule to the next: only those a fault stopped are started again.

The seed replays a schedule's choices (faults, writes, readers), not the threads' interleaving.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._clients import TRANSPORTS, Watcher, Writer
from ._cluster import Cluster, Node
from ._oracle import ChainCheck, History, ListCheck, Tally, check_list, rv_of

#: Fault kinds and their weights; ``redis-*`` only on Redis.
FAULTS: Final = {
    "none": 1.0,
    "kill": 2.0,
    "term": 2.0,
    "pause": 3.0,
    "stall": 1.0,
    "slow": 0.7,
    "drop": 1.5,
    "redis-aof": 0.5,
    "redis-empty": 0.4,
}
#: Watchers: every transport without a selector, and two with one.
WATCHERS: Final = (
    *((t, None) for t in TRANSPORTS),
    ("jsonlines", "region=eu"),
    ("websocket", "region=eu"),
)
CATCH_UP: Final = 20.0
#: The longest SIGSTOP (a write sent to the paused node waits for it).
PAUSE: Final = 3.0
MARKER_TIMEOUT: Final = 30.0


def _say(line: str) -> None:
    print(line, flush=True)


class Aborted(Exception):
    """The run cannot go on (its report still stands)."""


@dataclass
class Options:
    engine: str
    schedules: int
    seed: int
    first: int = 0
    nodes: int = 3
    retention: int = 10
    heartbeat: float = 0.5
    writers: int = 2
    writes: tuple[int, int] = (5, 12)
    faults: tuple[str, ...] = ()  # only these kinds (default: all of the engine's)
    #: Schedule ``first + i`` gets the fault ``sequence[i % len(sequence)]`` (the other draws
    #: stay those of the seed, so ``--faults KIND`` replays it).
    sequence: tuple[str, ...] = ()
    verbose: bool = False

    def replay(self, index: int) -> str:
        faults = self.faults
        if self.sequence:
            faults = (self.sequence[(index - self.first) % len(self.sequence)],)
        only = f" --faults {','.join(faults)}" if faults else ""
        return (
            f"python -m tests.faults --engine {self.engine} --seed {self.seed} "
            f"--first {index} --schedules 1 --nodes {self.nodes} --retention {self.retention}"
            f" --writers {self.writers}{only}"
        )


class Run:
    def __init__(self, options: Options, out: Callable[[str], None] = _say) -> None:
        self.options = options
        self.out = out
        self.tally = Tally()
        self.history = History(options.retention, self.tally)
        self.stop = threading.Event()
        self.cluster = Cluster(
            options.engine,
            nodes=options.nodes,
            retention=options.retention,
            heartbeat=options.heartbeat,
        )
        self.writers: list[Writer] = []
        self.watchers: list[Watcher] = []
        self.checks: list[ChainCheck] = []
        self.marker = Writer("q", self.cluster, self.history)
        self.head = 0
        self.floors = [0, 0]
        self.seconds = 0.0
        self.logs: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        try:
            self.cluster.start()
            self.writers = [
                Writer(f"w{i}", self.cluster, self.history) for i in range(self.options.writers)
            ]
            for n, (transport, selector) in enumerate(WATCHERS):
                name = f"{transport}{'-eu' if selector else ''}"
                watcher = Watcher(
                    name, transport, selector, self.cluster, f"{self.options.seed}:{n}", self.stop
                )
                self.watchers.append(watcher)
                self.checks.append(ChainCheck(name, selector, self.history, self.tally))
                watcher.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        for watcher in self.watchers:
            watcher.join(2 * 3.0 + 5)
        for writer in [*self.writers, self.marker]:
            writer.close()
        self.logs = self.cluster.close()

    # -- schedules -------------------------------------------------------------------------------

    def run(self) -> Tally:
        began = time.monotonic()
        first = self.options.first
        try:
            self._settle(first)  # every watcher has its initial state before the first fault
            for index in range(first, first + self.options.schedules):
                self.schedule(index)
                done = index - first + 1
                if done % 100 == 0 and done < self.options.schedules:
                    self.out(
                        f"{done} schedules, {self.tally.failures()} failures, "
                        f"{time.monotonic() - began:.0f} s"
                    )
        finally:
            self.seconds = time.monotonic() - began
        return self.tally

    def schedule(self, index: int) -> None:
        self.tally.schedule = index
        before = self.tally.failures()
        rng = random.Random(f"{self.options.seed}:{index}")
        kinds = {k: w for k, w in FAULTS.items() if self.cluster.private or "redis" not in k}
        if self.options.faults:
            kinds = {k: w for k, w in kinds.items() if k in self.options.faults}
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        if self.options.sequence:
            sequence = self.options.sequence
            kind = sequence[(index - self.options.first) % len(sequence)]
        counts = [rng.randint(*self.options.writes) for _ in self.writers]
        if kind == "pause":  # compaction during the pause: more writes than the log keeps
            counts = [max(c, 2 * self.options.retention // len(counts) + 4) for c in counts]
        seeds = [rng.random() for _ in self.writers]
        halt = threading.Event()
        threads = [
            threading.Thread(
                target=writer.run, args=(random.Random(s), count, halt), name=writer.name
            )
            for writer, s, count in zip(self.writers, seeds, counts, strict=True)
        ]
        self._readers(rng, kind)
        for thread in threads:
            thread.start()
        # a pause comes first, so that the log compacts past the paused node
        time.sleep(rng.uniform(0.0, 0.02 if kind == "pause" else 0.15))
        what = self._fault(rng, kind, threads)
        for thread in threads:
            thread.join(60)
        halt.set()
        self._heal()
        self._settle(index)
        self.tally.add("schedules")
        if self.options.verbose or self.tally.failures() > before:
            status = "ok" if self.tally.failures() == before else "FAILED"
            self.out(f"schedule {index}: {what}, writes {counts}: {status}")
            if self.options.verbose:
                for line in self.history.refusals:
                    self.out(f"  refused: {line}")
            self.history.refusals.clear()
            if status == "FAILED":
                self.out(f"  replay: {self.options.replay(index)}")

    def _readers(self, rng: random.Random, kind: str) -> None:
        """Misbehaving readers: the schedule's fault, and sometimes a second one."""
        extra = rng.random() < 0.3
        now = time.monotonic()
        for watcher in self.watchers:
            if kind == "stall" or (extra and rng.random() < 0.2):
                watcher.stall_until = now + rng.uniform(0.3, 2.5)
            if kind == "slow" or (extra and rng.random() < 0.2):
                watcher.slow_until = now + rng.uniform(0.5, 2.0)
            if (kind == "drop" and rng.random() < 0.6) or (extra and rng.random() < 0.15):
                watcher.drop_after = rng.randint(0, 8)
                watcher.restart = True

    def _fault(self, rng: random.Random, kind: str, writers: list[threading.Thread]) -> str:
        up = [n for n in self.cluster.nodes if n.state == "up"]
        node: Node = rng.choice(up)
        if kind == "kill":
            node.kill()
            return f"SIGKILL {node}"
        if kind == "term":
            node.terminate()
            return f"SIGTERM {node}"
        if kind == "pause":
            # the writes go on elsewhere until the log has compacted past the paused node
            node.pause()
            acked = self.tally.counts["acknowledged"]
            until = time.monotonic() + PAUSE
            while time.monotonic() < until and any(t.is_alive() for t in writers):
                if self.tally.counts["acknowledged"] - acked > self.options.retention + 1:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            node.resume()
            return f"SIGSTOP/SIGCONT {node}"
        if kind in ("redis-aof", "redis-empty"):
            empty = kind == "redis-empty"
            self.cluster.kill_redis()
            time.sleep(rng.uniform(0.05, 0.5))
            self.cluster.start_redis(empty=empty)
            if empty:
                start = self.cluster.epoch_start()
                if start is None:
                    self.tally.add("stuck", detail="no node opened the new Redis epoch in 20 s")
                else:
                    self.history.new_epoch(start)
            return f"Redis killed, restarted {'empty' if empty else 'from its AOF'}"
        return kind

    def _heal(self) -> None:
        for node in self.cluster.nodes:
            node.resume()
        for attempt in range(3):
            down = [n for n in self.cluster.nodes if n.state == "down"]
            if not down:
                return
            try:
                self.cluster.restart(down)
            except (AssertionError, OSError) as exc:  # the process never said it was ready
                self.tally.add("stuck", detail=f"a node did not start again: {exc}"[:2000])
                if attempt == 2:
                    raise Aborted("nodes do not start any more") from None
                time.sleep(1.0)

    def _mark(self) -> int | None:
        """One acknowledged write after everything else: the head every watcher must reach."""
        rng = random.Random(self.head)
        deadline = time.monotonic() + MARKER_TIMEOUT
        while time.monotonic() < deadline:
            url = self.cluster.pick(rng)
            if url is not None:
                if self.marker.owned:
                    key, prev = next(iter(self.marker.owned.items()))
                    body = {
                        "metadata": {"name": key, "labels": {"region": "us"}},
                        "spec": {"item": "marker"},
                    }
                    self.marker.counter += 1
                    write = self.marker.write(
                        url, "put", key, f"q.{self.marker.counter}", prev, body
                    )
                else:
                    self.marker.counter += 1
                    key = f"q-{self.marker.counter}"
                    body = {
                        "metadata": {"name": key, "labels": {"region": "us"}},
                        "spec": {"item": "marker"},
                    }
                    write = self.marker.write(
                        url, "create", key, f"q.{self.marker.counter}", None, body
                    )
                if write.status == "acked":
                    assert write.rv is not None
                    return write.rv
            time.sleep(0.2)
        return None

    def _settle(self, index: int) -> None:
        head = self._mark()
        if head is None:
            self.tally.add("stuck", detail=f"no write acknowledged within {MARKER_TIMEOUT} s")
            head = self.history.max_acked
        deadline = time.monotonic() + CATCH_UP
        while time.monotonic() < deadline:
            if all(w.caught_up(head) for w in self.watchers):
                break
            time.sleep(0.02)
        for watcher in self.watchers:
            if not watcher.caught_up(head):
                self.tally.add(
                    "stuck",
                    detail=f"{watcher.label} not past {head} within {CATCH_UP} s "
                    f"(cursor {watcher.cursor}, live {watcher.live})",
                )
                watcher.restart = True
        lists: list[ListCheck] = []
        for writer in self.writers:
            lists += writer.take_lists()
        for url in self.cluster.urls():
            self.marker.list_on(url)
        lists += self.marker.take_lists()
        records = [w.take() for w in self.watchers]
        # first what happened to the maybe writes, then every check
        for watcher, recs in zip(self.watchers, records, strict=True):
            if watcher.selector is None:
                for rec in recs:
                    if rec.kind == "event" and rec.rv is not None and rec.obj is not None:
                        self.history.confirm(rec.key, rec.rv, rec.etype, rec.obj)
        for entry in lists:
            for item in entry.items:
                self.history.confirm(item["metadata"]["name"], rv_of(item), "ADDED", item)
        for check, recs in zip(self.checks, records, strict=True):
            check.feed(recs)
            check.settle()
        for entry in lists:
            check_list(entry, self.history, self.tally)
        self.history.check_refusals()
        self.floors = [self.floors[1], head]
        self.history.prune(self.floors[0])
        self.head = head

    # -- the report ------------------------------------------------------------------------------

    def table(self) -> str:
        c = self.tally.counts
        rows = [
            ("engine", self.options.engine),
            ("schedules", c["schedules"]),
            ("writes acknowledged", c["acknowledged"]),
            ("writes maybe / refused", f"{c['maybe']} / {c['refused']}"),
            ("events checked", c["events"]),
            ("lists checked", c["lists"]),
            ("410 / RESET (legal)", c["expired"] - c["bad_expired"]),
            ("lost", c["lost"]),
            ("duplicated", c["duplicated"]),
            ("reordered", c["reordered"]),
            ("wrong events", c["wrong_events"]),
            ("wrong lists", c["wrong_lists"]),
            ("wrong states", c["wrong_states"]),
            ("illegal 410 / RESET", c["bad_expired"]),
            ("200 with null body", c["null_deletes"]),
            ("404 for an existing object", c["wrong_answers"]),
            ("stuck", c["stuck"]),
            ("other", c["other"]),
            ("time", f"{self.seconds:.0f} s"),
        ]
        if self.logs:  # known once the nodes are stopped
            rows.append(("server tracebacks (not checked)", self.tracebacks()))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def tracebacks(self) -> int:
        """How many times the servers logged a traceback (chained ones count once)."""
        count = 0
        for log in self.logs:
            lines = log.splitlines()
            for before, line in itertools.pairwise(lines):
                if "Traceback (most recent call last)" in line and before[:1] not in ("", " "):
                    count += 1
        return count

    def report(self) -> str:
        lines = [self.table()]
        if self.tally.failures():
            lines.append(f"FAILED: seed {self.options.seed}")
            lines += ["  " + d for d in self.tally.details]
            for index in self.tally.failed_schedules[:5]:
                lines.append(f"  replay: {self.options.replay(index)}")
        tracebacks = [log for log in self.logs if "Traceback" in log]
        if tracebacks:
            lines.append(f"{self.tracebacks()} tracebacks in the servers' logs; the first:")
            log = tracebacks[0]
            line = log.rfind("\n", 0, log.index("Traceback"))
            begin = log.rfind("\n", 0, max(0, line)) + 1  # from the line that logged it
            lines.append(log[begin : begin + 6000])
        return "\n".join(lines)


def main_run(options: Options) -> int:
    with Run(options) as run, contextlib.suppress(KeyboardInterrupt):
        try:
            run.run()
        except Aborted as exc:
            print(f"aborted: {exc}", flush=True)
    print(run.report(), flush=True)
    sys.stdout.flush()
    return 1 if run.tally.failures() else 0
