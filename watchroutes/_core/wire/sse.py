"""Server-Sent Events, per the WHATWG HTML standard, section 9.2 ("Server-sent events").

The parser the browser runs splits the stream into lines on CRLF, LF or CR; a blank line
dispatches; ``data`` lines are joined with LF; ``id`` values containing NUL are ignored and an
``id`` line cannot hold CR or LF at all; lines starting with ``:`` are comments. So:

* an envelope is ``id: <rv>`` + ``data: <json>`` (msgspec's JSON has no raw CR/LF, one line);
* there is no ``event:`` line, so ``EventSource.onmessage`` receives every change;
* a bookmark is an id-only block: it sets the browser's last event id without dispatching
  (the data buffer is empty), so a filtered or idle watcher resumes without 410;
* ``: hb`` is the heartbeat comment;
* :func:`encode_event` is the general encoder for application-written data, which may hold
  any line breaks.
"""

from __future__ import annotations

import re
from typing import Final

from ..errors import Status
from ..events import Envelope, Frame, bookmark_object, encode, status_envelope

__all__ = [
    "DEFAULT_RETRY_MS",
    "HEADERS",
    "HEARTBEAT",
    "MEDIA_TYPE",
    "SseWire",
    "encode_event",
    "error_block",
    "id_block",
    "retry_block",
]

MEDIA_TYPE: Final = "text/event-stream; charset=utf-8"
#: Reconnection delay sent first on every stream. Browsers default to a few seconds
#: (Firefox 5 s, Chromium 3 s); 2 s resumes quickly without stampeding a restarted server.
DEFAULT_RETRY_MS: Final = 2000
HEARTBEAT: Final = b": hb\n\n"
#: protocol.md §3.3: never cached, never buffered by nginx (``X-Accel-Buffering``), and the
#: answer depends on ``Accept`` (the same URL is a list without it).
HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-type", MEDIA_TYPE),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    ("vary", "Accept"),
)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_RESET: Final = b"data: " + encode(Envelope(type="RESET")) + b"\n\n"


def retry_block(ms: int) -> bytes:
    if ms < 0:
        raise ValueError("retry must be a non-negative number of milliseconds")
    return b"retry: %d\n\n" % ms


def id_block(rv: int) -> bytes:
    return b"id: %d\n\n" % rv


def error_block(status: Status) -> bytes:
    """An ``ERROR`` event: ``data:`` only, never an ``id:`` (it is no resume point)."""
    return b"data: " + status_envelope(status) + b"\n\n"


def _field_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF")
    return value


def encode_event(
    data: str | None = None,
    *,
    id: str | None = None,  # noqa: A002 - the field's name in the standard
    event: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """One SSE block for arbitrary text, split the way the WHATWG parser joins it back.

    ``data`` with CR, LF or CRLF becomes several ``data:`` lines; an empty string is one
    empty ``data:`` line (it dispatches an event with empty data). An ``id`` holding NUL, CR
    or LF is refused: browsers would ignore or mis-split it.
    """
    lines: list[str] = []
    if comment is not None:
        lines.extend(": " + part for part in _LINE_BREAK.split(comment))
    if retry is not None:
        if retry < 0:
            raise ValueError("retry must be a non-negative number of milliseconds")
        lines.append(f"retry: {retry}")
    if id is not None:
        if "\x00" in id:
            raise ValueError("SSE id must not contain NUL")
        lines.append("id: " + _field_value("id", id))
    if event is not None:
        lines.append("event: " + _field_value("event", event))
    if data is not None:
        lines.extend("data: " + part for part in _LINE_BREAK.split(data))
    if not lines:
        raise ValueError("an SSE block needs at least one field")
    return ("\n".join(lines) + "\n\n").encode()


class SseWire:
    """SSE framing of one watch (protocol.md §3.3)."""

    media_type = MEDIA_TYPE
    headers = HEADERS
    __slots__ = ("api_version", "kind", "retry_ms")

    def __init__(self, kind: str, api_version: str, *, retry_ms: int = DEFAULT_RETRY_MS) -> None:
        self.kind = kind
        self.api_version = api_version
        self.retry_ms = retry_ms

    def preamble(self) -> bytes:
        return retry_block(self.retry_ms)

    def frame(self, frame: Frame) -> bytes:
        return frame.sse()

    def start(self, rv: int) -> bytes:
        return id_block(rv)

    def initial_end(self, rv: int) -> bytes:
        body = bookmark_object(self.kind, self.api_version, rv, initial_end=True)
        return b"id: %d\ndata: %s\n\n" % (rv, encode(Envelope("BOOKMARK", body, str(rv))))

    def bookmark(self, rv: int) -> bytes:
        return id_block(rv)

    def heartbeat(self, rv: int) -> bytes:
        return HEARTBEAT

    def reset(self) -> bytes:
        return _RESET

    def error(self, status: Status) -> bytes:
        return error_block(status)
