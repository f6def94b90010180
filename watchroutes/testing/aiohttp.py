"""An in-memory client for aiohttp applications, with the API of :class:`WatchClient`.

aiohttp's server is an asyncio protocol: ``AppRunner(app).server()`` makes the protocol
(``RequestHandler``) that ``loop.create_server`` would attach to each accepted socket. This
client attaches it to a transport of its own instead, writes the request's bytes into it and
parses the bytes the server writes back. Everything between (aiohttp's HTTP parser,
middlewares, routing, the payload writer, chunked framing, ``WebSocketResponse``, the
application's startup and shutdown signals) is aiohttp's own code, run as it runs behind a
socket; no port is opened.

A client that leaves is what it is to aiohttp behind a socket: the transport closes and the
protocol hears ``connection_lost``. With aiohttp's default (``handler_cancellation=False``) the
handler notices at its next write, so a watch is released at its next heartbeat, as in
production; ``AiohttpClient(app, handler_cancellation=True)`` cancels the handler at once,
as ``web.run_app(app, handler_cancellation=True)`` does::

    async with AiohttpClient(app) as client:      # runs the app's startup, then its shutdown
        async with client.stream("GET", "/orders", params={"watch": "1"}) as response:
            (event,) = await response.take(1)
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - exercised without aiohttp
    raise ImportError(
        "watchroutes.testing.aiohttp needs aiohttp: pip install 'watchroutes[aiohttp]'"
    ) from exc

from ._client import (
    Headers,
    InMemoryRequests,
    Params,
    StreamResponse,
    header_items,
    target,
)
from ._websocket import WebSocketClosed

__all__ = ["AiohttpClient", "AiohttpWebSocket"]

#: The peer address the application sees (``request.remote``), as the ASGI client's.
CLIENT_ADDRESS = ("127.0.0.1", 50000)


class _ResponseReader:
    """The client's half of HTTP/1.1: parses the response the server writes, incrementally.

    The head sets ``started``; each body chunk (de-chunked, one per write of the app) goes to
    ``receiver``; after a ``101`` every byte goes to ``upgraded``.
    """

    def __init__(self, method: str) -> None:
        self.sender, self.receiver = anyio.create_memory_object_stream[bytes](math.inf)
        self.started = anyio.Event()
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.upgraded: Callable[[bytes], None] | None = None
        self._head_only = method.upper() == "HEAD"
        self._buffer = bytearray()
        self._state = "head"  # head, size, data, trailer, length, close, upgraded, done
        self._left = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def eof(self) -> None:
        """The connection closed: whatever was being read has ended."""
        self._state = "done"
        self.sender.close()
        self.started.set()

    def _end(self) -> None:
        self._state = "done"
        self.sender.close()

    def _emit(self, n: int) -> None:
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        if chunk:
            self.sender.send_nowait(chunk)

    def _step(self) -> bool:
        """Parse what the buffer holds for the current state; ``False`` when it needs more."""
        buffer, state = self._buffer, self._state
        if state == "head":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            status = int(status_line.split(" ", 2)[1])
            if 100 <= status < 200 and status != 101:
                return True  # an interim response (100 Continue): the real one follows
            self.status = status
            self.headers = [
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in lines)
            ]
            fields = dict(self.headers)
            if status == 101:
                self._state = "upgraded"
            elif self._head_only or status in (204, 304):
                self._end()
            elif "chunked" in fields.get("transfer-encoding", "").lower():
                self._state = "size"
            elif "content-length" in fields:
                self._left = int(fields["content-length"])
                self._state = "length"
                if self._left == 0:
                    self._end()
            else:
                self._state = "close"
            self.started.set()
            return True
        if state == "size":
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[: end + 2]
            self._left, self._state = size, "data" if size else "trailer"
            return True
        if state == "data":  # one chunk of the framing is one write of the app
            if len(buffer) < self._left + 2:
                return False
            self._emit(self._left)
            del buffer[:2]
            self._state = "size"
            return True
        if state == "trailer":
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            del buffer[: end + 2]
            if end == 0:
                self._end()
            return True
        if state == "length":
            n = min(len(buffer), self._left)
            self._emit(n)
            self._left -= n
            if self._left == 0:
                self._end()
            return False
        if state == "close":
            self._emit(len(buffer))
            return False
        if state == "upgraded" and self.upgraded is not None and buffer:
            data = bytes(buffer)
            buffer.clear()
            self.upgraded(data)
        return False


class _Transport(asyncio.Transport):
    """One in-memory connection: what the server writes goes to a reader, what the client
    sends is delivered to the protocol on the next loop iteration (as a socket would)."""

    def __init__(self, runner: web.AppRunner, host: str, deliver: Callable[[bytes], None]):
        super().__init__()
        server = runner.server
        assert server is not None  # the client checked that it started
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._closing = False
        self._extra = {"peername": CLIENT_ADDRESS, "sockname": (host, 80)}
        self.on_close: Callable[[], None] = lambda: None
        self.protocol = server()
        self.protocol.connection_made(self)

    # -- the server's side (asyncio's transport API) ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._deliver(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """The server closes the connection."""
        self._lose()

    def abort(self) -> None:
        self._lose()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    # -- the client's side --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes from the client: the protocol receives them as from a socket."""
        if not self._closing:
            self._loop.call_soon(self._receive, data)

    def _receive(self, data: bytes) -> None:
        if not self._closing:
            self.protocol.data_received(data)

    def disconnect(self) -> None:
        """The client goes away: the next write of the app fails, as on a closed socket."""
        self._lose()

    def _lose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self.protocol.connection_lost, None)
        self.on_close()


