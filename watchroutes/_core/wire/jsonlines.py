"""Kubernetes watch framing: one compact JSON envelope per ``\\n``-terminated line.

The official Python client splits on ``\\n`` and drops bytes after the last one, and yields
``None`` for a blank line (kubernetes >= 33), so every line ends with ``\\n`` and no line is
ever blank. While idle, the only heartbeat it can parse is a ``BOOKMARK``, sent when the client
asked for bookmarks (``allowWatchBookmarks``); otherwise nothing is written.
"""

from __future__ import annotations

from typing import Final

from ..errors import Status
from ..events import Envelope, Frame, bookmark_object, encode, status_envelope

__all__ = ["HEADERS", "MEDIA_TYPE", "JsonLinesWire", "error_line"]

#: As kube-apiserver answers a JSON watch (no ``;stream=watch`` suffix for JSON).
MEDIA_TYPE: Final = "application/json"
#: protocol.md §3.4: as SSE's (never cached, never buffered, varies with ``Accept``).
HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-type", MEDIA_TYPE),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    ("vary", "Accept"),
)


def error_line(status: Status) -> bytes:
    """An ``ERROR`` line: how kube-apiserver ends a watch it cannot serve (an expired rv)."""
    return status_envelope(status) + b"\n"


class JsonLinesWire:
    """JSON-lines framing of one watch (protocol.md §3.4)."""

    media_type = MEDIA_TYPE
    headers = HEADERS
    __slots__ = ("api_version", "bookmarks", "kind")

    def __init__(self, kind: str, api_version: str, *, bookmarks: bool) -> None:
        self.kind = kind
        self.api_version = api_version
        self.bookmarks = bookmarks

    def _wrap(self, envelope: bytes) -> bytes:
        """One encoded envelope as this format writes it."""
        return envelope + b"\n"

    def _bookmark(self, rv: int, initial_end: bool) -> bytes:
        body = bookmark_object(self.kind, self.api_version, rv, initial_end=initial_end)
        return self._wrap(encode(Envelope("BOOKMARK", body, str(rv))))

    def preamble(self) -> bytes:
        return b""

    def frame(self, frame: Frame) -> bytes:
        return frame.line()

    def start(self, rv: int) -> bytes:
        return b""

    def initial_end(self, rv: int) -> bytes:
        return self._bookmark(rv, True) if self.bookmarks else b""

    def bookmark(self, rv: int) -> bytes:
        return self._bookmark(rv, False) if self.bookmarks else b""

    def heartbeat(self, rv: int) -> bytes:
        return self._bookmark(rv, False) if self.bookmarks else b""

    def reset(self) -> bytes:  # pragma: no cover - JSON lines answers Expired, never RESET
        raise NotImplementedError("no RESET here; an expired rv is an ERROR event")

    def error(self, status: Status) -> bytes:
        return self._wrap(status_envelope(status))
