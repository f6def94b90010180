"""Label and field selectors (DESIGN 3.2), compiled once into a :class:`Filter`.

``labelSelector`` follows the Kubernetes grammar (``apimachinery/labels``)::

    selector    := "" | requirement ("," requirement)*
    requirement := KEY                          exists
                 | "!" KEY                      does not exist
                 | KEY ("=" | "==" | "!=") VALUE?      (a missing VALUE is "")
                 | KEY ("in" | "notin") "(" VALUE? ("," VALUE?)* ")"

Whitespace (space, tab, CR, LF) may stand between any two tokens and must separate two words
(``k in (a)``). ``in``/``notin`` are operators only where an operator is expected; as keys or
values they are ordinary words. ``!=`` and ``notin`` match when the key is absent. A KEY is
``[prefix/]name`` (prefix: a lowercase DNS subdomain of at most 253 characters; name: at most
63 characters, alphanumeric at both ends, ``-``, ``_``, ``.`` inside). A VALUE is empty or
follows the name rule. ``x in ()`` is the set ``{""}``, like Kubernetes. The node-affinity
operators ``<`` and ``>`` are refused.

``fieldSelector`` is ``path(=|==|!=)value`` terms separated by commas (empty terms are ignored,
like Kubernetes). A path is dot-separated names of ``[A-Za-z0-9_-]``; nothing is trimmed. In a
value ``\\\\``, ``\\,`` and ``\\=`` stand for ``\\``, ``,`` and ``=``; any other backslash, or a
bare ``=``, is an error. A field compares by its string form: a string as is, ``true``/``false``,
an integer in decimal, a finite float in its JSON form. Anything else (missing, ``null``, a
mapping, a list, NaN) is *absent*: ``=`` never matches it and ``!=`` always does. (Kubernetes
compares a missing field as ``""``; objects here are free-form JSON, so absent is kept apart.)

Every problem is an :class:`InvalidSelector` (400) naming the parameter, what is wrong, the
offending token and its 0-based character position. No input raises anything else: the parser
is iterative and bounded by ``max_length``, ``max_terms`` and ``max_values``.

Matching is plain attribute and dict work: no parsing and no regex after :func:`compile_filter`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, NoReturn, final

import msgspec

from .errors import InvalidSelector

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
]

#: Characters per selector. DESIGN 3.2 ("longer than 4 KiB by default"): half of the 8 KiB
#: request line that common front proxies accept (nginx ``large_client_header_buffers`` 8k,
#: Apache ``LimitRequestLine`` 8190), so a selector that passes here also fits through them.
DEFAULT_MAX_SELECTOR_LENGTH: Final = 4096
#: Requirements per selector (not a Kubernetes limit: it bounds compile work and the cost of
#: matching one event against one watcher).
DEFAULT_MAX_TERMS: Final = 64
#: Values in one ``in``/``notin`` set, counted as written.
DEFAULT_MAX_VALUES: Final = 64

_LABEL: Final = "labelSelector"
_FIELD: Final = "fieldSelector"

# Fixed validation patterns (never built from input); inputs are length-checked first.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_PATH_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

_MAX_NAME: Final = 63
_MAX_PREFIX: Final = 253
_SHOWN: Final = 64  # longest token quoted in an error message

_NAME_RULE: Final = (
    "consist of alphanumeric characters, '-', '_' or '.', "
    "and start and end with an alphanumeric character"
)

_NO_LABELS: Final[Mapping[str, Any]] = MappingProxyType({})


def _quote(text: str) -> str:
    """``text`` in double quotes for an error message: shortened, control characters escaped."""
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "..."
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Requirements: one tiny immutable class per operator, so matching has no branching on it.


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")


# Operator codes; their order is the canonical order of requirements on one key.
_EXISTS, _NOT_EXISTS, _EQ, _NE, _IN, _NOT_IN = range(6)


class _LabelReq(_Frozen):
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


def _label_string(value: Any) -> str | None:
    """A label value as the plain string it compares as (a ``StrEnum`` member hashes by its
    name, so sets and indexes need its value), or ``None`` when it is not a string."""
    if type(value) is str:
        return value
    return str.__str__(value) if isinstance(value, str) else None


@final
class _LabelExists(_LabelReq):
    __slots__ = ()
    op = _EXISTS

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return self.key in labels

    def render(self) -> str:
        return self.key


@final
class _LabelNotExists(_LabelReq):
    __slots__ = ()
    op = _NOT_EXISTS

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return self.key not in labels

    def render(self) -> str:
        return "!" + self.key


@final
class _LabelEquals(_LabelReq):
    __slots__ = ("value",)
    op = _EQ
    value: str

    def __init__(self, key: str, value: str) -> None:
        super().__init__(key, (value,))
        object.__setattr__(self, "value", value)

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return labels.get(self.key) == self.value

    def render(self) -> str:
        return f"{self.key}={self.value}"


@final
class _LabelNotEquals(_LabelReq):
    __slots__ = ("value",)
    op = _NE
    value: str

    def __init__(self, key: str, value: str) -> None:
        super().__init__(key, (value,))
        object.__setattr__(self, "value", value)

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return labels.get(self.key) != self.value

    def render(self) -> str:
        return f"{self.key}!={self.value}"


@final
class _LabelIn(_LabelReq):
    __slots__ = ("value_set",)
    op = _IN
    value_set: frozenset[str]

    def __init__(self, key: str, values: tuple[str, ...]) -> None:
        super().__init__(key, values)
        object.__setattr__(self, "value_set", frozenset(values))

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return _label_string(labels.get(self.key)) in self.value_set

    def render(self) -> str:
        return f"{self.key} in ({','.join(self.values)})"


@final
class _LabelNotIn(_LabelReq):
    __slots__ = ("value_set",)
    op = _NOT_IN
    value_set: frozenset[str]

    def __init__(self, key: str, values: tuple[str, ...]) -> None:
        super().__init__(key, values)
        object.__setattr__(self, "value_set", frozenset(values))

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return _label_string(labels.get(self.key)) not in self.value_set

    def render(self) -> str:
        return f"{self.key} notin ({','.join(self.values)})"


def _field_string(value: Any) -> str | None:
    """The string a field value compares as, or ``None`` when it is absent."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(int(value))  # int(): an IntEnum's str() is not its number
        except ValueError:  # more digits than sys.int_info.str_digits_check_threshold allows
            return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # JSON has no NaN/Infinity; msgspec writes them as null
        return msgspec.json.encode(float(value)).decode()
    return None


