"""An in-memory WSGI client that reads endless streams, as ``WatchClient`` does for ASGI.

A WSGI server iterates the app's response in the request's thread and writes each chunk to
the socket; when a write fails (the client left) it stops and calls ``close()`` on the
response. :class:`WSGIClient` does the same in a thread of its own per request, so a test
reads chunks with a timeout, and :meth:`WSGIStream.disconnect` acts out a client that left:
the next chunk the app yields "fails to write" and the response is closed, exactly when a
real server would notice.
"""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from ._client import TestResponse
from ._sse import SSEMessage, SSEParser

__all__ = ["WSGIClient", "WSGIStream"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Params = Mapping[str, str] | Sequence[tuple[str, str]] | None

_END = object()


class WSGIStream:
    """A response being read: ``status`` and ``headers`` are known once it is open."""

    def __init__(self, app: WSGIApp, environ: dict[str, Any], *, timeout: float) -> None:
        self.timeout = timeout
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: queue.Queue[object] = queue.Queue()
        self._started = threading.Event()
        self._gone = threading.Event()
        self._buffer = b""
        self._sse = SSEParser()
        self._pending: list[SSEMessage] = []
        #: Whether the app's response was closed (as a server closes it), and why it ended.
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(app, environ), daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the app did not start its response in time")
        if self.error is not None:
            raise self.error

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status = int(status.split(" ", 1)[0])
        self.headers = {name.lower(): value for name, value in headers}
        return self._write

    def _write(self, data: bytes) -> None:  # the legacy write() callable
        self._chunks.put(bytes(data))

    def _serve(self, app: WSGIApp, environ: dict[str, Any]) -> None:
        result: Iterable[bytes] | None = None
        try:
            result = app(environ, self._start_response)
            self._started.set()
            for chunk in result:
                if self._gone.is_set():
                    break  # the write of this chunk fails: the client is gone
                if chunk:
                    self._chunks.put(bytes(chunk))
        except BaseException as exc:  # reported to the test, as a server would log it
            self.error = exc
            self._started.set()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self.closed.set()
            self._chunks.put(_END)

    def next_chunk(self, timeout: float | None = None) -> bytes | None:
        """The next chunk written, or ``None`` once the response ended."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        try:
            item = self._chunks.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError("no chunk arrived in time") from None
        if item is _END:
            self._chunks.put(_END)
            return None
        assert isinstance(item, bytes)
        return item

    def next_line(self) -> Any:
        """The next JSON line, decoded (``None`` at the end)."""
        while b"\n" not in self._buffer:
            chunk = self.next_chunk()
            if chunk is None:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def next_sse(self) -> SSEMessage | None:
        """The next SSE block, parsed (``None`` at the end)."""
        while not self._pending:
            chunk = self.next_chunk()
            if chunk is None:
                return None
            self._pending.extend(self._sse.feed(chunk))
        return self._pending.pop(0)

    def read(self) -> bytes:
        """Everything until the response ends."""
        out = bytearray()
        while (chunk := self.next_chunk()) is not None:
            out += chunk
        return bytes(out)

    def disconnect(self) -> None:
        """The client leaves: the app's next chunk cannot be written, and the response is
        closed then (as a WSGI server notices a departed client)."""
        self._gone.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the server side closed the response (the watch was released)."""
        return self.closed.wait(self.timeout if timeout is None else timeout)


class WSGIClient:
    """Drive a WSGI app in memory: ``get``/``request`` for complete answers, ``stream`` for
    watches (every read bounded by ``timeout`` seconds)."""

    def __init__(self, app: WSGIApp, *, timeout: float = 10.0) -> None:
        self.app = app
        self.timeout = timeout

    def environ(
        self,
        method: str,
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> dict[str, Any]:
        path, _, query = path.partition("?")
        if params:
            extra = urlencode(list(params.items()) if isinstance(params, Mapping) else params)
            query = f"{query}&{extra}" if query else extra
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ[f"HTTP_{key}"] = value
        return environ

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Iterator[WSGIStream]:
        """Open a response and read it incrementally; leaving the block disconnects."""
        stream = WSGIStream(
            self.app, self.environ(method, path, params, headers, body), timeout=self.timeout
        )
        try:
            yield stream
        finally:
            stream.disconnect()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> TestResponse:
        """A complete answer (the response must end by itself)."""
        with self.stream(method, path, params=params, headers=headers, body=body) as stream:
            data = stream.read()
            if stream.error is not None:
                raise stream.error
            return TestResponse(stream.status, dict(stream.headers), data)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)
