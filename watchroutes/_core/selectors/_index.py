"""Index terms: the equality requirements a subscription can be found by.

A term is ``(label key, value)`` for a label equality (``k=v``, ``k==v``, ``k in (v)``) and
``(None, name)`` for ``metadata.name=name``. An object satisfies the terms of its string labels
and of its name; a filter that requires a term an object lacks cannot match that object, so a
registry that files each subscription under one of its filter's terms needs to look at only the
subscriptions filed under the object's terms (and those without any).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ._fields import FieldEquals
from ._labels import label_string, labels_of

__all__ = ["IndexTerm", "object_index_terms"]

#: ``(label key, value)`` for a label equality, ``(None, name)`` for ``metadata.name``.
IndexTerm = tuple[str | None, str]

_NAME_FIELD: Final = FieldEquals("metadata.name", "")


def object_index_terms(obj: Any) -> set[IndexTerm]:
    """The index terms ``obj`` satisfies: its ``metadata.name`` and each string label.

    A filter whose :attr:`Filter.index_terms` holds a term ``obj`` lacks cannot match ``obj``:
    the equality requirement behind that term compares exactly these values.
    """
    if not isinstance(obj, Mapping):
        return set()
    labels = labels_of(obj)
    terms: set[IndexTerm] = set()
    for key, value in labels.items():
        text = label_string(value)
        if text is not None:
            terms.add((key, text))
    name = _NAME_FIELD.lookup(obj)
    if name is not None:
        terms.add((None, name))
    return terms
