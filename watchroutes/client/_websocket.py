"""The WebSocket transport (protocol.md §4): one connection, the subscription ``""`` of its URL.

On the ``websockets`` package, whose async client runs on asyncio only. The decisions are the
core's (:meth:`WatchCore.message`, :meth:`WatchCore.closed`); this module only moves messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from typing import Final

import anyio

try:
    from websockets.asyncio.client import connect as connect_async
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect as connect_sync
    from websockets.typing import Subprotocol
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("the WebSocket transport needs websockets: pip install websockets") from exc

from ._events import WatchEvent
from ._protocol import SUBPROTOCOL, Outcome, RequestSpec, WatchCore

__all__ = ["MAX_MESSAGE_BYTES", "stream_async", "stream_sync"]

#: The largest message accepted: an object of the server's maximum size (1 MiB, protocol.md §3.2)
#: in its envelope, with room to spare.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Connecting and the handshake (seconds).
OPEN_TIMEOUT: Final = 10.0
#: The closing handshake (seconds), after which the connection is dropped.
CLOSE_TIMEOUT: Final = 2.0
_PROTOCOLS: Final = [Subprotocol(SUBPROTOCOL)]


async def stream_async(
    core: WatchCore, spec: RequestSpec, outcome: list[Outcome]
) -> AsyncGenerator[list[WatchEvent], None]:
    """The events of one connection, a message at a time; appends what to do next to
    ``outcome``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("the WebSocket transport runs on asyncio only") from None
    try:
        socket = await connect_async(
            spec.url,
            subprotocols=_PROTOCOLS,
            additional_headers=spec.headers,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE_BYTES,
        )
    except InvalidStatus as exc:
        response = exc.response
        retry_after = response.headers.get("Retry-After")
        outcome.append(core.refused(response.status_code, retry_after, bytes(response.body or b"")))
        return
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        outcome.append(core.failed(exc))
        return
    try:
        core.opened_websocket(socket.subprotocol)
        while True:
            try:
                async with asyncio.timeout(spec.read_timeout):
                    data = await socket.recv()
            except TimeoutError:
                outcome.append(core.failed(TimeoutError("no message within the read timeout")))
                return
            batch = core.message(data)
            if batch:
                yield batch
            if core.finished:  # an ERROR of the subscription: close, then decide
                outcome.append(core.ended())
                return
    except ConnectionClosed as exc:
        frame = exc.rcvd
        outcome.append(core.closed(frame.code if frame else None, frame.reason if frame else ""))
    except OSError as exc:
        outcome.append(core.failed(exc))
    finally:
        # Also when cancelled (an informer stopping), which would interrupt websockets' own
        # closing handshake and leak the socket: close within a bound, then drop it.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await socket.close()
            socket.transport.abort()


def stream_sync(
    core: WatchCore, spec: RequestSpec, outcome: list[Outcome]
) -> Generator[WatchEvent, None, None]:
    """:func:`stream_async` for blocking code."""
    try:
        with connect_sync(
            spec.url,
            subprotocols=_PROTOCOLS,
            additional_headers=spec.headers,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE_BYTES,
        ) as socket:
            core.opened_websocket(socket.subprotocol)
            while True:
                try:
                    data = socket.recv(timeout=spec.read_timeout)
                except TimeoutError:
                    outcome.append(core.failed(TimeoutError("no message within the read timeout")))
                    return
                yield from core.message(data)
                if core.finished:
                    outcome.append(core.ended())
                    return
    except ConnectionClosed as exc:
        frame = exc.rcvd
        outcome.append(core.closed(frame.code if frame else None, frame.reason if frame else ""))
    except InvalidStatus as exc:
        response = exc.response
        retry_after = response.headers.get("Retry-After")
        outcome.append(core.refused(response.status_code, retry_after, bytes(response.body or b"")))
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        outcome.append(core.failed(exc))