def _escape_field_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


class _FieldReq(_Frozen):
    __slots__ = ("dotted", "path", "value")
    op: int
    dotted: str
    path: tuple[str, ...]
    value: str

    def __init__(self, dotted: str, value: str) -> None:
        object.__setattr__(self, "dotted", dotted)
        object.__setattr__(self, "path", tuple(dotted.split(".")))
        object.__setattr__(self, "value", value)

    def lookup(self, obj: Mapping[str, Any]) -> str | None:
        current: Any = obj
        for segment in self.path:
            if type(current) is dict or isinstance(current, Mapping):
                current = current.get(segment)
            else:
                return None
        return _field_string(current)

    def matches(self, obj: Mapping[str, Any]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def canon(self) -> tuple[str, int, str]:
        return (self.dotted, self.op, self.value)

    def render(self) -> str:
        operator = "=" if self.op == _EQ else "!="
        return f"{self.dotted}{operator}{_escape_field_value(self.value)}"


@final
class _FieldEquals(_FieldReq):
    __slots__ = ()
    op = _EQ

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return self.lookup(obj) == self.value


@final
class _FieldNotEquals(_FieldReq):
    __slots__ = ()
    op = _NE

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return self.lookup(obj) != self.value


# --------------------------------------------------------------------------------------------
# Index terms: equality requirements a subscription can be found by.

#: ``(label key, value)`` for a label equality, ``(None, name)`` for ``metadata.name``.
IndexTerm = tuple[str | None, str]

_NAME_FIELD: Final = _FieldEquals("metadata.name", "")


def object_index_terms(obj: Any) -> set[IndexTerm]:
    """The index terms ``obj`` satisfies: its ``metadata.name`` and each string label.

    A filter whose :attr:`Filter.index_terms` holds a term ``obj`` lacks cannot match ``obj``:
    the equality requirement behind that term compares exactly these values.
    """
    if not isinstance(obj, Mapping):
        return set()
    labels = _labels_of(obj)
    terms: set[IndexTerm] = set()
    for key, value in labels.items():
        text = _label_string(value)
        if text is not None:
            terms.add((key, text))
    name = _NAME_FIELD.lookup(obj)
    if name is not None:
        terms.add((None, name))
    return terms


# --------------------------------------------------------------------------------------------
# The compiled filter.


def _labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    if type(metadata) is dict or isinstance(metadata, Mapping):
        labels = metadata.get("labels")
        if type(labels) is dict or isinstance(labels, Mapping):
            return labels
    return _NO_LABELS


def _rebuild(label_selector: str, field_selector: str) -> Filter:
    """Unpickle a :class:`Filter` from its canonical selectors."""
    big = sys.maxsize
    return compile_filter(
        label_selector, field_selector, max_length=big, max_terms=big, max_values=big
    )


@final
class Filter(_Frozen):
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
    )
    everything: bool
    name: str | None
    label_equals: tuple[tuple[str, str], ...]
    index_terms: tuple[IndexTerm, ...]
    label_selector: str
    field_selector: str
    _labels: tuple[_LabelReq, ...]
    _fields: tuple[_FieldReq, ...]
    _key: tuple[tuple[tuple[str, int, tuple[str, ...]], ...], tuple[tuple[str, int, str], ...]]
    _hash: int

    def __init__(self, labels: tuple[_LabelReq, ...], fields: tuple[_FieldReq, ...]) -> None:
        """Internal: use :func:`compile_filter`."""
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
                if isinstance(req, _FieldEquals) and req.path == ("metadata", "name")
            ),
            None,
        )
        setter = object.__setattr__
        setter(self, "_labels", labels)
        setter(self, "_fields", fields)
        setter(self, "_key", key)
        setter(self, "_hash", hash(key))
        setter(self, "everything", not labels and not fields)
        setter(self, "name", name)
        label_equals = tuple(
            (req.key, req.value) for req in labels if isinstance(req, _LabelEquals)
        )
        setter(self, "label_equals", label_equals)
        names: tuple[IndexTerm, ...] = ((None, name),) if name is not None else ()
        setter(self, "index_terms", names + label_equals)
        setter(self, "label_selector", ",".join(req.render() for req in labels))
        setter(self, "field_selector", ",".join(req.render() for req in fields))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (a JSON object) satisfies every requirement."""
        if self._labels:
            labels = _labels_of(obj)
            for label_req in self._labels:
                if not label_req.matches(labels):
                    return False
        for field_req in self._fields:  # noqa: SIM110 - no generator per call on the hot path
            if not field_req.matches(obj):
                return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Filter):
            return NotImplemented
        return self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (
            f"Filter(label_selector={self.label_selector!r}, "
            f"field_selector={self.field_selector!r})"
        )

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (_rebuild, (self.label_selector, self.field_selector))


#: The filter without requirements: matches every object.
EVERYTHING: Final = Filter((), ())


# --------------------------------------------------------------------------------------------
# labelSelector


_WHITESPACE: Final = frozenset(" \t\r\n")
_SPECIAL: Final = frozenset("=!(),<>")

# Token kinds.
_WORD, _NOT, _EQUALS, _DOUBLE_EQUALS, _NOT_EQUALS, _OPEN, _CLOSE, _COMMA, _ORDER, _END = range(10)
_Token = tuple[int, str, int]  # kind, text, position


_SINGLE: Final = {"=": _EQUALS, "!": _NOT, "(": _OPEN, ")": _CLOSE, ",": _COMMA}


def _tokenize(text: str) -> Iterator[_Token]:
    """Lazily, so that a selector that goes wrong early costs little; ends with ``_END``."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WHITESPACE:
            i += 1
        elif ch in _SPECIAL:
            if ch in "=!" and text.startswith("=", i + 1):
                yield (_DOUBLE_EQUALS if ch == "=" else _NOT_EQUALS, ch + "=", i)
                i += 2
            else:
                yield (_SINGLE.get(ch, _ORDER), ch, i)
                i += 1
        else:
            start = i
            while i < n and text[i] not in _WHITESPACE and text[i] not in _SPECIAL:
                i += 1
            yield (_WORD, text[start:i], start)
    yield (_END, "", n)


