"""Test support: in-memory clients for endless streams (ASGI and WSGI here; aiohttp in
``watchroutes.testing.aiohttp``, httpx transports in ``watchroutes.testing.httpx``), a fake
clock, an SSE parser.

The pytest plugin (``watchroutes.testing.plugin``, registered automatically) provides the
``fake_clock`` and ``watch_hub`` fixtures.
"""

from __future__ import annotations

from .._public import present_as_public as _present_as_public
from ._client import StreamResponse as StreamResponse
from ._client import TestResponse as TestResponse
from ._client import WatchClient as WatchClient
from ._clock import FakeClock as FakeClock
from ._sse import SSEMessage as SSEMessage
from ._sse import SSEParser as SSEParser
from ._websocket import TestWebSocket as TestWebSocket
from ._websocket import WebSocketClosed as WebSocketClosed
from ._wsgi import WSGIClient as WSGIClient
from ._wsgi import WSGIStream as WSGIStream

__all__ = (
    "FakeClock",
    "SSEMessage",
    "SSEParser",
    "StreamResponse",
    "TestResponse",
    "TestWebSocket",
    "WSGIClient",
    "WSGIStream",
    "WatchClient",
    "WebSocketClosed",
)


_present_as_public(globals())  # the names' __module__ is this public module
