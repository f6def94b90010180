"""The compiled filter: a label selector and a field selector parsed once into a :class:`Filter`.

:func:`compile_filter` parses both selectors (``None`` and ``""`` mean no requirement), adds the
``metadata.name`` of an object route, and puts the requirements in canonical order: sorted by
key (or path), operator and values, duplicates dropped. Equal filters, however they were
spelled, compare and hash equal, render the same canonical text and pickle as that text.

Every problem is an :class:`InvalidSelector` (400) naming the parameter, what is wrong, the
offending token and its 0-based character position. No input raises anything else: the parsers
are iterative and bounded by ``max_length``, ``max_terms`` and ``max_values``.

Matching is plain attribute and dict work: no parsing and no regex after :func:`compile_filter`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, final

from ..errors import InvalidSelector
from ._common import FIELD, LABEL, Frozen, quote
from ._fields import FieldEquals, FieldReq, parse_fields
from ._index import IndexTerm
from ._label_parser import parse_labels
from ._labels import LabelEquals, LabelReq, labels_of

__all__ = [
    "DEFAULT_MAX_SELECTOR_LENGTH",
    "DEFAULT_MAX_TERMS",
    "DEFAULT_MAX_VALUES",
    "EVERYTHING",
    "Filter",
    "compile_filter",
    "restrict",
]

#: Characters per selector. protocol.md §3.2 ("longer than 4 KiB by default"): half of the 8 KiB
#: request line that common front proxies accept (nginx ``large_client_header_buffers`` 8k,
#: Apache ``LimitRequestLine`` 8190), so a selector that passes here also fits through them.
DEFAULT_MAX_SELECTOR_LENGTH: Final = 4096
#: Requirements per selector (not a Kubernetes limit: it bounds compile work and the cost of
#: matching one event against one watcher).
DEFAULT_MAX_TERMS: Final = 64
#: Values in one ``in``/``notin`` set, counted as written.
DEFAULT_MAX_VALUES: Final = 64


def _rebuild(label_selector: str, field_selector: str) -> Filter:
    """Unpickle a :class:`Filter` from its canonical selectors."""
    big = sys.maxsize
    return compile_filter(
        label_selector, field_selector, max_length=big, max_terms=big, max_values=big
    )


@final
class Filter(Frozen):
    """A compiled, immutable combination of a label selector and a field selector.

    Build one with :func:`compile_filter`. Equal filters (the same requirements, however they
    were spelled: ``k==v`` and ``k in (v)`` are ``k=v``) compare and hash equal.

    Attributes:
        everything: no requirement at all; matches any object.
        name: the ``metadata.name`` a field requirement pins by equality, else ``None``
            (when contradictory equalities pin several, the first in canonical order).
        label_equals: the sorted, distinct ``(key, value)`` equality label requirements
            (``k=v``, ``k==v``, ``k in (v)``).
        index_terms: the :data:`IndexTerm` of every equality requirement an object must
            satisfy (``metadata.name`` first, then ``label_equals``); a subscription indexed
            under any one of them is found by every object that can match it.
        label_selector: the canonical text of the label requirements (``""`` when none).
        field_selector: the canonical text of the field requirements (``""`` when none).
        visible: a per-object predicate ANDed with the requirements (a principal's
            ``can_see``, see :func:`restrict`), or ``None``.
    """

    __slots__ = (
        "_fields",
        "_hash",
        "_key",
        "_labels",
        "everything",
        "field_selector",
        "index_terms",
        "label_equals",
        "label_selector",
        "name",
        "visible",
    )
    everything: bool
    name: str | None
    label_equals: tuple[tuple[str, str], ...]
    index_terms: tuple[IndexTerm, ...]
    label_selector: str
    field_selector: str
    _labels: tuple[LabelReq, ...]
    _fields: tuple[FieldReq, ...]
    _key: tuple[tuple[tuple[str, int, tuple[str, ...]], ...], tuple[tuple[str, int, str], ...]]
    _hash: int
    visible: Callable[[Any], bool] | None

    def __init__(
        self,
        labels: tuple[LabelReq, ...],
        fields: tuple[FieldReq, ...],
        visible: Callable[[Any], bool] | None = None,
    ) -> None:
        """Internal: use :func:`compile_filter` (and :func:`restrict`)."""
        by_label = {req.canon(): req for req in labels}
        by_field = {req.canon(): req for req in fields}
        label_keys = sorted(by_label)
        field_keys = sorted(by_field)
        labels = tuple(by_label[k] for k in label_keys)
        fields = tuple(by_field[k] for k in field_keys)
        key = (tuple(label_keys), tuple(field_keys))
        name = next(
            (
                req.value
                for req in fields
                if isinstance(req, FieldEquals) and req.path == ("metadata", "name")
            ),
            None,
        )
        setter = object.__setattr__
        setter(self, "_labels", labels)
        setter(self, "_fields", fields)
        setter(self, "_key", key)
        setter(self, "_hash", hash(key) if visible is None else hash((key, id(visible))))
        setter(self, "visible", visible)
        setter(self, "everything", not labels and not fields and visible is None)
        setter(self, "name", name)
        label_equals = tuple((req.key, req.value) for req in labels if isinstance(req, LabelEquals))
        setter(self, "label_equals", label_equals)
        names: tuple[IndexTerm, ...] = ((None, name),) if name is not None else ()
        setter(self, "index_terms", names + label_equals)
        setter(self, "label_selector", ",".join(req.render() for req in labels))
        setter(self, "field_selector", ",".join(req.render() for req in fields))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (a JSON object) satisfies every requirement."""
        if self._labels:
            labels = labels_of(obj)
            for label_req in self._labels:
                if not label_req.matches(labels):
                    return False
        for field_req in self._fields:
            if not field_req.matches(obj):
                return False
        visible = self.visible
        return visible is None or visible(obj)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Filter):
            return NotImplemented
        return (
            self._hash == other._hash and self._key == other._key and self.visible is other.visible
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (
            f"Filter(label_selector={self.label_selector!r}, "
            f"field_selector={self.field_selector!r})"
        )

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        if self.visible is not None:
            raise TypeError("a Filter restricted by a visibility predicate cannot be pickled")
        return (_rebuild, (self.label_selector, self.field_selector))


#: The filter without requirements: matches every object.
EVERYTHING: Final = Filter((), ())


def _check_length(parameter: str, text: str, max_length: int) -> None:
    if len(text) > max_length:
        raise InvalidSelector(
            parameter, f"selector is {len(text)} characters long; the limit is {max_length}"
        )


def compile_filter(
    label_selector: str | None = None,
    field_selector: str | None = None,
    *,
    name: str | None = None,
    max_length: int = DEFAULT_MAX_SELECTOR_LENGTH,
    max_terms: int = DEFAULT_MAX_TERMS,
    max_values: int = DEFAULT_MAX_VALUES,
) -> Filter:
    """Parse and compile the ``labelSelector`` and ``fieldSelector`` of a request.

    ``None`` and ``""`` mean no requirement. ``name`` is the key of an object route
    ``/R/{key}``: an extra ``metadata.name=<name>`` field requirement (protocol.md §3.1). A field
    selector that pins ``metadata.name`` by equality to anything else is an error.

    Raises:
        InvalidSelector: a malformed selector, or one over a limit (400).
    """
    labels: tuple[LabelReq, ...] = ()
    fields: tuple[FieldReq, ...] = ()
    if label_selector:
        _check_length(LABEL, label_selector, max_length)
        labels = parse_labels(label_selector, max_terms, max_values)
    if field_selector:
        _check_length(FIELD, field_selector, max_length)
        fields = parse_fields(field_selector, max_terms)
    if name is not None:
        for req in fields:
            if isinstance(req, FieldEquals) and req.dotted == "metadata.name" and req.value != name:
                raise InvalidSelector(
                    FIELD,
                    f"metadata.name={quote(req.value)} doesn't match the requested name "
                    f"{quote(name)}",
                )
        fields = (*fields, FieldEquals("metadata.name", name))
    if not labels and not fields:
        return EVERYTHING
    return Filter(labels, fields)


def restrict(
    flt: Filter, forced: Filter | None = None, visible: Callable[[Any], bool] | None = None
) -> Filter:
    """``flt`` ANDed with a ``forced`` filter (an authorization's forced selector: its
    equality terms index the watch like any other) and a ``visible`` predicate."""
    if (forced is None or forced.everything) and visible is None:
        return flt
    labels = flt._labels if forced is None else flt._labels + forced._labels
    fields = flt._fields if forced is None else flt._fields + forced._fields
    return Filter(labels, fields, visible)
