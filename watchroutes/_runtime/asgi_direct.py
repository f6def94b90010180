"""The server's half of the ASGI direct-write extension (``DIRECT_EXTENSION``), written once.

An ASGI server that offers a response's connection to the direct write path puts an
:class:`AsgiDirect` (a subclass for its own connection) in ``scope["extensions"]``, hands the
app :meth:`AsgiDirect.send` instead of its own ``send``, and runs the app with
:func:`run_app`. The rules every such server must keep live here:

* **Bodies reach the server unchanged.** The app names each body before it sends it
  (``pushing``). The path opens once a non-empty body arrives as that very object, and shuts
  for good when one arrives as any other object or the response carries a
  ``Content-Encoding``: a middleware that compresses or rewrites bodies keeps the watch on the
  ASGI path. One that carries bodies through another task is seen too: the server has not
  written the last body named yet, so the path waits.
* **The hand-over.** Once open, the app may hand the rest of the response over (``detach``):
  it returns, its middleware's frames are freed, and :func:`run_app` runs the watch in the
  same task, writing with the server's own ``send``. What the middleware sends after the app
  returned is dropped (the response belongs to the watch).
* **A lost connection** is reported by the server (``lost()``), so the app needs no task
  waiting on ``receive``.

Used by ``watchroutes.adapters.uvicorn``'s protocols and by ``watchroutes.testing``'s
in-memory ASGI client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .stream import DIRECT_EXTENSION

__all__ = ["AsgiDirect", "run_app"]

Handed = tuple[Callable[[], Awaitable[None]], Callable[[], None]]


class AsgiDirect:
    """One response's connection on the direct write path, as an ASGI server offers it (the
    adapter contract's ``AsgiDirectWriter``). A server subclasses it with
    :meth:`connected` and :meth:`write` for its own connection, and gives it the ``send``
    that writes this response."""

    __slots__ = ("_detached", "_lost", "_open", "_pushed", "_send", "_shut", "_written")

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self._pushed: object = None
        self._written: object = None
        self._open = False
        self._shut = False
        self._detached: Handed | None = None
        self._lost: Callable[[], None] | None = None

    # -- for the server --------------------------------------------------------------------------

    def connected(self) -> bool:
        """The response has started and not ended, the peer is there, and the transport is
        under its high-water mark (the server's own state)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Frame ``data`` as the body's next bytes and hand it to the transport, now."""
        raise NotImplementedError

    def lost(self) -> None:
        """The server lost the connection: tell the watch (once)."""
        callback = self._lost
        if callback is not None:
            self._lost = None
            callback()

    @property
    def handed_over(self) -> Handed | None:
        """What the app handed over (``run``, ``discard``), if it did."""
        return self._detached

    async def send(self, message: Any) -> None:
        """The ``send`` the app gets: the server's, watching what passes through."""
        if self._detached is not None:  # the app returned; its middleware's leftovers
            return
        await self._send(message)
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body", b"")
            self._written = body
            if body and not self._shut:
                if body is self._pushed:
                    self._open = True
                else:
                    self._open = False
                    self._shut = True
        elif kind == "http.response.start":
            for name, _ in message.get("headers", ()):
                if name.lower() == b"content-encoding":
                    self._shut = True

    # -- for the app (AsgiDirectWriter) ----------------------------------------------------------

    def pushing(self, body: bytes) -> None:
        self._pushed = body

    def writable(self) -> bool:
        return self._open and self._written is self._pushed and self.connected()

    def detach(self, run: Callable[[], Awaitable[None]], discard: Callable[[], None]) -> bool:
        if not (self._open and self._written is self._pushed) or self._detached is not None:
            return False
        self._detached = (run, discard)
        return True

    async def send_body(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self.disconnected():
            callback()
        else:
            self._lost = callback

    def disconnected(self) -> bool:
        """Whether the server already knows the peer is gone."""
        raise NotImplementedError


async def run_app(app: Any, scope: Any, receive: Any, send: Any) -> None:
    """``await app(scope, receive, send)``, then the watch the app handed over, if it did (in
    the same task: the server's wait for its requests covers it)."""
    try:
        await app(scope, receive, send)
    except BaseException:
        handed = _handed_over(scope)
        if handed is not None:
            handed[1]()  # the stream never runs: release it
        raise
    handed = _handed_over(scope)
    if handed is not None:
        await handed[0]()


def _handed_over(scope: Any) -> Handed | None:
    extensions = scope.get("extensions")
    direct = None if extensions is None else extensions.get(DIRECT_EXTENSION)
    return direct.handed_over if isinstance(direct, AsgiDirect) else None
