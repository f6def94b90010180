"""Hubs' lifecycle and graceful shutdown under uvicorn run from Python (protocol.md §5.6).

This ``Server`` starts its hubs before serving (a hub on a shared log loads it and starts its
follower), ends the hubs' streams (final bookmark, then the end; clients resume elsewhere) as
soon as the exit signal arrives, before uvicorn starts waiting for connections, and can print
a readiness line (``announce=True``). A hub entered in the app's lifespan does the same on its
own under plain ``uvicorn app:app`` (it chains the exit signals' handlers while it runs, see
``watchroutes._runtime.signals``); both together are fine, since beginning a shutdown twice is
harmless::

    config = uvicorn.Config(app, host="127.0.0.1", port=8000)
    Server(config, hubs=[hub]).run()
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterable

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "watchroutes.adapters.uvicorn needs uvicorn: pip install 'watchroutes[server]'"
    ) from exc

from . import Hub

__all__ = ["Server"]


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` that shuts its hubs down first, and can announce readiness."""

    def __init__(
        self, config: uvicorn.Config, *, hubs: Iterable[Hub], announce: bool = False
    ) -> None:
        super().__init__(config)
        self.hubs = list(hubs)
        self.announce = announce

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the first listening socket (the real port for port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                if sock.family == socket.AF_INET6:
                    host = f"[{host}]"
                return f"http://{host}:{port}"
        return f"http://{self.config.host}:{self.config.port}"

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for hub in self.hubs:
                await stack.enter_async_context(hub)
            await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        for hub in self.hubs:
            hub.bind()
        await super().startup(sockets)
        if self.started and self.announce:
            print(f"ready {self.url}", flush=True)
            sys.stdout.flush()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for hub in self.hubs:
            await hub.aclose()
        await super().shutdown(sockets)
