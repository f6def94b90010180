"""Label and field selectors (protocol.md §3.2), compiled once into a :class:`Filter`.

One module per job, each opening with its rules:

* ``_labels``: label keys, values and requirements (Kubernetes' rules);
* ``_label_parser``: the ``labelSelector`` grammar and its parser;
* ``_fields``: ``fieldSelector`` requirements, how a field compares, and its parser;
* ``_index``: the index terms a subscription can be found by;
* ``_filter``: the limits, :func:`compile_filter` and the compiled :class:`Filter`;
* ``_common``: the immutable base, operator codes and quoting in error messages.

Dependencies point one way: ``_common`` <- ``_labels`` <- ``_label_parser``, ``_common`` <-
``_fields``, both <- ``_index``, everything <- ``_filter``.
"""

from ._filter import DEFAULT_MAX_SELECTOR_LENGTH as DEFAULT_MAX_SELECTOR_LENGTH
from ._filter import DEFAULT_MAX_TERMS as DEFAULT_MAX_TERMS
from ._filter import DEFAULT_MAX_VALUES as DEFAULT_MAX_VALUES
from ._filter import EVERYTHING as EVERYTHING
from ._filter import Filter as Filter
from ._filter import compile_filter as compile_filter
from ._filter import restrict as restrict
from ._index import IndexTerm as IndexTerm
from ._index import object_index_terms as object_index_terms
from ._labels import label_key_problem as label_key_problem
from ._labels import label_value_problem as label_value_problem

__all__ = [
    "DEFAULT_MAX_SELECTOR_LENGTH",
    "DEFAULT_MAX_TERMS",
    "DEFAULT_MAX_VALUES",
    "EVERYTHING",
    "Filter",
    "IndexTerm",
    "compile_filter",
    "label_key_problem",
    "label_value_problem",
    "object_index_terms",
    "restrict",
]
