"""An incremental Server-Sent Events parser, following the WHATWG algorithm.

It reports every block, including those a browser would not dispatch (id-only bookmarks,
comments, ``retry``), because tests want to see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SSEMessage", "SSEParser"]


@dataclass(frozen=True)
class SSEMessage:
    """One blank-line-terminated block. ``data`` is ``None`` when the block had no data line
    (a browser would not dispatch it); ``id`` is the block's own id line, if any."""

    data: str | None = None
    id: str | None = None
    event: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()


@dataclass
class SSEParser:
    """Feed bytes, get :class:`SSEMessage` blocks. Lines end in CRLF, LF or CR."""

    last_event_id: str = ""
    _pending: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _event: str | None = None
    _retry: int | None = None
    _comments: list[str] = field(default_factory=list)
    _seen: bool = False
    _decoder_tail: bytes = b""

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        data = self._decoder_tail + chunk
        try:
            text = data.decode("utf-8")
            self._decoder_tail = b""
        except UnicodeDecodeError as exc:  # a multi-byte character split across chunks
            text = data[: exc.start].decode("utf-8")
            self._decoder_tail = data[exc.start :]
        buffer = self._pending + text
        out: list[SSEMessage] = []
        start = 0
        i = 0
        n = len(buffer)
        while i < n:
            ch = buffer[i]
            if ch == "\r":
                if i + 1 == n:  # might be the first half of CRLF: wait for more
                    break
                line = buffer[start:i]
                i += 2 if buffer[i + 1] == "\n" else 1
                start = i
                self._line(line, out)
            elif ch == "\n":
                self._line(buffer[start:i], out)
                i += 1
                start = i
            else:
                i += 1
        self._pending = buffer[start:]
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if not line:
            if self._id is not None:  # WHATWG: the last event id changes when a block ends
                self.last_event_id = self._id
            if self._seen:
                out.append(
                    SSEMessage(
                        data="\n".join(self._data) if self._data else None,
                        id=self._id,
                        event=self._event,
                        retry=self._retry,
                        comments=tuple(self._comments),
                    )
                )
            self._data, self._id, self._event, self._retry = [], None, None, None
            self._comments, self._seen = [], False
            return
        self._seen = True
        if line.startswith(":"):
            self._comments.append(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "event":
            self._event = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
