"""Events as values, and their encoded frames.

A log :class:`Entry` is one change of one object. What a watcher receives is a :class:`Frame`:
the entry as it applies to *that* watcher's selector (protocol.md §3.2 transitions: the same
``MODIFIED`` is ``ADDED`` to a watcher it enters, ``DELETED`` to one it leaves). An entry has
at most three frames, each built on first use and cached on the entry, and each frame encodes
its envelope once per wire format. So a publish to 10,000 watchers serialises JSON once, and
every watcher is handed the same ``bytes`` object (protocol.md §2, "encode once").
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from .errors import Status

__all__ = [
    "INITIAL_EVENTS_END",
    "Entry",
    "Envelope",
    "EventType",
    "Frame",
    "bookmark_object",
    "encode",
]

#: The annotation that marks the bookmark ending the initial events (Kubernetes KEP-3157).
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"
    RESET = "RESET"
    ERROR = "ERROR"


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """The envelope of protocol.md §3.5; key order on the wire is the field order."""

    type: str
    #: The object (``None`` only for ``RESET``).
    object: Any = None
    #: The event's rv as a decimal string; absent on ``RESET``, ``ERROR`` and snapshot-callback
    #: initial events, which are no resume point.
    resourceVersion: str | None = None  # noqa: N815 - wire name


_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Compact JSON, the one encoder of the package (msgspec never emits raw CR/LF)."""
    return _encoder.encode(value)


def bookmark_object(kind: str, api_version: str, rv: int, *, initial_end: bool = False) -> Any:
    metadata: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": kind, "apiVersion": api_version, "metadata": metadata}


def status_envelope(status: Status) -> bytes:
    return encode(Envelope(type="ERROR", object=status))


class Frame:
    """One event as a watcher receives it, with its encodings cached.

    ``rv`` is ``None`` for events that are no resume point (RESET, ERROR, initial events from an
    app snapshot callback): they are written without an SSE ``id:`` line.
    """

    __slots__ = ("_json", "_line", "_sse", "object", "rv", "time", "type")

    def __init__(self, type: EventType, object: Any, rv: int | None) -> None:  # noqa: A002
        self.type = type
        self.object = object
        self.rv = rv
        #: The runtime's monotonic clock when the event was published (0.0: not a live event).
        self.time = 0.0
        self._json: bytes | None = None
        self._line: bytes | None = None
        self._sse: bytes | None = None

    def json(self) -> bytes:
        """The envelope's compact JSON, encoded on first use."""
        data = self._json
        if data is None:
            rv = None if self.rv is None else str(self.rv)
            data = self._json = encode(Envelope(self.type.value, self.object, rv))
        return data

    def line(self) -> bytes:
        """The JSON-lines form: the envelope and ``\\n``."""
        data = self._line
        if data is None:
            data = self._line = self.json() + b"\n"
        return data

    def sse(self) -> bytes:
        """The SSE block. msgspec's JSON has no raw CR/LF, so one ``data:`` line suffices."""
        data = self._sse
        if data is None:
            if self.rv is None:
                data = b"data: " + self.json() + b"\n\n"
            else:
                data = b"id: %d\ndata: %s\n\n" % (self.rv, self.json())
            self._sse = data
        return data

    def __repr__(self) -> str:
        return f"Frame({self.type.value}, rv={self.rv})"


def _stamped(obj: Any, rv: int) -> Any:
    """``obj`` with ``metadata.resourceVersion`` set to ``rv`` (a copy; ``obj`` is untouched)."""
    if not isinstance(obj, dict):
        return obj
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return obj
    return {**obj, "metadata": {**metadata, "resourceVersion": str(rv)}}


class Entry:
    """One change in the log: ``type`` of ``object`` at ``rv``, with the ``prev`` version.

    ``prev`` is the object before this change (``None`` for a creation), as etcd's ``prev_kv``:
    it lets a replay compute selector transitions exactly as a live fan-out does.
    ``time`` is the runtime's monotonic clock at publish, used for age-based retention.
    """

    __slots__ = ("_frames", "key", "object", "prev", "resource", "rv", "time", "type")

    def __init__(
        self,
        *,
        rv: int,
        resource: str,
        key: str,
        type: EventType,  # noqa: A002
        object: Any,  # noqa: A002
        prev: Any,
        time: float,
    ) -> None:
        self.rv = rv
        self.resource = resource
        self.key = key
        self.type = type
        self.object = object
        self.prev = prev
        self.time = time
        self._frames: dict[EventType, Frame] = {}

    def frame(self, as_type: EventType | None = None) -> Frame:
        """The frame of this entry delivered as ``as_type`` (default: its own type).

        ``DELETED`` for an entry that is not a deletion is the *leave* transition: it carries
        the previous object stamped with this entry's rv (protocol.md §3.2).
        """
        as_type = as_type or self.type
        frame = self._frames.get(as_type)
        if frame is None:
            obj = self.object
            if as_type is EventType.DELETED and self.type is not EventType.DELETED:
                obj = _stamped(self.prev, self.rv)
            frame = self._frames[as_type] = Frame(as_type, obj, self.rv)
            frame.time = self.time
        return frame

    def __repr__(self) -> str:
        return f"Entry({self.type.value} {self.resource}/{self.key} rv={self.rv})"
