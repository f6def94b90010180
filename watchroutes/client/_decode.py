"""Sans-IO decoders of the three HTTP watch formats: bytes in, envelopes out.

The SSE decoder follows the WHATWG parsing rules (lines end in CRLF, LF or CR; a blank line
ends a block; ``:`` starts a comment) but, unlike a browser, reports id-only blocks, because
they are the server's bookmarks (protocol.md §3.3). The fast path is the server's own framing:
LF-only lines, split with one ``bytes.split``.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgspec

from ._errors import ProtocolError

__all__ = [
    "MAX_EVENT_BYTES",
    "Block",
    "Envelope",
    "JSONLinesDecoder",
    "LongPollAnswer",
    "SSEDecoder",
    "decode",
]

_BOM = b"\xef\xbb\xbf"
#: The largest event (line, or SSE block) accepted: an object of the server's maximum size
#: (1 MiB, protocol.md §3.2) in its envelope, with room to spare. Past it the stream is refused
#: (:class:`ProtocolError`) instead of buffered without bound.
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024


class Envelope(msgspec.Struct):
    """protocol.md §3.5 (a WebSocket envelope's ``id`` is ignored)."""

    type: str
    object: Any = None
    resourceVersion: str | None = None  # noqa: N815 - wire name


class LongPollAnswer(msgspec.Struct):
    """protocol.md §3.6."""

    events: list[Envelope]
    resourceVersion: str  # noqa: N815 - wire name


_envelope = msgspec.json.Decoder(Envelope)
_answer = msgspec.json.Decoder(LongPollAnswer)


def decode(data: bytes) -> Envelope:
    try:
        return _envelope.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a watch envelope ({exc}): {data[:200]!r}") from None


def decode_answer(data: bytes) -> LongPollAnswer:
    try:
        return _answer.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a long-poll answer ({exc}): {data[:200]!r}") from None


class Block(NamedTuple):
    """One SSE block that carried a field (comment-only blocks are not reported)."""

    #: The data lines joined with LF; ``None`` when the block had none (a browser would not
    #: dispatch it).
    data: bytes | None
    id: str | None
    retry: int | None


class SSEDecoder:
    """Feed bytes, get :class:`Block` values."""

    __slots__ = ("_data", "_first", "_id", "_pending", "_retry", "_seen", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._seen = False
        self._skip_lf = False
        self._first = True

    def feed(self, chunk: bytes) -> list[Block]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._pending + chunk if self._pending else chunk
        if self._first:
            if len(buffer) < 3 and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            self._first = False
            buffer = buffer.removeprefix(_BOM)
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: it ends the line either
            # way, and an LF that starts the next chunk is then skipped.
            if buffer.endswith(b"\r"):
                buffer = buffer[:-1] + b"\n"
                self._skip_lf = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise ProtocolError(f"an SSE line longer than {MAX_EVENT_BYTES} bytes")
        out: list[Block] = []
        for line in lines:
            if not line:
                if self._seen:
                    data = b"\n".join(self._data) if self._data else None
                    out.append(Block(data, self._id, self._retry))
                    self._data = []
                    self._id = self._retry = None
                    self._seen = False
                continue
            # The server's own framing first ("id: N", "data: {...}"), then the general rule.
            if line.startswith(b"data: "):
                self._data.append(line[6:])
                self._seen = True
                if len(self._data) > 1 and sum(map(len, self._data)) > MAX_EVENT_BYTES:
                    raise ProtocolError(f"an SSE event larger than {MAX_EVENT_BYTES} bytes")
                continue
            if line[0] == 0x3A:  # ":" a comment (": hb"): activity only
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
                self._seen = True
            elif name == b"id":
                if b"\x00" not in value and value:
                    self._id = value.decode("utf-8", "replace")
                    self._seen = True
            elif name == b"retry" and value.isdigit():
                self._retry = int(value)
                self._seen = True
        return out


class JSONLinesDecoder:
    """Feed bytes, get one :class:`Envelope` per line (protocol.md §3.4)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[Envelope]:
        buffer = self._pending + chunk if self._pending else chunk
        lines = buffer.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise ProtocolError(f"a JSON line longer than {MAX_EVENT_BYTES} bytes")
        return [decode(line) for line in lines if line.strip()]

    @property
    def pending(self) -> bytes:
        """Bytes after the last newline (a cut line when the stream ends)."""
        return self._pending
