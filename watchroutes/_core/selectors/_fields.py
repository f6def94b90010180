"""The ``fieldSelector``: its requirements and its parser.

A selector is ``path(=|==|!=)value`` terms separated by commas (empty terms are ignored, like
Kubernetes); the first ``!=``, ``==`` or ``=`` splits a term. A path is dot-separated names of
``[A-Za-z0-9_-]``; nothing is trimmed. In a value ``\\\\``, ``\\,`` and ``\\=`` stand for
``\\``, ``,`` and ``=``; any other backslash, or a bare ``=``, is an error.

A field compares by its string form: a string as is, ``true``/``false``, an integer in decimal,
a finite float in its JSON form. Anything else (missing, ``null``, a mapping, a list, NaN) is
*absent*: ``=`` never matches it and ``!=`` always does. (Kubernetes compares a missing field as
``""``; objects here are free-form JSON, so absent is kept apart.)

Every problem is an :class:`InvalidSelector` naming the offending text and its 0-based
character position. The parser stops at ``max_terms`` requirements.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, final

import msgspec

from ..errors import InvalidSelector
from ._common import EQ, FIELD, NE, Frozen, quote

__all__ = ["FieldEquals", "FieldNotEquals", "FieldReq", "parse_fields"]

# A fixed pattern (never built from input).
_PATH_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


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


class FieldReq(Frozen):
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
        operator = "=" if self.op == EQ else "!="
        return f"{self.dotted}{operator}{_escape_field_value(self.value)}"


@final
class FieldEquals(FieldReq):
    __slots__ = ()
    op = EQ

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return self.lookup(obj) == self.value


@final
class FieldNotEquals(FieldReq):
    __slots__ = ()
    op = NE

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return self.lookup(obj) != self.value


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
                    FIELD,
                    f"invalid escape sequence {quote(ch + nxt)} at {pos + i}: "
                    'only "\\\\", "\\," and "\\=" are allowed in values',
                )
            out.append(nxt)
            i += 2
        elif ch == "=":
            raise InvalidSelector(
                FIELD, f'unexpected "=" at {pos + i}: write "=" in a value as "\\="'
            )
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_fields(text: str, max_terms: int) -> tuple[FieldReq, ...]:
    """The requirements of the field selector ``text``, as written (not yet canonical)."""
    reqs: list[FieldReq] = []
    for term, start in _field_terms(text):
        if not term:
            continue  # like Kubernetes: `a=b,` and `a=b,,c=d` are fine
        if len(reqs) >= max_terms:
            raise InvalidSelector(
                FIELD, f"too many requirements at {start}: the limit is {max_terms}"
            )
        # The first "!=", "==" or "=" splits the term (Kubernetes checks them in this order).
        at = -1
        for j, ch in enumerate(term):
            if ch == "=" or (ch == "!" and term.startswith("=", j + 1)):
                at = j
                break
        if at < 0:
            raise InvalidSelector(
                FIELD,
                f'no operator in {quote(term)} at {start}: expected "path=value", '
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
                FIELD, f"unexpected {quote(operator)} at {start}: expected a field path"
            )
        if not all(_PATH_SEGMENT_RE.fullmatch(segment) for segment in path.split(".")):
            raise InvalidSelector(
                FIELD,
                f"invalid field path {quote(path)} at {start}: must be names of letters, "
                "digits, '-' and '_' separated by '.'",
            )
        value_at = at + len(operator)
        value = _unescape_field_value(term[value_at:], start + value_at)
        if operator == "!=":
            reqs.append(FieldNotEquals(path, value))
        else:
            reqs.append(FieldEquals(path, value))
    return tuple(reqs)
