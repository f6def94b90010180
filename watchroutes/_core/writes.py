"""Every write rule, once: what a create, replace, patch, delete or publish asks of a log.

A write is planned here, without I/O, from what the client sent (and, for a merge patch, the
current object); the plan is a :class:`~.backend.Write` — resource, key, type, the encoded
object, and the expectation to check atomically with the append — plus the object itself.
Then a log commits it: the hub's in-memory log under its lock, or a shared log in one round
trip. Both check the expectation with :func:`~.backend.check_expectation` (or its exact
equivalent in a backend's script), so each rule and each message exists once:

* the body of a create/replace/patch is a JSON object, with a non-empty ``metadata.name``
  (400); a replace's name matches the URL's key, and a patch cannot change it (400);
* the object rules of :mod:`.objects` (422), on every change but a deletion;
* the object's JSON is at most ``max_object_bytes`` (413), measured on the object as
  encoded, the same on every log;
* expectations: a create expects the key absent (409 ``AlreadyExists``); a replace and a
  delete expect it present, at ``metadata.resourceVersion`` / ``resource_version`` when given
  (404 ``NotFound``, 409 ``Conflict``); a patch expects the version it merged onto, and the
  version it carries, if any (409); a publish expects nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backend import ABSENT, PRESENT, Expect, Write, check_expectation
from .errors import BadRequest, Conflict, RequestEntityTooLarge, UsageError
from .events import EventType, encode
from .objects import NameRule, check_object, merge_patch, object_rv

__all__ = [
    "Planned",
    "Rules",
    "as_body",
    "expectation",
    "key_of",
    "plan_change",
    "plan_create",
    "plan_delete",
    "plan_patch",
    "plan_replace",
]


@dataclass(frozen=True)
class Rules:
    """What a resource's writes are checked against."""

    resource: str
    kind: str
    names: NameRule = "subdomain"
    max_object_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Planned:
    """A write ready to commit: ``write`` for the log, ``object`` the change's object
    (``None`` for a deletion: the log takes the object it removes)."""

    write: Write
    object: Any


def as_body(obj: Any) -> dict[str, Any]:
    """A client's body as an object (400 when it is not a JSON object)."""
    if not isinstance(obj, Mapping):
        raise BadRequest("the body must be a JSON object")
    return dict(obj)


def key_of(obj: Any) -> str:
    """The key of a client's object: its ``metadata.name`` (400 when missing)."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise BadRequest("the object needs a non-empty string metadata.name")
    return name


def expectation(rules: Rules, key: str, given: str | None) -> Expect:
    """The expectation of a client's ``resourceVersion`` (``None``: the key must exist)."""
    if given is None:
        return PRESENT
    if given.isascii() and given.isdigit() and len(given) <= 19:
        return int(given)
    raise Conflict(
        f'the object {rules.resource} "{key[:100]}" has been modified: resourceVersion '
        f"{given[:40]} is not the current one"
    )


def plan_change(
    rules: Rules,
    etype: EventType,
    key: str,
    obj: Any,
    expect: Expect = None,
    *,
    creating: bool = False,
) -> Planned:
    """The plan of one change of ``obj`` under ``key`` (every rule but the expectation's)."""
    if etype not in (EventType.ADDED, EventType.MODIFIED, EventType.DELETED):
        raise UsageError(f"cannot publish a {etype.value} event")
    body = None
    if etype is EventType.DELETED:
        obj = None  # the log records the object it removes
    else:
        check_object(obj, key, kind=rules.kind, names=rules.names, creating=creating)
        try:
            body = encode(obj)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"the object cannot be encoded as JSON: {exc}") from None
        if len(body) > rules.max_object_bytes:
            raise RequestEntityTooLarge(
                f"object {key[:100]!r} is {len(body)} bytes encoded; the limit is "
                f"{rules.max_object_bytes}"
            )
    write = Write(resource=rules.resource, key=key, type=etype.value, object=body, expect=expect)
    return Planned(write, obj)


def plan_create(rules: Rules, obj: Any) -> Planned:
    body = as_body(obj)
    return plan_change(rules, EventType.ADDED, key_of(body), body, ABSENT, creating=True)


def plan_replace(rules: Rules, obj: Any, url_key: str | None = None) -> Planned:
    body = as_body(obj)
    name = key_of(body)
    if url_key is not None and name != url_key:
        raise BadRequest(f"metadata.name {name[:100]!r} does not match the URL's {url_key!r}")
    expect = expectation(rules, name, object_rv(body))
    return plan_change(rules, EventType.MODIFIED, name, body, expect)


def plan_delete(rules: Rules, key: str, resource_version: str | None = None) -> Planned:
    return plan_change(
        rules, EventType.DELETED, key, None, expectation(rules, key, resource_version)
    )


def plan_patch(rules: Rules, key: str, patch: Any, current_rv: int, current: Any) -> Planned:
    """A JSON merge patch (RFC 7386) onto the current object (read at ``current_rv``)."""
    body = as_body(patch)
    given = object_rv(body)
    if given is not None:  # the client's own concurrency check, against what we merge onto
        expect = expectation(rules, key, given)
        check = Write(resource=rules.resource, key=key, type="MODIFIED", object=None, expect=expect)
        check_expectation(check, current_rv)
    merged = merge_patch(current, body)
    if key_of(merged) != key:
        raise BadRequest("a patch cannot change metadata.name")
    return plan_change(rules, EventType.MODIFIED, key, merged, current_rv)
