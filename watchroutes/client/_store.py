"""An informer's store, without I/O: watch events in, store changes out.

The rules (client-go's reflector and DeltaFIFO, over protocol.md §3):

- **Initial state is applied atomically.** From the start and after every ``RESET``, events
  are collected aside until the bookmark that ends the initial events; then the collected
  state *replaces* the store in one step: keys that vanished are ``DELETED`` with
  ``tombstone=True`` (client-go's ``DeletedFinalStateUnknown``), new keys ``ADDED``, keys
  whose rv changed ``MODIFIED``, and keys at the same rv report nothing. So readers never see
  a half-relisted store, and no change is reported twice for the same rv.
- **Stale events are ignored.** Once synced, an event whose rv is not above the newest rv the
  store has applied (events and bookmarks), or not above the stored object's own rv, is
  counted and dropped. (rvs are compared as integers, as this server's are; an rv that is not
  an integer is applied without the check.)
- **Live events are normalised**: ``ADDED`` of a known key is ``MODIFIED``, ``MODIFIED`` of
  an unknown key is ``ADDED``, ``DELETED`` of an unknown key reports nothing.
"""

from __future__ import annotations

from typing import Any

from .._core.events import EventType
from ._events import Change, ChangeType, KeyFunc, WatchEvent, default_key

__all__ = ["InformerStore"]


def _int(rv: str | None) -> int | None:
    if rv is None or not rv.isdigit():
        return None
    return int(rv)


def _object_rv(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        rv = metadata.get("resourceVersion")
        if isinstance(rv, str):
            return rv
    return None


class InformerStore:
    """Key -> object, kept by :meth:`apply`."""

    def __init__(self, key: KeyFunc = default_key) -> None:
        self.key = key
        self.objects: dict[str, dict[str, Any]] = {}
        #: The newest rv applied (an event's or a bookmark's).
        self.resource_version: str | None = None
        self.synced = False
        self.relists = 0
        self.stale = 0
        self.tombstones = 0
        self._newest: int | None = None
        # The state being collected (from the start, and after each RESET); None once live.
        self._collecting: dict[str, dict[str, Any]] | None = {}

    def apply(self, event: WatchEvent) -> list[Change]:
        kind = event.type
        if kind is EventType.RESET:
            self._collecting = {}
            return []
        if kind is EventType.BOOKMARK:
            if self._collecting is not None:
                if event.initial_events_end:
                    return self._replace(event.resource_version)
                return []
            self._advance(event.resource_version)
            return []
        obj = event.object
        if obj is None or kind is EventType.ERROR:
            return []
        key = self.key(obj)
        if self._collecting is not None:
            if kind is EventType.DELETED:
                self._collecting.pop(key, None)
            else:
                self._collecting[key] = obj
            return []
        rv_text = event.resource_version
        rv = _int(rv_text)
        old = self.objects.get(key)
        newest = self._newest
        if rv is not None and newest is not None:
            # Every object in the store is at or below the watermark, so this also rejects
            # an event older than the stored version of its own key.
            if rv <= newest:
                self.stale += 1
                return []
            self._newest = rv
            self.resource_version = rv_text
        else:
            if rv is not None and old is not None:
                old_rv = _int(_object_rv(old))
                if old_rv is not None and rv <= old_rv:
                    self.stale += 1
                    return []
            self._advance(rv_text)
        if kind is EventType.DELETED:
            if old is None:
                return []
            del self.objects[key]
            return [
                Change(
                    type=ChangeType.DELETED,
                    key=key,
                    object=obj,
                    old=old,
                    resource_version=event.resource_version,
                )
            ]
        self.objects[key] = obj
        return [
            Change(
                type=ChangeType.ADDED if old is None else ChangeType.MODIFIED,
                key=key,
                object=obj,
                old=old,
                resource_version=event.resource_version,
            )
        ]

    def _advance(self, rv: str | None) -> None:
        if rv is None:
            return
        value = _int(rv)
        if value is None:
            self.resource_version = rv
        elif self._newest is None or value > self._newest:
            self._newest = value
            self.resource_version = rv

    def _replace(self, rv: str | None) -> list[Change]:
        new = self._collecting
        assert new is not None
        self._collecting = None
        if self.synced:
            self.relists += 1
        changes: list[Change] = []
        for key, old in self.objects.items():
            if key not in new:
                self.tombstones += 1
                changes.append(
                    Change(type=ChangeType.DELETED, key=key, object=old, old=old, tombstone=True)
                )
        for key, obj in new.items():
            previous = self.objects.get(key)
            if previous is None:
                changes.append(
                    Change(
                        type=ChangeType.ADDED, key=key, object=obj, resource_version=_object_rv(obj)
                    )
                )
                continue
            old_rv, new_rv = _object_rv(previous), _object_rv(obj)
            if old_rv != new_rv or (new_rv is None and previous != obj):
                changes.append(
                    Change(
                        type=ChangeType.MODIFIED,
                        key=key,
                        object=obj,
                        old=previous,
                        resource_version=new_rv,
                    )
                )
        self.objects = new
        self.synced = True
        # The relist defines the new truth, even where its rv is below the old one (a
        # restored backend): the watermark starts over from the end bookmark.
        self._newest = _int(rv)
        self.resource_version = rv
        return changes
