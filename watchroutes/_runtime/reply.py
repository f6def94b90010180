"""Framework-neutral answers: a status, headers, a body, and maybe a stream to run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._core.errors import ClientError
from .._core.events import encode, status_envelope
from .._core.params import Mode
from .._core.wire import jsonlines, sse

if TYPE_CHECKING:
    from .stream import WatchStream

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "Reply", "error_reply", "json_reply"]

VARY: Final = ("vary", "Accept")
SSE_HEADERS: Final = (
    ("content-type", sse.MEDIA_TYPE),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    VARY,
)
JSONLINES_HEADERS: Final = (
    ("content-type", jsonlines.MEDIA_TYPE),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    VARY,
)
JSON_HEADERS: Final = (("content-type", "application/json"), VARY)


@dataclass
class Reply:
    """What to send. With ``stream``, ``body`` is the first chunk, flushed with the headers,
    and the adapter then runs ``stream.run(send)`` until it returns."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: WatchStream | None = None
    #: A complete body sent as a stream (chunked, no ``Content-Length``): a watch that ends
    #: at once, such as an ERROR event, is framed like any other watch.
    chunked: bool = False


def json_reply(status: int, body: Any, *extra: tuple[str, str]) -> Reply:
    return Reply(status, [*JSON_HEADERS, *extra], encode(body))


def error_reply(exc: ClientError, mode: Mode, *, retry_ms: int) -> Reply:
    """The answer to a request refused before any stream started (DESIGN 3.3-3.5).

    SSE answers conditions a retry fixes (429, 503, 504) with 200, ``retry: <ms>`` and one
    ERROR event, because a non-200 answer stops a browser's EventSource for good.
    """
    status = exc.status()
    if mode is Mode.SSE and exc.retryable:
        wait = retry_ms if exc.retry_after is None else exc.retry_after * 1000
        body = sse.retry_block(wait) + b"data: " + status_envelope(status) + b"\n\n"
        return Reply(200, list(SSE_HEADERS), body, chunked=True)
    extra = () if exc.retry_after is None else (("retry-after", str(exc.retry_after)),)
    return json_reply(exc.code, status, *extra)
