"""The log backend contract: what a shared event log (Redis, NATS JetStream, PostgreSQL, or the
in-process reference) must do for several hubs to serve one consistent history (protocol.md §1, 2).

A backend stores, per hub log:

* an **epoch** id, new whenever the log starts from nothing (first use, a wiped Redis, a
  recreated stream); a node that sees another epoch than the one it loaded drops its cache;
* the **head**: the newest rv handed out. ``append`` assigns ``rv = max(head + 1, now in µs)``
  from the backend's own clock, atomically with the precondition check, the object state and
  the retention trim, so versions are globally increasing and never reused;
* per resource, the retained **records** (each with the previous object, as etcd's
  ``prev_kv``), the compaction **watermark** (the newest rv evicted, or the epoch's start), and
  the **object state** (latest object per key, with its rv), consistent with the records.

Objects travel as encoded JSON (``bytes``): a backend never parses them, and a node decodes
each record once. This module is the contract only (values, a Protocol and the precondition
rule every backend shares); ``tests/backends`` is the suite each backend must pass.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Final, Literal, Protocol

import msgspec

from .errors import AlreadyExists, Conflict, NotFound

__all__ = [
    "ABSENT",
    "PRESENT",
    "Appended",
    "Batch",
    "Expect",
    "Loaded",
    "LogBackend",
    "Record",
    "ResourceLoad",
    "Retention",
    "Write",
    "check_expectation",
]

#: ``Write.expect`` values: the key must not exist (create) / must exist (replace, delete).
ABSENT: Final = "absent"
PRESENT: Final = "present"

Expect = Literal["absent", "present"] | int | None


class Retention(msgspec.Struct, frozen=True):
    """How much history a resource keeps: the newest ``max_events``, none older than
    ``max_age`` seconds (judged by rv, which is never behind the backend's clock)."""

    max_events: int
    max_age: float


class Write(msgspec.Struct, frozen=True, kw_only=True):
    """One change to append. ``object`` is the encoded JSON (``None`` on a ``DELETED``:
    the backend takes the current object). ``expect`` is checked atomically with the append:
    ``None`` (unconditional), :data:`ABSENT`, :data:`PRESENT`, or the current object's rv."""

    resource: str
    key: str
    type: str
    object: bytes | None
    expect: Expect = None


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One appended change as stored: ``object`` and ``prev`` are encoded JSON, unstamped
    (a node stamps ``metadata.resourceVersion``); ``prev_rv`` is 0 when there was none."""

    rv: int
    resource: str
    key: str
    type: str
    object: bytes
    prev: bytes | None = None
    prev_rv: int = 0


class Appended(msgspec.Struct, frozen=True):
    """What ``append`` stored: the change's rv and its object as the log recorded it (encoded,
    unstamped; for a ``DELETED`` written without an object, the object it removed)."""

    rv: int
    object: bytes


class Batch(msgspec.Struct, frozen=True):
    """What a follower reads at once: every record of the followed resources with
    ``rv <= head`` and above the previous batch's head that the log still holds, in rv order,
    under ``epoch``."""

    epoch: str
    head: int
    records: list[Record]
    #: When the newest record was appended, in µs by the engine's clock; 0 when that is its rv
    #: (versions that follow the clock, protocol.md §1). Only the follower-lag metric reads it.
    time: int = 0
    #: The newest compaction watermark of the followed resources, read with the records
    #: (0 where the engine can tell that nothing between the previous head and these records
    #: was evicted). Above the previous batch's head, retention evicted records this follower
    #: never read: the batch has a gap, and the node must reload as a new node would.
    watermark: int = 0


class ResourceLoad(msgspec.Struct, frozen=True):
    """One resource as a late node loads it: the watermark, the retained records (ascending)
    and the object state as records (``object`` the current object at ``rv``; any order)."""

    watermark: int
    records: list[Record]
    state: list[Record]


class Loaded(msgspec.Struct, frozen=True):
    """A consistent image of the log at ``head``: what a node needs to serve snapshots and
    resumes exactly as a node that followed from the start would."""

    epoch: str
    head: int
    resources: dict[str, ResourceLoad]


class LogBackend(Protocol):
    """A shared event log. Every method may raise ``ServiceUnavailable`` when the engine
    cannot be reached; ``append`` also raises ``AlreadyExists``/``NotFound``/``Conflict``
    for a failed expectation (see :func:`check_expectation`)."""

    #: The log's address with any password removed (for logs and errors).
    url: str

    async def open(self, retention: Mapping[str, Retention]) -> Loaded:
        """Connect (creating the log and its epoch if missing) and load these resources."""
        ...

    async def append(self, write: Write, retention: Retention) -> Appended:
        """Append one change atomically; returns its rv and the object stored. Raising
        ``ServiceUnavailable`` leaves the outcome unknown: the change may have been appended."""
        ...

    async def head(self) -> tuple[str, int]:
        """The epoch and the newest rv handed out."""
        ...

    async def read(self, resource: str, after: int) -> list[Record]:
        """The retained records of ``resource`` after ``after``; ``Expired`` below the
        watermark."""
        ...

    def follow(self, resources: Mapping[str, Retention], after: int) -> AsyncGenerator[Batch]:
        """Batches of new records after ``after``, as they are appended, forever (until the
        connection fails: then it raises ``ServiceUnavailable``). A follower that falls behind
        retention is told so by ``Batch.watermark``, never handed a silent gap."""
        ...

    async def close(self) -> None: ...


def check_expectation(write: Write, current_rv: int | None) -> None:
    """Raise the client error for a failed ``write.expect`` given the key's current rv."""
    expect = write.expect
    if expect is None:
        return
    name = f'{write.resource} "{write.key[:100]}"'
    if expect == ABSENT:
        if current_rv is not None:
            raise AlreadyExists(f"{name} already exists")
        return
    if current_rv is None:
        raise NotFound(f"{name} not found")
    if expect != PRESENT and expect != current_rv:
        raise Conflict(
            f"the object {name} has been modified: resourceVersion {expect} is not the "
            f"current {current_rv}"
        )
