"""The ``labelSelector`` grammar (Kubernetes' ``apimachinery/labels``) and its parser::

    selector    := "" | requirement ("," requirement)*
    requirement := KEY                          exists
                 | "!" KEY                      does not exist
                 | KEY ("=" | "==" | "!=") VALUE?      (a missing VALUE is "")
                 | KEY ("in" | "notin") "(" VALUE? ("," VALUE?)* ")"

Whitespace (space, tab, CR, LF) may stand between any two tokens and must separate two words
(``k in (a)``). ``in``/``notin`` are operators only where an operator is expected; as keys or
values they are ordinary words. KEY and VALUE follow the rules in ``_labels``. ``x in ()`` is
the set ``{""}``, like Kubernetes; a set of one value is that equality (``k in (v)`` is
``k=v``, ``k notin (v)`` is ``k!=v``). The node-affinity operators ``<`` and ``>`` are refused.

Every problem is an :class:`InvalidSelector` naming the offending token and its 0-based
character position. The parser is iterative (no recursion) and stops at ``max_terms``
requirements and ``max_values`` values per set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NoReturn

from ..errors import InvalidSelector
from ._common import LABEL, quote
from ._labels import (
    LabelEquals,
    LabelExists,
    LabelIn,
    LabelNotEquals,
    LabelNotExists,
    LabelNotIn,
    LabelReq,
    label_key_problem,
    label_value_problem,
)

__all__ = ["parse_labels"]

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
        raise InvalidSelector(LABEL, f"unexpected end of selector at {pos}: expected {expected}")
    if kind == _ORDER:
        raise InvalidSelector(
            LABEL,
            f'unsupported operator {quote(text)} at {pos}: only "=", "==", "!=", "in" and '
            '"notin" are supported',
        )
    raise InvalidSelector(LABEL, f"unexpected {quote(text)} at {pos}: expected {expected}")


def _check_label_key(key: str, pos: int) -> None:
    problem = label_key_problem(key)
    if problem is not None:
        raise InvalidSelector(LABEL, f"invalid label key {quote(key)} at {pos}: {problem}")


def _check_label_value(value: str, pos: int) -> None:
    problem = label_value_problem(value)
    if problem is not None:
        raise InvalidSelector(LABEL, f"invalid label value {quote(value)} at {pos}: {problem}")


_AFTER_KEY: Final = '"=", "==", "!=", "in", "notin", "," or end of selector'
_AFTER_REQUIREMENT: Final = '"," or end of selector'


def parse_labels(text: str, max_terms: int, max_values: int) -> tuple[LabelReq, ...]:
    """The requirements of the label selector ``text``, as written (not yet canonical)."""
    return _LabelParser(text, max_terms, max_values).selector()


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

    def selector(self) -> tuple[LabelReq, ...]:
        if self.peek()[0] == _END:
            return ()  # empty or all whitespace: no requirement
        reqs: list[LabelReq] = []
        while True:
            if len(reqs) >= self.max_terms:
                raise InvalidSelector(
                    LABEL,
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

    def requirement(self) -> LabelReq:
        if self.peek()[0] == _NOT:
            self.take()
            return LabelNotExists(self.key('a label key after "!"'))
        key = self.key('a label key or "!"')
        token = self.peek()
        kind = token[0]
        if kind in (_COMMA, _END):
            return LabelExists(key)
        self.take()
        if kind == _NOT_EQUALS:
            return LabelNotEquals(key, self.exact_value())
        if kind in (_EQUALS, _DOUBLE_EQUALS):
            return LabelEquals(key, self.exact_value())
        if kind == _WORD and token[1] == "in":
            values = self.value_set("in")
            return LabelEquals(key, values[0]) if len(values) == 1 else LabelIn(key, values)
        if kind == _WORD and token[1] == "notin":
            values = self.value_set("notin")
            if len(values) == 1:
                return LabelNotEquals(key, values[0])
            return LabelNotIn(key, values)
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
                    LABEL,
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
