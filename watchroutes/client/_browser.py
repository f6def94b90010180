"""The browser helper, shipped in the wheel as ``watchroutes/static/watchroutes.js``."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

__all__ = ["BROWSER_MODULE_MEDIA_TYPE", "browser_module"]

#: The ``Content-Type`` to serve it with (browsers need a JavaScript type for modules).
BROWSER_MODULE_MEDIA_TYPE: Final = "text/javascript; charset=utf-8"


@functools.cache
def browser_module() -> bytes:
    """The browser helper's source: a dependency-free ES module to serve at a path of your
    choice (``docs/client.md`` shows a plain Starlette and aiohttp route)."""
    return resources.files("watchroutes").joinpath("static/watchroutes.js").read_bytes()
