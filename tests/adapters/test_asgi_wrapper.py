"""The ASGI wrapper around a handler that refuses lifespan and WebSocket scopes (Django's
``asgi()``): a write the transport takes at once needs no timer; one that waits is let go
after the hubs' write timeout, as the exception the handler ends a response with."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from watchroutes import Hub
from watchroutes.adapters import asgi_wrapper

pytestmark = pytest.mark.anyio


class Aborted(Exception):
    """The handler's "the client is gone" (Django's ``RequestAborted``)."""


async def no_websocket(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not a WebSocket")


def wrap(hub: Hub, sent: list[Any]) -> tuple[Any, list[str]]:
    """An application that writes a head and two body chunks, and what became of it."""
    outcome: list[str] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"hello"
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await send({"type": "http.response.body", "body": b"b"})
        except Aborted:
            outcome.append("aborted")
        else:
            outcome.append("done")

    app = asgi_wrapper(application, [hub], websocket=no_websocket, max_body=1024, aborted=Aborted)
    return app, outcome


async def run(app: Any, send: Any) -> None:
    messages = [{"type": "http.request", "body": b"hello", "more_body": False}]

    async def receive() -> Any:
        return messages.pop(0)

    scope = {"type": "http", "headers": [(b"content-length", b"5")]}
    await app(scope, receive, send)


async def test_writes_that_complete_at_once_or_after_waiting_go_through(
    anyio_backend: str,
) -> None:
    sent: list[Any] = []
    app, outcome = wrap(Hub(write_timeout=60.0), sent)

    async def send(message: Any) -> Any:
        if message.get("body") == b"a":  # this one waits (a paused transport, say)
            await anyio.sleep(0.01)
            await anyio.lowlevel.checkpoint()
        sent.append(message)

    await run(app, send)
    assert outcome == ["done"]
    assert [m.get("body") for m in sent] == [None, b"a", b"b"]


async def test_a_write_that_waits_past_the_write_timeout_aborts_the_response(
    anyio_backend: str,
) -> None:
    sent: list[Any] = []
    app, outcome = wrap(Hub(write_timeout=0.05), sent)
    never = anyio.Event()

    async def send(message: Any) -> None:
        if message.get("body") == b"a":  # the peer stopped reading
            await never.wait()
        sent.append(message)

    with anyio.fail_after(10):  # (a hang would fail here, not block the run)
        await run(app, send)
    assert outcome == ["aborted"]
    assert [m.get("body") for m in sent] == [None]


async def test_an_error_from_the_write_reaches_the_application(anyio_backend: str) -> None:
    app, _ = wrap(Hub(), [])

    async def send(message: Any) -> None:
        raise OSError("the client left")

    with pytest.raises(OSError, match="the client left"):
        await run(app, send)
