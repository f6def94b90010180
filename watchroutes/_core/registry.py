"""Subscriptions, their bounded buffers, and fan-out.

A publish visits only the subscriptions that can match it: those of its resource whose filter
pins no ``metadata.name``, plus those pinned to its key. For each, the selector transition
(DESIGN 3.2) decides whether the entry is sent, and as which type; the frame for that type is
shared by every subscriber, so bytes are encoded once per event.

Every buffer is bounded. A subscriber past its buffer is closed with ``SLOW`` under the
default ``disconnect`` policy: its stream ends and the client resumes exactly from the last rv
it received. A publisher never waits for a watcher.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from .events import Entry, EventType, Frame
from .selectors import Filter

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "CloseReason",
    "Registry",
    "Subscription",
    "SubscriptionStatistics",
    "transition",
]

#: Frames queued per subscriber before the slow-consumer policy applies. kube-apiserver sizes
#: a watcher's channel between 10 and 1,000 events; 1,000 absorbs a burst of that size while a
#: slow client's memory stays bounded (about 1,000 shared frames, no copies).
DEFAULT_BUFFER_SIZE: Final = 1000


class CloseReason(enum.StrEnum):
    CLIENT = "client"  # the peer went away
    TIMEOUT = "timeout"  # timeoutSeconds or the server's maximum watch duration
    SLOW = "slow"  # past its buffer (disconnect policy)
    SHUTDOWN = "shutdown"  # the hub is closing
    ERROR = "error"  # the stream failed (write error, write timeout, expired)


class SubscriptionStatistics(NamedTuple):
    buffered: int
    max_buffer: int
    high_water: int
    delivered: int


def transition(flt: Filter, entry: Entry) -> EventType | None:
    """How ``entry`` reaches a watcher filtered by ``flt``: the type to send, or ``None``.

    Kubernetes' rule (``cache_watcher.go``): an object entering the selector arrives as
    ``ADDED``, one leaving it as ``DELETED`` carrying its previous state, a change outside it
    is not sent.
    """
    etype = entry.type
    if flt.everything:
        return etype
    if etype is EventType.DELETED:
        return etype if flt.matches(entry.object) else None
    now = flt.matches(entry.object)
    was = entry.prev is not None and flt.matches(entry.prev)
    if now:
        return etype if was or etype is EventType.ADDED else EventType.ADDED
    return EventType.DELETED if was else None


class Subscription:
    """One watcher's place in the fan-out: its filter and its bounded buffer."""

    __slots__ = (
        "_buffer",
        "closed",
        "delivered",
        "filter",
        "high_water",
        "id",
        "max_buffer",
        "resource",
        "waker",
    )

    def __init__(self, sid: int, resource: str, flt: Filter, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.id = sid
        self.resource = resource
        self.filter = flt
        self.max_buffer = max_buffer
        self._buffer: deque[Frame] = deque()
        self.closed: CloseReason | None = None
        self.high_water = 0
        self.delivered = 0
        #: Called (in the hub's thread) whenever the subscription has something new to do.
        self.waker: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    def offer(self, frame: Frame) -> None:
        if self.closed is not None:
            return
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            self.close(CloseReason.SLOW)
            return
        buffer.append(frame)
        if len(buffer) > self.high_water:
            self.high_water = len(buffer)
        if self.waker is not None:
            self.waker()

    def drain(self) -> list[Frame]:
        """Everything queued, oldest first."""
        buffer = self._buffer
        frames = list(buffer)
        buffer.clear()
        self.delivered += len(frames)
        return frames

    def close(self, reason: CloseReason) -> None:
        """Stop buffering. ``SLOW`` also drops the queue: the client resumes from its last rv."""
        if self.closed is not None:
            return
        self.closed = reason
        if reason is CloseReason.SLOW:
            self._buffer.clear()
        if self.waker is not None:
            self.waker()

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            len(self._buffer), self.max_buffer, self.high_water, self.delivered
        )

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.resource!r}, {self.filter!r})"


class Registry:
    """The subscriptions of one hub, indexed by resource and by pinned key."""

    __slots__ = ("_by_name", "_next_id", "_unnamed")

    def __init__(self) -> None:
        self._unnamed: dict[str, dict[int, Subscription]] = {}
        self._by_name: dict[tuple[str, str], dict[int, Subscription]] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return sum(len(s) for s in self._unnamed.values()) + sum(
            len(s) for s in self._by_name.values()
        )

    def subscribe(self, resource: str, flt: Filter, max_buffer: int) -> Subscription:
        self._next_id += 1
        sub = Subscription(self._next_id, resource, flt, max_buffer)
        self._slot(sub, create=True)[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        slot = self._slot(sub, create=False)
        slot.pop(sub.id, None)
        if not slot:
            if sub.filter.name is None:
                self._unnamed.pop(sub.resource, None)
            else:
                self._by_name.pop((sub.resource, sub.filter.name), None)

    def _slot(self, sub: Subscription, *, create: bool) -> dict[int, Subscription]:
        name = sub.filter.name
        if name is None:
            slot = self._unnamed.get(sub.resource)
            if slot is None:
                slot = {}
                if create:
                    self._unnamed[sub.resource] = slot
        else:
            slot = self._by_name.get((sub.resource, name))
            if slot is None:
                slot = {}
                if create:
                    self._by_name[(sub.resource, name)] = slot
        return slot

    def candidates(self, resource: str, key: str) -> Iterable[Subscription]:
        unnamed = self._unnamed.get(resource)
        named = self._by_name.get((resource, key))
        if unnamed and named:
            return [*unnamed.values(), *named.values()]
        if unnamed:
            return list(unnamed.values())
        if named:
            return list(named.values())
        return ()

    def publish(self, entry: Entry) -> int:
        """Offer ``entry`` to every subscription it concerns; returns how many got a frame."""
        count = 0
        for sub in self.candidates(entry.resource, entry.key):
            as_type = transition(sub.filter, entry)
            if as_type is not None:
                sub.offer(entry.frame(as_type))
                count += 1
        return count

    def all(self) -> list[Subscription]:
        subs = [s for slot in self._unnamed.values() for s in slot.values()]
        subs.extend(s for slot in self._by_name.values() for s in slot.values())
        return subs
