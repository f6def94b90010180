"""Object helpers: JSON merge patch (RFC 7386), the object convention and its rules.

The rules (:func:`check_object`) are checked on every write, in memory and on every shared
log alike, before anything is stored, so no object is accepted that a route cannot reach
(a name with ``/``) or that a selector can never match as meant (``labels: "eu"``):

* ``metadata.name`` (the key) follows the resource's name rule: by default a lowercase
  RFC 1123 DNS subdomain (Kubernetes' rule for most object names: at most 253 characters,
  ``a-z``, ``0-9``, ``-`` and ``.``, alphanumeric at both ends); ``"segment"`` accepts any
  name that is a safe URL path segment (not ``.`` or ``..``, no ``/``, ``%`` or control
  characters, at most 253 characters); or the resource's own function.
* ``metadata.labels``, when present, is a map of strings with Kubernetes' key and value
  syntax (the label selector's own rules, so every label can be selected).
* a create carries no ``metadata.resourceVersion``: Kubernetes refuses one ("should not be
  set on objects to be created"), and so does the hub (the log assigns it).

A broken rule is a 422 ``Invalid`` Status naming the field, as Kubernetes answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from .errors import Invalid
from .selectors import label_key_problem, label_value_problem

__all__ = ["NameRule", "check_object", "merge_patch", "name_problem", "object_rv"]

#: How a resource's names are checked: a named rule, or a function returning the problem
#: (``None``: the name is fine).
NameRule = Literal["subdomain", "segment"] | Callable[[str], str | None]

#: Longest name (Kubernetes' DNS subdomain limit, RFC 1123).
MAX_NAME_LENGTH: Final = 253
_SUBDOMAIN_RE: Final = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_UNSAFE_SEGMENT_RE: Final = re.compile(r"[/%\x00-\x1f\x7f]")
_SHOWN: Final = 64


def name_problem(name: str, rule: NameRule = "subdomain") -> str | None:
    """What is wrong with ``name`` under ``rule`` (``None``: nothing)."""
    if not name:
        return "must not be empty"
    if callable(rule):
        return rule(name)
    if len(name) > MAX_NAME_LENGTH:
        return f"must be no more than {MAX_NAME_LENGTH} characters"
    if rule == "segment":
        if name in (".", ".."):
            return 'may not be "." or ".."'
        if _UNSAFE_SEGMENT_RE.search(name):
            return "may not contain '/', '%' or control characters"
        return None
    if not _SUBDOMAIN_RE.fullmatch(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lowercase alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def check_object(
    obj: Any, key: str, *, kind: str, names: NameRule = "subdomain", creating: bool = False
) -> None:
    """Raise ``Invalid`` (422) when ``obj`` (stored under ``key``) breaks a rule above."""

    def invalid(field: str, value: object, problem: str) -> Invalid:
        return Invalid(
            f'{kind} "{_shown(key)}" is invalid: {field}: Invalid value: '
            f'"{_shown(value)}": {problem}'
        )

    problem = name_problem(key, names)
    if problem is not None:
        raise invalid("metadata.name", key, problem)
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        return
    if creating and metadata.get("resourceVersion") not in (None, ""):
        raise invalid(
            "metadata.resourceVersion",
            metadata["resourceVersion"],
            "must not be set on objects to be created",
        )
    labels = metadata.get("labels")
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        raise invalid("metadata.labels", labels, "must be a map of strings to strings")
    for name, value in labels.items():
        problem = label_key_problem(name) if isinstance(name, str) else "must be a string"
        if problem is not None:
            raise invalid("metadata.labels", name, problem)
        if not isinstance(value, str):
            raise invalid(f"metadata.labels.{_shown(name)}", value, "must be a string")
        problem = label_value_problem(value)
        if problem is not None:
            raise invalid(f"metadata.labels.{_shown(name)}", value, problem)


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: objects merge recursively, ``null`` deletes a member,
    anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def object_rv(obj: Any) -> str | None:
    """``metadata.resourceVersion`` of ``obj`` when it carries one."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    rv = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return rv if isinstance(rv, str) and rv else None
