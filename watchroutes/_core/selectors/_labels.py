"""Label keys, values and requirements, by Kubernetes' rules (``apimachinery/labels``).

A KEY is ``[prefix/]name`` (prefix: a lowercase DNS subdomain of at most 253 characters; name:
at most 63 characters, alphanumeric at both ends, ``-``, ``_``, ``.`` inside). A VALUE is empty
or follows the name rule.

A requirement is one tiny immutable class per operator, so matching has no branching on it.
``!=`` and ``notin`` match when the key is absent. A label compares by its string value (a
``StrEnum`` member as its value); a label that is not a string equals nothing and is in no set.
An object's labels are ``metadata.labels`` when that is a mapping inside a mapping, else none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, final

from ._common import EQ, EXISTS, IN, NE, NOT_EXISTS, NOT_IN, Frozen

__all__ = [
    "LabelEquals",
    "LabelExists",
    "LabelIn",
    "LabelNotEquals",
    "LabelNotExists",
    "LabelNotIn",
    "LabelReq",
    "label_key_problem",
    "label_string",
    "label_value_problem",
    "labels_of",
]

# Fixed validation patterns (never built from input); inputs are length-checked first.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")

_MAX_NAME: Final = 63
_MAX_PREFIX: Final = 253

_NAME_RULE: Final = (
    "consist of alphanumeric characters, '-', '_' or '.', "
    "and start and end with an alphanumeric character"
)

_NO_LABELS: Final[Mapping[str, Any]] = MappingProxyType({})


def label_key_problem(key: str) -> str | None:
    """What is wrong with a label key by Kubernetes' rules (``None``: nothing)."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            return 'a qualified name must contain at most one "/"'
        if not prefix:
            return "prefix part must not be empty"
        if len(prefix) > _MAX_PREFIX:
            return f"prefix part must be no more than {_MAX_PREFIX} characters"
        if not _DNS_SUBDOMAIN_RE.fullmatch(prefix):
            return (
                "prefix part must be a lowercase DNS subdomain: lowercase alphanumeric "
                "characters, '-' or '.', starting and ending with an alphanumeric character"
            )
    if not name:
        return "name part must not be empty"
    if len(name) > _MAX_NAME:
        return f"name part must be no more than {_MAX_NAME} characters"
    if not _NAME_RE.fullmatch(name):
        return f"name part must {_NAME_RULE}"
    return None


def label_value_problem(value: str) -> str | None:
    """What is wrong with a label value by Kubernetes' rules (``None``: nothing)."""
    if len(value) > _MAX_NAME:
        return f"must be no more than {_MAX_NAME} characters"
    if value and not _NAME_RE.fullmatch(value):
        return f"must be empty or {_NAME_RULE}"
    return None


def label_string(value: Any) -> str | None:
    """A label value as the plain string it compares as (a ``StrEnum`` member hashes by its
    name, so sets and indexes need its value), or ``None`` when it is not a string."""
    if type(value) is str:
        return value
    return str.__str__(value) if isinstance(value, str) else None


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """``obj``'s ``metadata.labels``, or an empty mapping when it has none."""
    metadata = obj.get("metadata")
    if type(metadata) is dict or isinstance(metadata, Mapping):
        labels = metadata.get("labels")
        if type(labels) is dict or isinstance(labels, Mapping):
            return labels
    return _NO_LABELS


class LabelReq(Frozen):
    __slots__ = ("key", "values")
    op: int
    key: str
    values: tuple[str, ...]  # sorted, distinct

    def __init__(self, key: str, values: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "values", values)

    def matches(self, labels: Mapping[str, Any]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def canon(self) -> tuple[str, int, tuple[str, ...]]:
        return (self.key, self.op, self.values)

    def render(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@final
class LabelExists(LabelReq):
    __slots__ = ()
    op = EXISTS

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return self.key in labels

    def render(self) -> str:
        return self.key


@final
class LabelNotExists(LabelReq):
    __slots__ = ()
    op = NOT_EXISTS

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return self.key not in labels

    def render(self) -> str:
        return "!" + self.key


class _LabelValueReq(LabelReq):
    """``=`` and ``!=``: one value."""

    __slots__ = ("value",)
    value: str

    def __init__(self, key: str, value: str) -> None:
        super().__init__(key, (value,))
        object.__setattr__(self, "value", value)


class _LabelSetReq(LabelReq):
    """``in`` and ``notin``: a set of values."""

    __slots__ = ("value_set",)
    value_set: frozenset[str]

    def __init__(self, key: str, values: tuple[str, ...]) -> None:
        super().__init__(key, values)
        object.__setattr__(self, "value_set", frozenset(values))


@final
class LabelEquals(_LabelValueReq):
    __slots__ = ()
    op = EQ

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return labels.get(self.key) == self.value

    def render(self) -> str:
        return f"{self.key}={self.value}"


@final
class LabelNotEquals(_LabelValueReq):
    __slots__ = ()
    op = NE

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return labels.get(self.key) != self.value

    def render(self) -> str:
        return f"{self.key}!={self.value}"


@final
class LabelIn(_LabelSetReq):
    __slots__ = ()
    op = IN

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return label_string(labels.get(self.key)) in self.value_set

    def render(self) -> str:
        return f"{self.key} in ({','.join(self.values)})"


@final
class LabelNotIn(_LabelSetReq):
    __slots__ = ()
    op = NOT_IN

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return label_string(labels.get(self.key)) not in self.value_set

    def render(self) -> str:
        return f"{self.key} notin ({','.join(self.values)})"