def _unexpected(token: _Token, expected: str) -> NoReturn:
    kind, text, pos = token
    if kind == _END:
        raise InvalidSelector(_LABEL, f"unexpected end of selector at {pos}: expected {expected}")
    if kind == _ORDER:
        raise InvalidSelector(
            _LABEL,
            f'unsupported operator {_quote(text)} at {pos}: only "=", "==", "!=", "in" and '
            '"notin" are supported',
        )
    raise InvalidSelector(_LABEL, f"unexpected {_quote(text)} at {pos}: expected {expected}")


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


def _check_label_key(key: str, pos: int) -> None:
    problem = label_key_problem(key)
    if problem is not None:
        raise InvalidSelector(_LABEL, f"invalid label key {_quote(key)} at {pos}: {problem}")


def _check_label_value(value: str, pos: int) -> None:
    problem = label_value_problem(value)
    if problem is not None:
        raise InvalidSelector(_LABEL, f"invalid label value {_quote(value)} at {pos}: {problem}")


_AFTER_KEY: Final = '"=", "==", "!=", "in", "notin", "," or end of selector'
_AFTER_REQUIREMENT: Final = '"," or end of selector'


class _LabelParser:
    """Recursive-descent in form, iterative in fact: one method per grammar rule, no recursion."""

    __slots__ = ("current", "max_terms", "max_values", "tokens")

    def __init__(self, text: str, max_terms: int, max_values: int) -> None:
        self.tokens = _tokenize(text)
        self.current = next(self.tokens)
        self.max_terms = max_terms
        self.max_values = max_values

    def take(self) -> _Token:
        token = self.current
        if token[0] != _END:  # the end token stays put: nothing reads past it
            self.current = next(self.tokens)
        return token

    def peek(self) -> _Token:
        return self.current

    def selector(self) -> tuple[_LabelReq, ...]:
        if self.peek()[0] == _END:
            return ()  # empty or all whitespace: no requirement
        reqs: list[_LabelReq] = []
        while True:
            if len(reqs) >= self.max_terms:
                raise InvalidSelector(
                    _LABEL,
                    f"too many requirements at {self.peek()[2]}: the limit is {self.max_terms}",
                )
            reqs.append(self.requirement())
            token = self.take()
            if token[0] == _END:
                return tuple(reqs)
            if token[0] != _COMMA:
                _unexpected(token, _AFTER_REQUIREMENT)

    def key(self, expected: str) -> str:
        token = self.take()
        if token[0] != _WORD:
            _unexpected(token, expected)
        _check_label_key(token[1], token[2])
        return token[1]

    def requirement(self) -> _LabelReq:
        if self.peek()[0] == _NOT:
            self.take()
            return _LabelNotExists(self.key('a label key after "!"'))
        key = self.key('a label key or "!"')
        token = self.peek()
        kind = token[0]
        if kind in (_COMMA, _END):
            return _LabelExists(key)
        self.take()
        if kind == _NOT_EQUALS:
            return _LabelNotEquals(key, self.exact_value())
        if kind in (_EQUALS, _DOUBLE_EQUALS):
            return _LabelEquals(key, self.exact_value())
        if kind == _WORD and token[1] == "in":
            values = self.value_set("in")
            return _LabelEquals(key, values[0]) if len(values) == 1 else _LabelIn(key, values)
        if kind == _WORD and token[1] == "notin":
            values = self.value_set("notin")
            if len(values) == 1:
                return _LabelNotEquals(key, values[0])
            return _LabelNotIn(key, values)
        _unexpected(token, _AFTER_KEY)

    def exact_value(self) -> str:
        token = self.peek()
        if token[0] in (_COMMA, _END):
            return ""  # `k=` means the empty value
        self.take()
        if token[0] != _WORD:
            _unexpected(token, "a value")
        _check_label_value(token[1], token[2])
        return token[1]

    def value_set(self, operator: str) -> tuple[str, ...]:
        """``"(" VALUE? ("," VALUE?)* ")"``: sorted, distinct; ``()`` is ``{""}``."""
        token = self.take()
        if token[0] != _OPEN:
            _unexpected(token, f'"(" after "{operator}"')
        values: set[str] = set()
        count = 0
        while True:
            count += 1
            if count > self.max_values:
                raise InvalidSelector(
                    _LABEL,
                    f"too many values at {self.peek()[2]}: the limit is {self.max_values} per set",
                )
            token = self.take()
            expected = 'a value, "," or ")"'
            if token[0] == _WORD:
                _check_label_value(token[1], token[2])
                values.add(token[1])
                token = self.take()
                expected = '"," or ")"'
            else:
                values.add("")  # an element may be empty: `(a,)`, `(,a)`, `()`
            if token[0] == _CLOSE:
                return tuple(sorted(values))
            if token[0] != _COMMA:
                _unexpected(token, expected)


