"""A hub's link to a shared log: the one follower of this process, and consistent reads.

The follower loads the log's image (epoch, head, each resource's history and object state),
then applies every batch the backend reports to the hub's state, which fans the entries out to
the local watchers. The publishing node learns of its own writes the same way (protocol.md §2).

* **Outage**: the backend raises ``ServiceUnavailable``. Every watch ends resumably
  (``CloseReason.UNAVAILABLE``: SSE and JSON lines end, WebSocket closes 1013) and the follower
  reconnects with exponential backoff and jitter. New watches get 503 meanwhile. On
  reconnection, the same epoch continues from this node's head, unless the backend has
  compacted past it (then the node reloads, as for a new epoch).
* **New epoch** (a wiped Redis, a recreated stream): the node ends its watches, drops its
  cache and loads the new log; clients resume into RESET or 410, never across the gap.
* **Fallen behind retention** (a paused process, a long GC pause, a burst larger than the
  retention between two reads): the batch's watermark is above this node's head, so records
  it never read were evicted. The node does what a new node does at once: it ends its
  watches, reloads the log's image consistently, and from then on every position older than
  the watermark is Expired (410, or RESET on SSE); it never serves the gap.
* **Consistent reads** (protocol.md §3.1): every list and watch (but ``resourceVersion=0``) is
  served at least at the backend's head when the request arrives, so it sees every write
  acknowledged before it on any node, and a resume is judged against the same history on
  every node; a node that has not applied that far waits up to :data:`SYNC_TIMEOUT` seconds,
  then answers 504 ``Timeout``. (protocol.md asks only "at least N" for a given rv; one round trip
  to the backend buys the stronger rule.)
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Final

import anyio

from .._core.backend import Loaded, LogBackend, Retention
from .._core.errors import ServiceUnavailable, Timeout
from .._core.registry import CloseReason

if TYPE_CHECKING:
    from .node import Node

__all__ = ["SYNC_TIMEOUT", "Replica"]

logger = logging.getLogger("watchroutes")

#: How long a request waits for this node to apply the log as far as it needs (protocol.md §1).
SYNC_TIMEOUT: Final = 3.0
#: How long ``Hub.start`` waits for the first load before serving 503s and retrying behind.
START_TIMEOUT: Final = 5.0
_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 5.0


class Replica:
    """Follows ``backend`` into ``hub.state``; one per hub, run in the hub's task group."""

    def __init__(self, hub: Node, backend: LogBackend) -> None:
        self.hub = hub
        self.backend = backend
        self.epoch: str | None = None
        #: True while the follower is connected and this node's state is the log's.
        self.available = False
        self.lag_seconds = 0.0
        #: The newest rv this node appended: reads without a wait still see this node's writes.
        self.written = 0
        #: How often this node reloaded because it fell behind the log's retention.
        self.reloads = 0
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._loaded: anyio.Event | None = None
        self._warned = False
        self._random = random.Random()

    def retention(self) -> dict[str, Retention]:
        return {
            name: Retention(log.max_events, log.max_age)
            for name, log in self.hub.state.logs.items()
        }

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Run the follower in ``tg``; wait (bounded) until the first load is done."""
        self._loaded = anyio.Event()
        tg.start_soon(self._run)
        with anyio.move_on_after(START_TIMEOUT):
            await self._loaded.wait()
        if not self.available:
            logger.warning("the event log at %s is not reachable yet; retrying", self.backend.url)

    # -- the follower --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST
        while True:
            try:
                if await self._follow():
                    continue  # behind retention or a new epoch: reload at once
            except ServiceUnavailable as exc:
                if self.available:
                    logger.warning("event log lost: %s", exc.message)
                self._lost()
            await anyio.sleep(delay * (0.5 + self._random.random()))
            delay = min(delay * 2, _BACKOFF_MAX)
            if self.available:
                delay = _BACKOFF_FIRST

    async def _follow(self) -> bool:
        """Load, then apply batches until the log needs a reload (True) or fails."""
        hub = self.hub
        retention = self.retention()
        loaded = await self.backend.open(retention)
        with hub.lock:
            if not self._continues(loaded):
                self._reload(loaded)
            self.available = True
        if self._loaded is not None:
            self._loaded.set()
        self._wake()
        async with contextlib.aclosing(self.backend.follow(retention, hub.state.head)) as batches:
            async for batch in batches:
                if batch.epoch != self.epoch:
                    logger.warning("the event log at %s has a new epoch", self.backend.url)
                    return True
                with hub.lock:
                    head = hub.state.head
                    if batch.watermark > head:
                        # Records after our head were evicted before we read them: applying
                        # this batch would skip them. Reload instead (requests that need the
                        # log's head wait for it; the reload ends every watch).
                        self.reloads += 1
                        logger.warning(
                            "this node fell behind the event log's retention (applied %d, "
                            "compacted through %d): reloading",
                            head,
                            batch.watermark,
                        )
                        return True
                    applied = hub.state.apply(batch.records, batch.head, hub.clock.now())
                if applied:
                    newest = batch.time or batch.records[-1].rv
                    self.lag_seconds = max(0.0, time.time() - newest / 1e6)
                    hub.metrics.follower_lag(self.lag_seconds)
                self._wake()
        return False  # pragma: no cover - a follower ends only by raising

    def _continues(self, loaded: Loaded) -> bool:
        """Whether this node can go on from its head in ``loaded`` (same epoch, not behind this
        node, nothing it has not seen compacted away)."""
        if loaded.epoch != self.epoch:
            return False
        head = self.hub.state.head
        if loaded.head < head:  # the log went back (restored from an older copy): reload
            return False
        return all(part.watermark <= head for part in loaded.resources.values())

    def _reload(self, loaded: Loaded) -> None:
        hub = self.hub
        if self.epoch is not None:
            hub.end_watches(CloseReason.UNAVAILABLE)
        hub.state.load(loaded, hub.clock.now())
        self.epoch = loaded.epoch
        logger.info(
            "loaded the event log at %s: epoch %s, head %d",
            self.backend.url,
            loaded.epoch,
            loaded.head,
        )

    def _lost(self) -> None:
        hub = self.hub
        with hub.lock:
            was = self.available
            self.available = False
            if was:
                hub.end_watches(CloseReason.UNAVAILABLE)

    def _wake(self) -> None:
        head = self.hub.state.head
        waiting = []
        for target, event in self._waiters:
            if head >= target:
                event.set()
            else:
                waiting.append((target, event))
        self._waiters = waiting

    def _never_started(self) -> None:
        if not self._warned:
            self._warned = True
            logger.error(
                "the hub on the shared log %s was never started, so it serves no reads or "
                "watches: enter it in the app's lifespan (`async with hub:`), run the app with "
                "watchroutes.adapters.uvicorn.Server, or call watchroutes.adapters.aiohttp."
                "setup(app, hub)",
                self.backend.url,
            )
        raise ServiceUnavailable("the server is not ready to serve this resource yet")

    # -- consistent reads ----------------------------------------------------------------------

    async def sync(self, rv: int | None) -> None:
        """Return once this node has applied the log as far as the backend's head now (so a
        request sees every write acknowledged before it, whichever node took the write).
        ``ServiceUnavailable`` if the log cannot be reached, ``Timeout`` after
        :data:`SYNC_TIMEOUT`. An ``rv`` above the log's head is left to the request, as on
        an in-memory log (an SSE watch with a state starts over with ``RESET``, the others
        get 410: ``_core/transport.py``)."""
        if not self.available:
            if self._loaded is None:
                self._never_started()
            raise ServiceUnavailable("the event log is unavailable; try again")
        try:
            epoch, head = await self.backend.head()
        except ServiceUnavailable as exc:  # the detail names the backend: log it, don't send it
            logger.warning("%s", exc.message)
            raise ServiceUnavailable("the event log is unavailable; try again") from None
        if epoch != self.epoch:
            raise ServiceUnavailable("the event log is being reloaded (a new epoch)")
        await self.wait_applied(head)

    async def own_writes(self) -> None:
        """Return once this node has applied every write it acknowledged (no round trip: what
        ``resourceVersion=0`` and the plain reads wait for); bounded by :data:`SYNC_TIMEOUT`,
        after which the read takes what this node has."""
        with contextlib.suppress(Timeout):
            await self.wait_applied(self.written)

    async def wait_applied(self, target: int) -> None:
        if self.hub.state.head >= target:
            return
        event = anyio.Event()
        self._waiters.append((target, event))
        with anyio.move_on_after(SYNC_TIMEOUT):
            await event.wait()
        if not event.is_set():
            raise Timeout(
                f"this server has not caught up with the event log's resource version "
                f"{target} yet; try again"
            )
