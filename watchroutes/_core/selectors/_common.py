"""What the selector modules share: the immutable base, the operator codes and how an error
message names the parameter and quotes the input.

Requirements and filters are immutable: their slots are set once, in ``__init__``, through
``object.__setattr__``; setting or deleting one afterwards raises ``AttributeError``.

An :class:`InvalidSelector` names its parameter (``labelSelector`` or ``fieldSelector``) and
quotes the offending token with :func:`quote`: in double quotes, cut after ``SHOWN`` characters,
with quotes, backslashes, control characters and lone surrogates escaped, so a message is one
printable line whatever the input.
"""

from __future__ import annotations

from typing import Final, NoReturn

__all__ = [
    "EQ",
    "EXISTS",
    "FIELD",
    "IN",
    "LABEL",
    "NE",
    "NOT_EXISTS",
    "NOT_IN",
    "SHOWN",
    "Frozen",
    "quote",
]

LABEL: Final = "labelSelector"
FIELD: Final = "fieldSelector"

SHOWN: Final = 64  # longest token quoted in an error message

# Operator codes; their order is the canonical order of requirements on one key.
EXISTS, NOT_EXISTS, EQ, NE, IN, NOT_IN = range(6)


def quote(text: str) -> str:
    """``text`` in double quotes for an error message: shortened, control characters escaped."""
    if len(text) > SHOWN:
        text = text[:SHOWN] + "..."
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


class Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")
