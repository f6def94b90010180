"""An in-memory WebSocket to an ASGI app, for :meth:`WatchClient.websocket`."""

from __future__ import annotations

import json
import math
from typing import Any

import anyio

__all__ = ["TestWebSocket", "WebSocketClosed", "websocket_scope"]


class WebSocketClosed(Exception):
    """The server closed the socket (or refused the handshake): ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}" if reason else f"closed {code}")
        self.code = code
        self.reason = reason


def websocket_scope(
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    subprotocols: list[str],
    server: tuple[str, int],
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "subprotocols": subprotocols,
        "client": ("127.0.0.1", 50000),
        "server": server,
        "state": {},
    }


class TestWebSocket:
    """The client end of an in-memory WebSocket. Messages the server sent wait in order;
    ``receive*`` raise :class:`WebSocketClosed` once the server has closed and all of them
    were read."""

    __test__ = False

    def __init__(self) -> None:
        self._inbound_send, self._inbound = anyio.create_memory_object_stream[dict[str, Any]](
            math.inf
        )
        self._outbound_send, self._outbound = anyio.create_memory_object_stream[str | bytes](
            math.inf
        )
        self._connected = False
        self.accepted = anyio.Event()
        self.subprotocol: str | None = None
        self.was_accepted = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.finished = anyio.Event()

    # -- the app's side (ASGI) ----------------------------------------------------------------

    async def _receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        try:
            return await self._inbound.receive()
        except anyio.EndOfStream:
            return {"type": "websocket.disconnect", "code": 1006}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.close_code is not None:
            raise OSError("the WebSocket is closed")
        if kind == "websocket.accept":
            self.subprotocol = message.get("subprotocol")
            self.was_accepted = True
            self.accepted.set()
        elif kind == "websocket.send":
            text = message.get("text")
            await self._outbound_send.send(text if text is not None else message["bytes"])
        elif kind == "websocket.close":
            self.close_code = int(message.get("code", 1000))
            self.close_reason = str(message.get("reason") or "")
            self._end()

    async def _run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self._receive, self._send)
        finally:
            if self.close_code is None:
                self.close_code = 1006  # the app returned without closing
            self._end()

    def _end(self) -> None:
        self.accepted.set()
        self._outbound_send.close()
        self.finished.set()

    def _dispose(self) -> None:
        for stream in (self._inbound_send, self._inbound, self._outbound_send, self._outbound):
            stream.close()

    # -- the test's side ----------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        await self._inbound_send.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._inbound_send.send({"type": "websocket.receive", "bytes": data})

    async def send_json(self, value: Any) -> None:
        await self.send_text(json.dumps(value))

    async def receive(self) -> str | bytes:
        """The next message the server sent."""
        try:
            return await self._outbound.receive()
        except anyio.EndOfStream:
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
        """Close from the client side (the app receives ``websocket.disconnect``)."""
        await self._inbound_send.send({"type": "websocket.disconnect", "code": code})
        self._inbound_send.close()
