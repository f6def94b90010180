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
from typing import Any, TypeVar

from ._client import Headers, TestResponse, header_items, target
from ._sse import SSEMessage, SSEParser

__all__ = ["WSGIClient", "WSGIStream"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Params = Mapping[str, str] | Sequence[tuple[str, str]] | None

_END = object()
T = TypeVar("T")


def _items(next_item: Callable[[], T | None], limit: int | None) -> Iterator[T]:
    """``next_item()`` results until it returns ``None`` (at most ``limit`` of them)."""
    left = limit
    while left is None or left > 0:
        item = next_item()
        if item is None:
            return
        yield item
        if left is not None:
            left -= 1


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
        #: Whether a reader has seen the end of the body.
        self.ended = False
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
            self.ended = True
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

    def next_event(self) -> Any:
        """The next envelope: an SSE block with data, or a JSON line; ``None`` at the end."""
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            return self.next_line()
        while (message := self.next_sse()) is not None:
            if message.data is not None:
                return json.loads(message.data)
        return None

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        return _items(self.next_chunk, limit)

    def sse(self, limit: int | None = None) -> Iterator[SSEMessage]:
        return _items(self.next_sse, limit)

    def json_lines(self, limit: int | None = None) -> Iterator[Any]:
        return _items(self.next_line, limit)

    def events(self, limit: int | None = None) -> Iterator[Any]:
        return _items(self.next_event, limit)

    def take(self, n: int) -> list[Any]:
        """The next ``n`` envelopes (fewer if the body ends; each read bounded by the
        timeout)."""
        return list(self.events(n))

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

    __test__ = False

    def __init__(self, app: WSGIApp, *, timeout: float = 10.0, host: str = "testserver") -> None:
        self.app = app
        self.timeout = timeout
        self.host = host

    def environ(
        self,
        method: str,
        path: str,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
    ) -> dict[str, Any]:
        """The WSGI environ of a request. A header given more than once (as pairs) is one
        variable, its values joined with ``,`` as WSGI servers do (PEP 3333 follows CGI)."""
        path, query = target(path, params)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": self.host,
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
        environ["HTTP_HOST"] = self.host
        given: set[str] = set()
        for name, value in header_items(headers):
            key = name.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
            repeated = key in given and key not in ("CONTENT_TYPE", "CONTENT_LENGTH")
            environ[key] = f"{environ[key]},{value}" if repeated else value
            given.add(key)
        return environ

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> Iterator[WSGIStream]:
        """Open a response and read it incrementally; leaving the block disconnects."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = [("content-type", "application/json"), *header_items(headers)]
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
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> TestResponse:
        """A complete answer (the response must end by itself)."""
        with self.stream(
            method, path, params=params, headers=headers, body=body, json_body=json_body
        ) as stream:
            data = stream.read()
            if stream.error is not None:
                raise stream.error
            return TestResponse(stream.status, dict(stream.headers), data)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("DELETE", path, **kwargs)

    def watch(
        self, path: str, n: int, *, params: Params = None, headers: Headers = None
    ) -> list[Any]:
        """Open a watch, read ``n`` envelopes, disconnect, return them."""
        with self.stream("GET", path, params=params, headers=headers) as stream:
            return stream.take(n)
