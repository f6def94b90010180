"""WebSocket framing (DESIGN 4): one envelope per text message, its subscription id first.

A message is ``{"id":"<sub>",`` followed by the rest of the frame's shared JSON encoding, so
the envelope is still encoded once per event whatever the number of watchers. The session
writes messages ``\\n``-terminated (msgspec's JSON has no raw newline), and the runtime sends
each line as one text message. Liveness is the WebSocket ping, not a message: a heartbeat
writes nothing unless the client asked for bookmarks.
"""

from __future__ import annotations

from typing import Final

from ..errors import Status
from ..events import Envelope, Frame, bookmark_object, encode

__all__ = ["WebSocketWire", "control_message"]

MEDIA_TYPE: Final = "application/json"


def _prefix(sub_id: str) -> bytes:
    return b'{"id":' + encode(sub_id) + b","


def control_message(sub_id: str, type: str) -> bytes:  # noqa: A002
    """A message about a subscription that carries no object (``UNWATCHED``)."""
    return _prefix(sub_id) + b'"type":' + encode(type) + b"}"


class WebSocketWire:
    """The framing of one subscription on a socket."""

    media_type = MEDIA_TYPE
    __slots__ = ("api_version", "bookmarks", "kind", "prefix")

    def __init__(self, kind: str, api_version: str, sub_id: str, *, bookmarks: bool) -> None:
        self.kind = kind
        self.api_version = api_version
        self.bookmarks = bookmarks
        self.prefix = _prefix(sub_id)

    def _message(self, envelope: bytes) -> bytes:
        # envelope is b'{"type":...}': keep everything after its opening brace.
        return b"".join((self.prefix, memoryview(envelope)[1:], b"\n"))

    def _bookmark(self, rv: int, initial_end: bool) -> bytes:
        body = bookmark_object(self.kind, self.api_version, rv, initial_end=initial_end)
        return self._message(encode(Envelope("BOOKMARK", body, str(rv))))

    def preamble(self) -> bytes:
        return b""

    def frame(self, frame: Frame) -> bytes:
        return self._message(frame.json())

    def start(self, rv: int) -> bytes:
        return b""

    def initial_end(self, rv: int) -> bytes:
        return self._bookmark(rv, True) if self.bookmarks else b""

    def bookmark(self, rv: int) -> bytes:
        return self._bookmark(rv, False) if self.bookmarks else b""

    def heartbeat(self, rv: int) -> bytes:
        return self._bookmark(rv, False) if self.bookmarks else b""

    def reset(self) -> bytes:  # pragma: no cover - an expired rv is an ERROR envelope here
        raise NotImplementedError("WebSocket has no RESET; an expired rv is an ERROR envelope")

    def error(self, status: Status) -> bytes:
        return self._message(encode(Envelope(type="ERROR", object=status)))
