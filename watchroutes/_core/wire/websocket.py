"""WebSocket framing (protocol.md §4): one envelope per text message, its subscription id first.

A message is ``{"id":"<sub>",`` followed by the rest of the frame's shared JSON encoding, so
the envelope is still encoded once per event whatever the number of watchers. The session
writes messages ``\\n``-terminated (msgspec's JSON has no raw newline), and the runtime sends
each line as one text message. Liveness is the WebSocket ping, not a message: a heartbeat
writes nothing unless the client asked for bookmarks.
"""

from __future__ import annotations

from ..errors import Status
from ..events import Frame, encode, status_envelope
from .jsonlines import JsonLinesWire

__all__ = ["WebSocketWire", "control_message", "error_message"]


def _prefix(sub_id: str) -> bytes:
    return b'{"id":' + encode(sub_id) + b","


def control_message(sub_id: str, type: str) -> bytes:  # noqa: A002
    """A message about a subscription that carries no object (``UNWATCHED``)."""
    return _prefix(sub_id) + b'"type":' + encode(type) + b"}"


def error_message(sub_id: str, status: Status) -> bytes:
    """The ``ERROR`` envelope of a subscription that could not open (the socket stays)."""
    return _prefix(sub_id) + status_envelope(status)[1:]


class WebSocketWire(JsonLinesWire):
    """The framing of one subscription on a socket: JSON lines with the id up front (the
    runtime sends each line as one text message)."""

    __slots__ = ("prefix",)

    def __init__(self, kind: str, api_version: str, sub_id: str, *, bookmarks: bool) -> None:
        super().__init__(kind, api_version, bookmarks=bookmarks)
        self.prefix = _prefix(sub_id)

    def _wrap(self, envelope: bytes) -> bytes:
        # envelope is b'{"type":...}': keep everything after its opening brace.
        return b"".join((self.prefix, memoryview(envelope)[1:], b"\n"))

    def frame(self, frame: Frame) -> bytes:
        return self._wrap(frame.json())
