from __future__ import annotations

from contextlib import asynccontextmanager

from watchroutes.backends.memory import MemoryLog

from .harness import Harness, Iter


@asynccontextmanager
async def harness() -> Iter:
    log = MemoryLog()

    async def wipe() -> None:
        log.wipe()

    def dead() -> MemoryLog:
        off = MemoryLog()
        off.available = False
        return off

    yield Harness(make=lambda: log, wipe=wipe, dead=dead)
