"""Every benchmark in one command, from the repository root::

    .venv/bin/python -m benchmarks --quick     # each suite once, small: about 3 minutes
    .venv/bin/python -m benchmarks --full      # the tables in docs/benchmarks.md
    .venv/bin/python -m benchmarks --quick --only inprocess,selector_index

Each suite runs as its own process (it starts its servers and pins load generator and server
to different cores itself), prints its markdown table, and writes its JSON results to
``--out`` (default ``benchmarks/results/<date>/``). A suite that counts a lost or duplicated
event exits non-zero, and so does this command.

Suites: ``sse_fanout`` (SSE fan-out next to a raw asyncio server, sse-starlette and aiohttp),
``selector_index`` (publish cost against watchers), ``inprocess`` (a burst to 10,000
subscribers without network), ``backends`` (publishes through Redis, PostgreSQL and NATS
next to their raw clients; needs the servers), ``idle_memory`` (memory per idle SSE watcher,
next to the peers), ``resume`` (a client 10,000 events behind catches up) and
``authorized_fanout`` (per-principal visibility on the fan-out path).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITES: dict[str, tuple[list[str], list[str]]] = {
    # name: (quick flags, full flags)
    "sse_fanout": (["--quick"], []),
    "selector_index": (["--quick"], []),
    "inprocess": (["--quick"], []),
    "backends": (["--quick", "--events", "1000"], []),
    "idle_memory": (["--quick"], []),
    "resume": (["--quick"], []),
    "authorized_fanout": (["--quick"], []),
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated suites")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    out = args.out or HERE / "results" / datetime.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in chosen:
        quick, full = SUITES[name]
        flags = quick if args.quick else full
        command = [
            sys.executable,
            str(HERE / f"{name}.py"),
            *flags,
            "--json",
            str(out / f"{name}.json"),
        ]
        print(f"\n## {name}\n", flush=True)
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(name)
    print(f"\nresults: {out}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
