"""The hub's state, without I/O: versions, per-resource logs and caches, subscriptions.

Everything that must be atomic lives in one method here, so the runtime only has to hold one
lock around each call:

* :meth:`HubState.append` assigns the rv, records the entry (with the previous object),
  updates the watch cache and fans the entry out to the candidate subscriptions;
* :meth:`HubState.open_watch` validates the start rv, reads the replay or the snapshot and
  registers the subscription at the same head, so no event can fall between snapshot and watch
  (protocol.md §5.2).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .backend import Loaded, Record
from .errors import (
    Expired,
    InvalidParameter,
    NotFound,
    ServiceUnavailable,
    UsageError,
)
from .events import Entry, EventType, Frame
from .log import DEFAULT_RETENTION_EVENTS, DEFAULT_RETENTION_SECONDS, ResourceLog
from .params import Mode, WatchRequest
from .registry import (
    DEFAULT_BUFFER_SIZE,
    CloseReason,
    Registry,
    SlowConsumerPolicy,
    Subscription,
    transition,
)
from .selectors import Filter
from .transport import ErrorForm, error_form
from .versions import VersionClock

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "HubState",
    "Opening",
    "StateSource",
    "object_key",
]

#: Largest encoded object accepted (protocol.md §3.2); etcd's default request limit is 1.5 MiB.
DEFAULT_MAX_OBJECT_BYTES: Final = 1024 * 1024


class StateSource(enum.Enum):
    """Where a watch's initial state comes from (protocol.md §1)."""

    CACHE = "cache"  # the hub's watch cache
    CALLBACK = "callback"  # the application's snapshot callback
    NONE = "none"  # no state: an expired resume is a plain 410


@dataclass
class Opening:
    """What :meth:`HubState.open_watch` decided for a new watch."""

    subscription: Subscription
    #: The head at which the subscription was registered (the end bookmark's rv).
    head: int
    #: Initial frames (``None``: no initial events). Empty with ``needs_snapshot`` set when
    #: the application callback must supply them.
    initial: list[Frame] | None
    replay: list[Frame] = field(default_factory=list)
    start_rv: int | None = None
    reset: bool = False
    needs_snapshot: bool = False


