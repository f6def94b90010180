"""The public names say where to import them from (reprs, tracebacks, docs), not the private
module that implements them; pickles find them there too."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["present_as_public"]


def present_as_public(namespace: dict[str, Any]) -> None:
    """Set ``__module__`` of each name in ``namespace["__all__"]`` that a private module
    defines to the public module ``namespace`` belongs to (a name already public elsewhere,
    re-exported, keeps its first public home)."""
    public = namespace["__name__"]
    for name in namespace["__all__"]:
        value = namespace[name]
        module = getattr(value, "__module__", None) or ""
        if callable(value) and "._" in module:
            with contextlib.suppress(AttributeError, TypeError):  # a builtin or a slot type
                value.__module__ = public