def _request_bytes(
    method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, host: str
) -> bytes:
    names = {name.lower() for name, _ in headers}
    lines = [f"{method.upper()} {path}{'?' + query if query else ''} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class AiohttpClient(InMemoryRequests):
    """Drive an aiohttp ``web.Application`` in memory: plain requests, streams read as they
    are written, and WebSockets; the methods and readers are :class:`WatchClient`'s.

    Use it as an async context manager (or call :meth:`start` and :meth:`aclose`): entering
    runs the application's startup (``on_startup``, ``cleanup_ctx``: the hubs of
    ``watchroutes.adapters.aiohttp.setup``), leaving its shutdown and cleanup, which end the
    hubs' streams with their final bookmarks as a deployment's shutdown does. ``runner_kwargs``
    go to ``web.AppRunner`` (``handler_cancellation``, ``max_line_size``, ...).
    """

    __test__ = False

    def __init__(
        self, app: web.Application, *, host: str = "testserver", **runner_kwargs: Any
    ) -> None:
        self.app = app
        self.host = host
        runner_kwargs.setdefault("shutdown_timeout", 10.0)
        self._runner = web.AppRunner(app, **runner_kwargs)
        self._started = False

    async def start(self) -> None:
        """Run the application's startup (once)."""
        if not self._started:
            await self._runner.setup()
            self._started = True

    async def aclose(self) -> None:
        """Run the application's shutdown and cleanup (ends open streams)."""
        if self._started:
            self._started = False
            await self._runner.cleanup()

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the client is not started: use `async with AiohttpClient(app)`")

    async def __aenter__(self) -> AiohttpClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> AsyncIterator[StreamResponse]:
        """Open a request and yield once its headers arrive; leaving the block disconnects."""
        items = header_items(headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            items = [("Content-Type", "application/json"), *items]
        self._check_started()
        path, query = target(path, params)
        reader = _ResponseReader(method)
        transport = _Transport(self._runner, self.host, reader.feed)
        transport.on_close = reader.eof
        disconnect = anyio.Event()
        transport.send(_request_bytes(method, path, query, items, body, self.host))
        async with anyio.create_task_group() as tg, reader.receiver:
            await reader.started.wait()
            if not reader.status:
                raise RuntimeError("the app closed the connection without a response")
            response = StreamResponse(
                status=reader.status,
                headers=dict(reader.headers),
                _chunks=reader.receiver,
                _disconnect=disconnect,
            )

            async def hang_up() -> None:
                await disconnect.wait()
                transport.disconnect()

            tg.start_soon(hang_up)
            try:
                yield response
            finally:
                transport.disconnect()  # also closes a connection whose response ended
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def websocket(
        self,
        path: str,
        *,
        params: Params = None,
        headers: Headers = None,
        subprotocols: tuple[str, ...] | list[str] = ("watchroutes.v1",),
    ) -> AsyncIterator[AiohttpWebSocket]:
        """Open a WebSocket and yield once the app accepted it; leaving the block closes it.

        Raises :class:`WebSocketClosed` when the app refuses the handshake (code 1006, the
        reason naming the HTTP status and body).
        """
        self._check_started()
        path, query = target(path, params)
        key = base64.b64encode(os.urandom(16)).decode()
        items = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if subprotocols:
            items.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
        given = header_items(headers)
        replaced = {name.lower() for name, _ in given}
        items = [(name, value) for name, value in items if name.lower() not in replaced] + given
        reader = _ResponseReader("GET")
        transport = _Transport(self._runner, self.host, reader.feed)
        transport.on_close = reader.eof
        transport.send(_request_bytes("GET", path, query, items, b"", self.host))
        with reader.receiver, reader.sender:  # the body's streams serve a refusal only
            await reader.started.wait()
            if reader.status != 101:
                body = b"".join([chunk async for chunk in reader.receiver])
                transport.disconnect()
                text = body.decode("utf-8", "replace")[:500]
                raise WebSocketClosed(1006, f"HTTP {reader.status}: {text}".rstrip(": "))
        socket = AiohttpWebSocket(transport, dict(reader.headers).get("sec-websocket-protocol"))
        reader.upgraded = socket._feed
        transport.on_close = socket._lost
        reader.feed(b"")  # frames that came with the handshake's answer
        try:
            yield socket
        finally:
            if not socket.finished.is_set():
                await socket.close()
                with anyio.move_on_after(5):
                    await socket.finished.wait()
            transport.disconnect()
            socket._dispose()


# WebSocket opcodes (RFC 6455 §5.2)
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked frame (a client must mask, RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class AiohttpWebSocket:
    """The client end of an in-memory WebSocket to an aiohttp app; the methods are
    :class:`TestWebSocket`'s. Pings are answered; a close from the server is answered and
    ends the messages (``receive*`` raise :class:`WebSocketClosed` once all were read)."""

    __test__ = False

    def __init__(self, transport: _Transport, subprotocol: str | None) -> None:
        self._transport = transport
        self.subprotocol = subprotocol
        self.was_accepted = True
        self.close_code: int | None = None
        self.close_reason = ""
        self.finished = anyio.Event()
        self._send_inbound, self._inbound = anyio.create_memory_object_stream[str | bytes](math.inf)
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._close_sent = False

    # -- frames from the server ---------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while (frame := self._next_frame()) is not None:
            self._on_frame(*frame)

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        n, start = second & 0x7F, 2
        if n == 126:
            if len(buffer) < 4:
                return None
            (n,), start = struct.unpack("!H", buffer[2:4]), 4
        elif n == 127:
            if len(buffer) < 10:
                return None
            (n,), start = struct.unpack("!Q", buffer[2:10]), 10
        if second & 0x80:  # a server must not mask, but read it if it does
            mask, start = bytes(buffer[start : start + 4]), start + 4
        else:
            mask = b""
        if len(buffer) < start + n:
            return None
        payload = bytes(buffer[start : start + n])
        del buffer[: start + n]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._transport.send(_client_frame(_PONG, payload))
        elif opcode == _CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._closed(code, payload[2:].decode("utf-8", "replace"))
            if not self._close_sent:  # answer the close (RFC 6455 §5.5.1)
                self._close_sent = True
                self._transport.send(_client_frame(_CLOSE, payload[:2]))
        elif opcode in (_TEXT, _BINARY, _CONTINUATION):
            if opcode != _CONTINUATION:
                self._fragment_opcode = opcode
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments.clear()
                text = self._fragment_opcode == _TEXT
                self._send_inbound.send_nowait(message.decode() if text else message)

    def _closed(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._send_inbound.close()
        self.finished.set()

    def _lost(self) -> None:
        """The connection closed (after the closing handshake, or without one: 1006)."""
        self._closed(1006, "")

    def _dispose(self) -> None:
        self._send_inbound.close()
        self._inbound.close()

    # -- the test's side ----------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self._close_sent or self.finished.is_set():
            raise WebSocketClosed(self.close_code or 1006, self.close_reason)
        self._transport.send(_client_frame(opcode, payload))

    async def send_text(self, text: str) -> None:
        self._send_frame(_TEXT, text.encode())

    async def send_bytes(self, data: bytes) -> None:
        self._send_frame(_BINARY, data)

    async def send_json(self, value: Any) -> None:
        await self.send_text(json.dumps(value))

    async def receive(self) -> str | bytes:
        """The next message the server sent."""
        try:
            return await self._inbound.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise WebSocketClosed(self.close_code or 1006, self.close_reason) from None

    async def receive_json(self) -> Any:
        return json.loads(await self.receive())

    async def take(self, n: int) -> list[Any]:
        """The next ``n`` messages, decoded."""
        return [await self.receive_json() for _ in range(n)]

    async def wait_closed(self) -> tuple[int, str]:
        """Wait for the server to close; every message it sent before stays readable."""
        await self.finished.wait()
        return self.close_code or 1006, self.close_reason

    async def close(self, code: int = 1000) -> None:
        """Start the closing handshake from the client's side."""
        if not self._close_sent and not self.finished.is_set():
            self._close_sent = True
            self._transport.send(_client_frame(_CLOSE, struct.pack("!H", code)))
