"""Wire formats: each turns frames and control events into the bytes of one transport."""

from __future__ import annotations

from typing import Protocol

from ..errors import Status
from ..events import Frame

__all__ = ["Wire"]


class Wire(Protocol):
    """What a :class:`~watchroutes._core.session.WatchSession` needs from a wire format.

    Every method returns the bytes to write (``b""`` when the format has nothing to say).
    """

    media_type: str

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The response headers of a watch in this format (protocol.md §3.3, §3.4)."""
        ...

    def preamble(self) -> bytes:
        """Written with the headers, before any event."""
        ...

    def frame(self, frame: Frame) -> bytes:
        """One event; the bytes are the frame's cached encoding, shared by all watchers."""
        ...

    def start(self, rv: int) -> bytes:
        """Marks the starting rv of a watch that sends no initial events."""
        ...

    def initial_end(self, rv: int) -> bytes:
        """The bookmark that ends the initial events."""
        ...

    def bookmark(self, rv: int) -> bytes:
        """A progress bookmark: the watcher is complete through ``rv``."""
        ...

    def heartbeat(self, rv: int) -> bytes:
        """Written when nothing else was written for a heartbeat interval."""
        ...

    def reset(self) -> bytes:
        """Tells the client to drop its state (SSE only; others answer Expired instead)."""
        ...

    def error(self, status: Status) -> bytes:
        """An ERROR event; the stream ends after it."""
        ...