# --------------------------------------------------------------------------------------------
# fieldSelector


def _field_terms(text: str) -> list[tuple[str, int]]:
    """Split on commas not escaped by a backslash: ``(term, position)`` pairs."""
    terms: list[tuple[str, int]] = []
    start = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == ",":
            terms.append((text[start:i], start))
            start = i + 1
        i += 1
    terms.append((text[start:], start))
    return terms


def _unescape_field_value(raw: str, pos: int) -> str:
    if "\\" not in raw and "=" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\\":
            nxt = raw[i + 1] if i + 1 < n else ""
            if nxt not in ("\\", ",", "="):
                raise InvalidSelector(
                    _FIELD,
                    f"invalid escape sequence {_quote(ch + nxt)} at {pos + i}: "
                    'only "\\\\", "\\," and "\\=" are allowed in values',
                )
            out.append(nxt)
            i += 2
        elif ch == "=":
            raise InvalidSelector(
                _FIELD, f'unexpected "=" at {pos + i}: write "=" in a value as "\\="'
            )
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _parse_fields(text: str, max_terms: int) -> tuple[_FieldReq, ...]:
    reqs: list[_FieldReq] = []
    for term, start in _field_terms(text):
        if not term:
            continue  # like Kubernetes: `a=b,` and `a=b,,c=d` are fine
        if len(reqs) >= max_terms:
            raise InvalidSelector(
                _FIELD, f"too many requirements at {start}: the limit is {max_terms}"
            )
        # The first "!=", "==" or "=" splits the term (Kubernetes checks them in this order).
        at = -1
        for j, ch in enumerate(term):
            if ch == "=" or (ch == "!" and term.startswith("=", j + 1)):
                at = j
                break
        if at < 0:
            raise InvalidSelector(
                _FIELD,
                f'no operator in {_quote(term)} at {start}: expected "path=value", '
                '"path==value" or "path!=value"',
            )
        if term[at] == "!":
            operator = "!="
        elif term.startswith("==", at):
            operator = "=="
        else:
            operator = "="
        path = term[:at]
        if not path:
            raise InvalidSelector(
                _FIELD, f"unexpected {_quote(operator)} at {start}: expected a field path"
            )
        if not all(_PATH_SEGMENT_RE.fullmatch(segment) for segment in path.split(".")):
            raise InvalidSelector(
                _FIELD,
                f"invalid field path {_quote(path)} at {start}: must be names of letters, "
                "digits, '-' and '_' separated by '.'",
            )
        value_at = at + len(operator)
        value = _unescape_field_value(term[value_at:], start + value_at)
        if operator == "!=":
            reqs.append(_FieldNotEquals(path, value))
        else:
            reqs.append(_FieldEquals(path, value))
    return tuple(reqs)


# --------------------------------------------------------------------------------------------


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
    ``/R/{key}``: an extra ``metadata.name=<name>`` field requirement (DESIGN 3.1). A field
    selector that pins ``metadata.name`` by equality to anything else is an error.

    Raises:
        InvalidSelector: a malformed selector, or one over a limit (400).
    """
    labels: tuple[_LabelReq, ...] = ()
    fields: tuple[_FieldReq, ...] = ()
    if label_selector:
        _check_length(_LABEL, label_selector, max_length)
        labels = _LabelParser(label_selector, max_terms, max_values).selector()
    if field_selector:
        _check_length(_FIELD, field_selector, max_length)
        fields = _parse_fields(field_selector, max_terms)
    if name is not None:
        for req in fields:
            if (
                isinstance(req, _FieldEquals)
                and req.dotted == "metadata.name"
                and req.value != name
            ):
                raise InvalidSelector(
                    _FIELD,
                    f"metadata.name={_quote(req.value)} doesn't match the requested name "
                    f"{_quote(name)}",
                )
        fields = (*fields, _FieldEquals("metadata.name", name))
    if not labels and not fields:
        return EVERYTHING
    return Filter(labels, fields)
