"""What a watch yields and what an informer reports: values, never live objects.

A :class:`WatchEvent` is one envelope of protocol.md §3.5 as it came off the wire (SSE data block,
JSON line, long-poll entry), or a control event the client made itself where the wire has no
frame for it: a ``BOOKMARK`` for an SSE id-only block or a long poll's continue rv, and a
``RESET`` when the client must start over from a full state (410, or a drop in the middle of
the initial events). A :class:`Change` is what an informer's store did with it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final

import msgspec

from .._core.events import EventType

__all__ = [
    "INITIAL_EVENTS_END",
    "Change",
    "ChangeType",
    "EventType",
    "KeyFunc",
    "WatchEvent",
    "default_key",
]

#: The annotation on the bookmark that ends the initial events (Kubernetes KEP-3157).
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"


class WatchEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a watch."""

    #: ``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK`` or ``RESET`` (errors are raised or
    #: retried, never yielded).
    type: EventType
    #: The object (for ``DELETED``: its last state, stamped with the deletion's rv; for a
    #: ``BOOKMARK``: the bookmark object, or ``None`` for one the client made; for ``RESET``:
    #: ``None``).
    object: dict[str, Any] | None = None
    #: The event's rv, a decimal string; ``None`` on ``RESET`` and on initial events of an
    #: app snapshot callback, which are no resume point.
    resource_version: str | None = None

    @property
    def initial_events_end(self) -> bool:
        """Whether this is the bookmark that ends the initial events: the state is complete."""
        if self.type is not EventType.BOOKMARK or self.object is None:
            return False
        metadata = self.object.get("metadata")
        if not isinstance(metadata, dict):
            return False
        annotations = metadata.get("annotations")
        return isinstance(annotations, dict) and annotations.get(INITIAL_EVENTS_END) == "true"


class ChangeType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One change of an informer's store."""

    type: ChangeType
    #: The object's key in the store.
    key: str
    #: The new object; for ``DELETED``, the last state (the server's, or for a tombstone the
    #: last one this store knew).
    object: dict[str, Any]
    #: The object the store held before (``None`` for ``ADDED``).
    old: dict[str, Any] | None = None
    #: The rv of the event that made the change (``None`` for a tombstone: the deletion
    #: happened while the client was away, at a version it never saw).
    resource_version: str | None = None
    #: ``True`` for a ``DELETED`` found by a relist rather than received (client-go's
    #: ``DeletedFinalStateUnknown``): ``object`` may be older than the real final state.
    tombstone: bool = False


#: How an informer names an object in its store.
KeyFunc = Callable[[dict[str, Any]], str]


def default_key(obj: dict[str, Any]) -> str:
    """``metadata.name``, or ``namespace/name`` when the object has a ``metadata.namespace``
    (client-go's ``MetaNamespaceKeyFunc``)."""
    metadata = obj.get("metadata")
    if type(metadata) is dict and "namespace" not in metadata:
        plain = metadata.get("name")
        if type(plain) is str:
            return plain
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise ValueError("the object has no metadata.name; pass key= to the informer")
    namespace = metadata.get("namespace")
    name: str = metadata["name"]
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name
