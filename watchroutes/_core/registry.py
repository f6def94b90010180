"""Subscriptions, their bounded buffers, and fan-out.

A publish visits only the subscriptions that can match it (see :class:`Registry`). For each,
the selector transition (protocol.md §3.2) decides whether the entry is sent, and as which type; the
frame for that type is shared by every subscriber, so bytes are encoded once per event.

Every buffer is bounded, and a publisher never waits for a watcher. Past its buffer, a
subscriber is handled by its slow-consumer policy (protocol.md §5.3):

- ``disconnect`` (the default): it is closed with ``SLOW``; its stream ends and the client
  resumes exactly from the last rv it received.
- ``coalesce``: the buffer is an ordered map by key. A newer event for a queued key replaces
  it and moves to the tail, so rvs stay ascending and a client that applies events as upserts
  and removals ends with the exact state (it may miss intermediate versions, and may see
  ``MODIFIED``/``DELETED`` for a key whose ``ADDED`` was coalesced away). Past ``buffer``
  distinct keys it is closed with ``SLOW``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, NamedTuple, TypeVar

from .events import Entry, EventType, Frame
from .selectors import Filter, IndexTerm, object_index_terms

_K = TypeVar("_K")

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "CloseReason",
    "SlowConsumerPolicy",
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
    UNAVAILABLE = "unavailable"  # the shared log was lost or replaced: resume elsewhere/later
    EXPIRED = "expired"  # the principal's credentials expired: re-authenticate, then resume
    REVOKED = "revoked"  # the app revoked the principal's access


class SlowConsumerPolicy(enum.StrEnum):
    DISCONNECT = "disconnect"
    COALESCE = "coalesce"


class SubscriptionStatistics(NamedTuple):
    buffered: int
    max_buffer: int
    high_water: int
    delivered: int
    coalesced: int


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
        "_latest",
        "closed",
        "closed_at",
        "coalesced",
        "delivered",
        "direct",
        "dropped",
        "filter",
        "high_water",
        "id",
        "index_term",
        "max_buffer",
        "on_close",
        "principal",
        "resource",
        "waker",
    )

    def __init__(
        self,
        sid: int,
        resource: str,
        flt: Filter,
        max_buffer: int,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.id = sid
        self.resource = resource
        self.filter = flt
        self.max_buffer = max_buffer
        #: Under ``disconnect``: the queued frames, oldest first (drained all at once, so a
        #: list, which costs a tenth of an empty deque's 600 bytes per idle watcher).
        self._buffer: list[Frame] = []
        #: Under ``coalesce``: the queued frame of each key, oldest first (else ``None``).
        self._latest: dict[str, Frame] | None = (
            {} if policy is SlowConsumerPolicy.COALESCE else None
        )
        self.closed: CloseReason | None = None
        #: The hub's head when it was closed (``None``: unknown, as for a slow consumer).
        self.closed_at: int | None = None
        self.high_water = 0
        self.delivered = 0
        self.coalesced = 0
        self.dropped = 0  # frames discarded when it was closed as a slow consumer
        #: The term the registry files it under (``None``: scanned on every publish).
        self.index_term: IndexTerm | None = None
        #: Called (in the hub's thread) whenever the subscription has something new to do.
        self.waker: Callable[[], None] | None = None
        #: Offered a frame first when nothing is queued (in the hub's thread): it delivers the
        #: frame to the connection at once and returns True, or returns False and the frame is
        #: queued (and the waker called) as usual. Never asked while a frame waits in the
        #: buffer: it would overtake it.
        self.direct: Callable[[Frame], bool] | None = None
        #: Called (in the hub's thread) once when it is closed, after the waker.
        self.on_close: Callable[[], None] | None = None
        #: The name of the principal it serves (``None``: an open resource); revocation
        #: closes every subscription of a principal.
        self.principal: str | None = None

    @property
    def policy(self) -> SlowConsumerPolicy:
        if self._latest is None:
            return SlowConsumerPolicy.DISCONNECT
        return SlowConsumerPolicy.COALESCE

    def __len__(self) -> int:
        latest = self._latest
        return len(self._buffer) if latest is None else len(latest)

    def offer(self, frame: Frame, key: str = "") -> None:
        if self.closed is not None:
            return
        latest = self._latest
        direct = self.direct
        if (
            direct is not None
            and not (self._buffer if latest is None else latest)
            and direct(frame)
        ):
            self.delivered += 1
            return
        if latest is None:
            buffer = self._buffer
            if len(buffer) >= self.max_buffer:
                self.close(CloseReason.SLOW)
                return
            buffer.append(frame)
            size = len(buffer)
        else:
            if latest.pop(key, None) is not None:
                self.coalesced += 1
            elif len(latest) >= self.max_buffer:
                self.close(CloseReason.SLOW)
                return
            latest[key] = frame
            size = len(latest)
        if size > self.high_water:
            self.high_water = size
        if self.waker is not None:
            self.waker()

    def oldest_time(self) -> float | None:
        """The publish time of the oldest queued frame (``None`` when nothing is queued)."""
        latest = self._latest
        if latest is None:
            return self._buffer[0].time if self._buffer else None
        return next(iter(latest.values())).time if latest else None

    def drain(self) -> list[Frame]:
        """Everything queued, oldest first."""
        latest = self._latest
        if latest is None:
            frames = self._buffer
            if not frames:
                return []
            self._buffer = []
        else:
            frames = list(latest.values())
            latest.clear()
        self.delivered += len(frames)
        return frames

    def position(self, head: int) -> int | None:
        """The rv through which every entry was queued for, or filtered out for, this
        subscription, given the hub's ``head`` now: ``head`` while it is open, the head at its
        close once closed (entries published since were never offered to it), ``None`` when
        that is unknown. A bookmark may claim this rv once the queue is drained, never more."""
        return head if self.closed is None else self.closed_at

    def close(self, reason: CloseReason, head: int | None = None) -> None:
        """Stop buffering at the hub's ``head`` (``None``: unknown, so no closing bookmark).
        ``SLOW`` also drops the queue: the client resumes from its last rv."""
        if self.closed is not None:
            return
        self.closed = reason
        self.closed_at = head
        if reason is CloseReason.SLOW:
            self.dropped += len(self)
            self._buffer.clear()
            if self._latest is not None:
                self._latest.clear()
        if self.waker is not None:
            self.waker()
        if self.on_close is not None:
            self.on_close()

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            len(self), self.max_buffer, self.high_water, self.delivered, self.coalesced
        )

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.resource!r}, {self.filter!r})"


class Registry:
    """The subscriptions of one hub, indexed so that a publish visits only candidates.

    A subscription whose filter has equality requirements (``metadata.name=`` from a
    ``/R/{key}`` route or a field selector, ``k=v`` labels) is filed under one of them, the
    one with the fewest subscriptions at the time; the rest are scanned on every publish of
    their resource. An entry visits the subscriptions filed under the terms of its object
    *and of its previous object*: a watcher whose selector the change leaves must still see
    it, to send its ``DELETED``. Filing under any one required term is exact because an object
    without that term cannot match the filter (see :func:`object_index_terms`).
    """

    __slots__ = ("_indexed", "_next_id", "_scanned", "_terms")

    def __init__(self) -> None:
        self._scanned: dict[str, dict[int, Subscription]] = {}
        self._terms: dict[tuple[str, IndexTerm], dict[int, Subscription]] = {}
        self._indexed: dict[str, int] = {}  # resource -> subscriptions filed under a term
        self._next_id = 0

    def __len__(self) -> int:
        return sum(map(len, self._scanned.values())) + sum(self._indexed.values())

    def subscribe(
        self,
        resource: str,
        flt: Filter,
        max_buffer: int,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
    ) -> Subscription:
        self._next_id += 1
        sub = Subscription(self._next_id, resource, flt, max_buffer, policy)
        if flt.index_terms:
            terms = self._terms
            term = min(flt.index_terms, key=lambda t: len(terms.get((resource, t), ())))
            sub.index_term = term
            terms.setdefault((resource, term), {})[sub.id] = sub
            self._indexed[resource] = self._indexed.get(resource, 0) + 1
        else:
            self._scanned.setdefault(resource, {})[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        resource = sub.resource
        if sub.index_term is None:
            _discard(self._scanned, resource, sub)
        elif _discard(self._terms, (resource, sub.index_term), sub):
            left = self._indexed[resource] - 1
            if left:
                self._indexed[resource] = left
            else:
                del self._indexed[resource]

    def candidates(self, entry: Entry) -> list[Subscription]:
        """The subscriptions ``entry`` may concern: a superset of those it is sent to."""
        resource = entry.resource
        scanned = self._scanned.get(resource)
        found = list(scanned.values()) if scanned else []
        if resource in self._indexed:
            terms = object_index_terms(entry.object)
            if entry.prev is not None:
                terms |= object_index_terms(entry.prev)
            index = self._terms
            for term in terms:
                slot = index.get((resource, term))
                if slot:
                    found.extend(slot.values())
        return found

    def publish(self, entry: Entry) -> int:
        """Offer ``entry`` to every subscription it concerns; returns how many got a frame."""
        count = 0
        own = entry.frame()  # what every watcher of everything gets: the common case
        key = entry.key
        for sub in self.candidates(entry):
            flt = sub.filter
            if flt.everything:
                sub.offer(own, key)
            else:
                as_type = transition(flt, entry)
                if as_type is None:
                    continue
                sub.offer(own if as_type is entry.type else entry.frame(as_type), key)
            count += 1
        return count

    def all(self) -> list[Subscription]:
        subs = [s for slot in self._scanned.values() for s in slot.values()]
        subs.extend(s for slot in self._terms.values() for s in slot.values())
        return subs


def _discard(slots: dict[_K, dict[int, Subscription]], slot_key: _K, sub: Subscription) -> bool:
    """Remove ``sub`` from ``slots[slot_key]``, dropping the slot when it empties."""
    slot = slots.get(slot_key)
    if slot is None or slot.pop(sub.id, None) is None:
        return False
    if not slot:
        del slots[slot_key]
    return True
