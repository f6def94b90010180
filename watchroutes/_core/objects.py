"""Object helpers: JSON merge patch (RFC 7386) and the object convention."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["merge_patch", "object_rv"]


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