def object_key(obj: Any) -> str:
    """The key of an object that follows the object convention (``metadata.name``)."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise UsageError("the object has no metadata.name; pass key= explicitly")
    return name


_decode = msgspec.json.decode


def _stamp(obj: Any, rv: int) -> Any:
    if isinstance(obj, dict):
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            return {**obj, "metadata": {**metadata, "resourceVersion": str(rv)}}
    return obj


class HubState:
    """Versions, logs and subscriptions of one hub. Not thread-safe: the runtime locks."""

    def __init__(
        self,
        *,
        now_us: int,
        retention_events: int = DEFAULT_RETENTION_EVENTS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        young_window: float = 30.0,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        self.versions = VersionClock(now_us)
        self.retention_events = retention_events
        self.retention_seconds = retention_seconds
        self.young_window = young_window
        self.max_object_bytes = max_object_bytes
        self.logs: dict[str, ResourceLog] = {}
        self.registry = Registry()
        self.closing = False
        self.published = 0

    @property
    def head(self) -> int:
        return self.versions.last

    def add_resource(
        self, name: str, *, max_events: int | None = None, max_age: float | None = None
    ) -> ResourceLog:
        if name in self.logs:
            raise UsageError(f"resource {name!r} is already registered")
        log = ResourceLog(
            name,
            start_rv=self.head,
            max_events=self.retention_events if max_events is None else max_events,
            max_age=self.retention_seconds if max_age is None else max_age,
            young_window=self.young_window,
        )
        self.logs[name] = log
        return log

    def log(self, resource: str) -> ResourceLog:
        try:
            return self.logs[resource]
        except KeyError:
            raise NotFound(f"resource {resource[:100]!r} not found") from None

    def _entry(
        self, log: ResourceLog, etype: EventType, key: str, obj: Any, now: float, now_us: int
    ) -> Entry:
        rv = self.versions.next(now_us)
        current = log.current(key)
        entry = Entry(
            rv=rv,
            resource=log.name,
            key=key,
            type=etype,
            object=_stamp(obj, rv),
            prev=None if current is None else current.object,
            time=now,
        )
        return entry  # the object rules and its size were checked when the write was planned

    def append(
        self,
        resource: str,
        etype: EventType,
        obj: Any,
        *,
        key: str | None = None,
        now: float,
        now_us: int,
    ) -> Entry:
        """Record one change and fan it out; the object is stamped with its rv."""
        if etype not in (EventType.ADDED, EventType.MODIFIED, EventType.DELETED):
            raise UsageError(f"cannot publish a {etype.value} event")
        log = self.log(resource)
        entry = self._entry(log, etype, object_key(obj) if key is None else key, obj, now, now_us)
        log.append(entry)
        self.published += 1
        self.registry.publish(entry)
        return entry

    def seed(
        self, resource: str, objects: Iterable[Any], *, now: float, now_us: int, key: Any = None
    ) -> int:
        """Load start-up state into the watch cache without notifying any watcher.

        Each object gets its own rv (and a log entry), so a client that drops in the middle of
        the initial events resumes exactly.
        """
        log = self.log(resource)
        if any(s.resource == resource for s in self.registry.all()):
            raise UsageError("seed a resource before anyone watches it")
        count = 0
        for obj in objects:
            k = object_key(obj) if key is None else key(obj)
            log.append(self._entry(log, EventType.ADDED, k, obj, now, now_us))
            count += 1
        return count

    def get(self, resource: str, key: str) -> Entry | None:
        return self.log(resource).current(key)

    def snapshot(self, resource: str, flt: Filter) -> tuple[int, list[Any]]:
        """The head and the matching objects in ascending rv order (a consistent list)."""
        log = self.log(resource)
        if flt.everything:
            return self.head, [e.object for e in log.state.values()]
        if flt.name is not None:
            entry = log.state.get(flt.name)
            found = entry is not None and flt.matches(entry.object)
            return self.head, [entry.object] if found and entry else []
        return self.head, [e.object for e in log.state.values() if flt.matches(e.object)]

    def open_watch(
        self,
        resource: str,
        request: WatchRequest,
        *,
        source: StateSource,
        buffer: int = DEFAULT_BUFFER_SIZE,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
        principal: str | None = None,
    ) -> Opening:
        """Validate the start point and register a subscription at the current head.

        Raises ``Expired`` when the start rv cannot be served exactly and the transport must
        say so; :func:`~.transport.error_form` decides (SSE with a state source is answered
        with RESET and the state instead).
        """
        if self.closing:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        log = self.log(resource)
        head = self.head
        flt = request.filter
        rv = request.resource_version
        initial = request.initial_events
        reset = False
        replay: list[Frame] = []
        if rv is not None and rv != 0:
            try:
                if initial:
                    if rv > head:
                        log.check(rv, head)
                else:
                    entries = log.since(rv, head)
                    for entry in entries:
                        as_type = transition(flt, entry)
                        if as_type is not None:
                            replay.append(entry.frame(as_type))
            except Expired as exc:
                has_state = source is not StateSource.NONE
                if error_form(exc, request.mode, has_state=has_state) is not ErrorForm.RESET:
                    raise
                reset = initial = True
        if initial and source is StateSource.NONE:
            if request.send_initial_events:
                raise InvalidParameter(
                    "sendInitialEvents", "this resource has no state to send; watch from an rv"
                )
            initial = False  # nothing to send: start at the head, never a false "complete"
        if initial and source is StateSource.CALLBACK and request.mode is Mode.SSE:
            # The callback's objects carry no id, so a browser that drops before the end
            # bookmark comes back without Last-Event-ID: RESET makes it drop what it had.
            reset = True
        frames: list[Frame] | None = None
        if initial:  # before subscribing: nothing to undo if a filter raises
            frames = []
            if source is StateSource.CACHE:
                states: Iterable[Entry] = log.state.values()
                if flt.name is not None:
                    named = log.state.get(flt.name)
                    states = () if named is None else (named,)
                frames = [
                    e.frame(EventType.ADDED)
                    for e in states
                    if flt.everything or flt.matches(e.object)
                ]
        sub = self.registry.subscribe(resource, flt, buffer, policy)
        sub.principal = principal
        return Opening(
            subscription=sub,
            head=head,
            initial=frames,
            replay=replay,
            start_rv=head if rv is None or rv == 0 or initial else rv,
            reset=reset,
            needs_snapshot=initial and source is StateSource.CALLBACK,
        )

    def close_watch(self, sub: Subscription, reason: CloseReason) -> None:
        sub.close(reason, self.head)
        self.registry.unsubscribe(sub)

    # -- following a shared log (protocol.md §2: every node learns of each event one way) --

    def _record_entry(self, record: Record, now: float, current: Entry | None = None) -> Entry:
        """The entry of a shared log's record; ``prev`` is ``current``'s object (no second
        copy) when ``current`` is the version the record replaced, as it is when following."""
        rv = record.rv
        prev: Any = None
        if current is not None and current.rv == record.prev_rv:
            prev = current.object
        elif record.prev is not None:
            prev = _stamp(_decode(record.prev), record.prev_rv)
        return Entry(
            rv=rv,
            resource=record.resource,
            key=record.key,
            type=EventType(record.type),
            object=_stamp(_decode(record.object), rv),
            prev=prev,
            time=now,
        )

    def apply(self, records: Iterable[Record], head: int, now: float) -> int:
        """Apply a follower's batch (records above this node's head, ascending) and fan
        each out; then the node's head is ``head``. Returns the entries applied."""
        count = 0
        logs = self.logs
        for record in records:
            log = logs.get(record.resource)
            if log is None or record.rv <= self.head:
                continue  # another app's resource, or already loaded
            entry = self._record_entry(record, now, log.state.get(record.key))
            self.versions.advance(entry.rv)
            log.append(entry)
            self.published += 1
            self.registry.publish(entry)
            count += 1
        self.versions.advance(head)
        return count

    def load(self, loaded: Loaded, now: float) -> None:
        """Replace every resource's history and cache with a shared log's image at
        ``loaded.head`` (a node starting, or after the log's epoch changed). Watches must
        have been ended first: their positions may belong to another epoch."""
        for name, old in list(self.logs.items()):
            part = loaded.resources.get(name)
            log = ResourceLog(
                name,
                start_rv=loaded.head if part is None else part.watermark,
                max_events=old.max_events,
                max_age=old.max_age,
                young_window=old.young_window,
            )
            if part is not None:
                for record in part.records:
                    log.append(self._record_entry(record, now, log.state.get(record.key)))
                log.state = {
                    r.key: self._record_entry(r, now)
                    for r in sorted(part.state, key=lambda r: r.rv)
                }
            self.logs[name] = log
        self.versions = VersionClock(loaded.head)

    def end_watches(self, reason: CloseReason) -> list[Subscription]:
        """End every open watch (they resume: see ``CloseReason``)."""
        subs = self.registry.all()
        head = self.head
        for sub in subs:
            sub.close(reason, head)
        return subs

    def begin_shutdown(self) -> list[Subscription]:
        """Refuse new watches and end every open one resumably."""
        self.closing = True
        return self.end_watches(CloseReason.SHUTDOWN)

    def compact(self, now: float) -> None:
        for log in self.logs.values():
            log.compact(now)
