"""The fault suite at a small, fixed count: every fault kind once per engine, on fixed seeds.

Each engine starts three example processes (Starlette, aiohttp, Starlette) on a private shared
log and runs one schedule of each fault kind; every watcher's events and every list must match
the acknowledged writes (the rules are in ``_oracle``). A failure prints its seed and a replay
command. The long runs are ``python -m tests.faults`` (docs/operations.md, "Tested under
faults").
"""

from __future__ import annotations

import os
import shutil

import pytest

from .._services import require
from ._run import FAULTS, Options, Run

pytestmark = pytest.mark.network

SEEDS = {"redis": 11, "postgres": 12, "nats": 13}


@pytest.mark.parametrize("engine", ["redis", "postgres", "nats"])
def test_every_fault_kind_keeps_every_acknowledged_write(engine: str) -> None:
    if engine == "redis":
        if shutil.which("redis-server") is None:  # a private Redis, to kill and restart
            message = "redis-server is not installed"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    else:
        require(engine)
    kinds = tuple(k for k in FAULTS if engine == "redis" or not k.startswith("redis"))
    options = Options(
        engine=engine,
        schedules=len(kinds),
        seed=SEEDS[engine],
        sequence=kinds,
        verbose=True,
    )
    lines: list[str] = []
    with Run(options, out=lines.append) as run:
        run.run()
    report = run.report()
    print("\n".join(lines) + "\n" + report)
    assert run.tally.counts["schedules"] == len(kinds)
    assert run.tally.failures() == 0, "\n".join(lines) + "\n" + report
