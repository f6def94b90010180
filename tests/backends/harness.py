"""What the contract suite needs of each backend: fresh isolated logs, more nodes on the same
log, a way to wipe it, and an address where nothing answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from watchroutes._core.backend import LogBackend


@dataclass
class Harness:
    #: A new client of the same log (another node).
    make: Callable[[], LogBackend]
    #: Remove the log's data, as a flushed Redis or a dropped stream or table.
    wipe: Callable[[], Awaitable[None]]
    #: A client of an address where no server answers.
    dead: Callable[[], LogBackend]
    #: The URL ``watchroutes.backends.from_url`` takes for this log (``None``: not by URL).
    url: str | None = None
    opened: list[LogBackend] = field(default_factory=list)

    def node(self) -> LogBackend:
        backend = self.make()
        self.opened.append(backend)
        return backend


HarnessFactory = Callable[[], AbstractAsyncContextManager[Harness]]
Iter = AsyncIterator[Harness]
