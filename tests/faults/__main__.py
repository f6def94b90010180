"""``python -m tests.faults --engine redis --schedules 1000 --seed 1``: a long fault run.

Prints a table (schedules, writes acknowledged, events checked, lost, duplicated, reordered,
wrong lists, time, ...) and, on a failure, its details, the seed and a replay command for each
failed schedule; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import sys

from ._cluster import ENGINES, available
from ._run import FAULTS, Options, main_run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--engine", choices=ENGINES, default="redis")
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--first", type=int, default=0, help="index of the first schedule")
    parser.add_argument("--nodes", type=int, default=3, choices=(2, 3))
    parser.add_argument("--retention", type=int, default=10, metavar="EVENTS")
    parser.add_argument("--writers", type=int, default=2, help="concurrent writer threads")
    parser.add_argument(
        "--faults",
        default="",
        help=f"comma-separated fault kinds to draw from (default all: {', '.join(FAULTS)})",
    )
    parser.add_argument("--verbose", action="store_true", help="a line per schedule")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(unknown)}")
    if min(args.schedules, args.retention, args.writers) < 1:
        parser.error("--schedules, --retention and --writers must be positive")
    why = available(args.engine)
    if why is not None:
        print(f"cannot run on {args.engine}: {why}", file=sys.stderr)
        return 2
    options = Options(
        engine=args.engine,
        schedules=args.schedules,
        seed=args.seed,
        first=args.first,
        nodes=args.nodes,
        retention=args.retention,
        writers=args.writers,
        faults=faults,
        verbose=args.verbose,
    )
    return main_run(options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
