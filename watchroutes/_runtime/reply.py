"""Framework-neutral answers: a status, headers, a body, and maybe a stream to run; and the
other half of a write, reading its body: :class:`BodyLimit` counts it while the adapter
reads it, :func:`decode_json` turns every way it can be wrong into a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._core.errors import BadRequest, ClientError, RequestEntityTooLarge, UsageError
from .._core.events import encode
from .._core.params import Mode
from .._core.transport import ErrorForm, error_form
from .._core.wire import jsonlines, sse

if TYPE_CHECKING:
    from .stream import WatchStream

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_JSON_DEPTH",
    "JSON_HEADERS",
    "SSE_HEADERS",
    "BodyLimit",
    "Reply",
    "decode_json",
    "error_reply",
    "json_reply",
]

#: The largest request body read: the hub's largest object (1 MiB, ``max_object_bytes``),
#: as Kubernetes caps a request at a few MiB (3 MiB) for objects of at most 1.5 MiB (etcd).
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
#: The deepest nesting of arrays and objects a body may have: Ruby's JSON parser refuses
#: past 100 (``max_nesting``); a Kubernetes object is a handful of levels deep. Deeper
#: bodies would reach Python's recursion limit when they are copied, merged or encoded.
DEFAULT_MAX_JSON_DEPTH: Final = 100

VARY: Final = ("vary", "Accept")
#: Each stream's headers are its wire's.
SSE_HEADERS: Final = sse.HEADERS
JSONLINES_HEADERS: Final = jsonlines.HEADERS
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
    """The answer to a request refused before any stream started (protocol.md §3.3-3.6), in
    the form :func:`~watchroutes._core.transport.error_form` gives its transport: SSE answers
    what a retry fixes (429, 503, 504) with 200, ``retry: <ms>`` and one ERROR event, JSON
    lines an expired rv with 200 and one ERROR line; the rest is the status and its body.

    (An expired SSE resume that the resource's state can repair never gets here: the hub's
    state turned it into a RESET when the watch opened.)
    """
    status = exc.status()
    form = error_form(exc, mode)
    if form is ErrorForm.IN_STREAM:
        if mode is Mode.SSE:
            wait = retry_ms if exc.retry_after is None else exc.retry_after * 1000
            body = sse.retry_block(wait) + sse.error_block(status)
            return Reply(200, list(SSE_HEADERS), body, chunked=True)
        if mode is Mode.JSONLINES:  # kube-apiserver: 200, the Status as an ERROR, the end
            return Reply(200, list(JSONLINES_HEADERS), jsonlines.error_line(status), chunked=True)
        raise UsageError(f"a {mode.value} refusal is not an HTTP answer")
    extra: tuple[tuple[str, str], ...] = ()
    if exc.retry_after is not None:
        extra = (("retry-after", str(exc.retry_after)),)
    if exc.code == 401:  # RFC 6750: the scheme a client must use
        extra = (*extra, ("www-authenticate", "Bearer"))
    return json_reply(exc.code, status, *extra)


class BodyLimit:
    """Counts a request body while it is read, and refuses it as soon as it is too large.

    Check ``Content-Length`` first (``BodyLimit(limit, request.headers.get("content-length"))``
    raises at once for a declared size over the limit), then :meth:`feed` every chunk read:
    a chunked body is cut off at the first chunk past the limit, so at most ``limit`` bytes
    plus one chunk are ever held.
    """

    __slots__ = ("_chunks", "limit", "size")

    def __init__(self, limit: int = DEFAULT_MAX_BODY_BYTES, content_length: str | None = None):
        if limit < 0:
            raise ValueError("limit must not be negative")
        self.limit = limit
        self.size = 0
        self._chunks: list[bytes] = []
        if content_length is not None:
            text = content_length.strip()
            if not text.isdigit() or not text.isascii():  # the server normally refuses these
                raise BadRequest("Content-Length is not a non-negative integer")
            if int(text) > limit:
                raise self._too_large(f"the body is {int(text)} bytes")

    def _too_large(self, what: str) -> RequestEntityTooLarge:
        return RequestEntityTooLarge(f"{what}; the limit is {self.limit}")

    def feed(self, chunk: bytes) -> None:
        """Add a chunk read; raises ``RequestEntityTooLarge`` once the body is past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            self._chunks.clear()
            raise self._too_large(f"the body is more than {self.limit} bytes")
        if chunk:
            self._chunks.append(chunk)

    def body(self) -> bytes:
        """The body read so far."""
        return b"".join(self._chunks)


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects at most ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return False
                stack.append((child, depth + 1))
    return True


def decode_json(body: bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """A request body's JSON value; every way it can be wrong is a 400 ``BadRequest``:
    malformed JSON, invalid UTF-8, and nesting deeper than ``max_depth`` (which would
    otherwise reach the recursion limit, in the decoder or later)."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        problem = str(exc)
        if "UTF-8" in problem:
            raise BadRequest("the body is not valid UTF-8") from None
        detail = problem.removeprefix("JSON is malformed").lstrip(": ")[:100]
        raise BadRequest(
            f"the body is not valid JSON: {detail}" if detail else "the body is not valid JSON"
        ) from None
    except RecursionError:
        raise BadRequest(f"the body nests deeper than {max_depth} levels") from None
    if isinstance(value, dict | list) and not _depth(value, max_depth):
        raise BadRequest(f"the body nests deeper than {max_depth} levels")
    return value
