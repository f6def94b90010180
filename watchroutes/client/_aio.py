"""The async watch: :class:`WatchCore` driven over an ``httpx.AsyncClient``."""

from __future__ import annotations

import collections
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from types import TracebackType

import anyio

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("watchroutes.client needs httpx: pip install 'watchroutes[client]'") from exc

from typing import Self

from ._backoff import Backoff
from ._events import WatchEvent
from ._protocol import (
    DEFAULT_HEARTBEAT,
    DEFAULT_POLL_TIMEOUT,
    MAX_ERROR_BODY,
    REFRESH,
    Outcome,
    RequestSpec,
    Transport,
    WatchCore,
    WatchStatistics,
)

__all__ = ["AsyncTokenRefresh", "Watch", "watch"]

#: Called on a 401 for a new bearer token (``None``: there is none); may be a coroutine.
AsyncTokenRefresh = Callable[[], "str | Awaitable[str | None] | None"]
#: Connecting, writing and waiting for a connection from the pool (seconds).
CONNECT_TIMEOUT = 10.0


def watch(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    transport: Transport | str = Transport.SSE,
    resource_version: str | None = None,
    send_initial_events: bool | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    token_refresh: AsyncTokenRefresh | None = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    read_timeout: float | None = None,
    poll_timeout: int = DEFAULT_POLL_TIMEOUT,
    limit: int | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Watch:
    """Watch a route of protocol.md §3 and yield its events for as long as you iterate.

    ``transport`` is ``"sse"`` (default), ``"jsonlines"`` or ``"longpoll"``. Without
    ``resource_version`` the watch starts with the current state (``ADDED`` events, then the
    bookmark whose ``initial_events_end`` is true); with one it starts after it
    (``send_initial_events=True`` adds the state anyway). Reconnects resume from the last rv;
    a ``RESET`` event means: drop what you hold, the whole state follows. ``client`` is yours
    to configure and close (base URL, auth, proxies, an in-memory transport); without one the
    watch makes its own. ``params`` adds query parameters (``labelSelector``, ...);
    ``heartbeat`` is the server's interval, from which the read timeout is derived
    (``2 * heartbeat + 5`` unless given). ``clock``, ``sleep`` and ``backoff`` (with its
    ``random``) are injectable for tests. Use it as ``async with watch(url) as events:``
    so that the connection is closed when you stop.
    """
    core = WatchCore(
        url,
        transport=transport,
        resource_version=resource_version,
        send_initial_events=send_initial_events,
        params=params,
        headers=headers,
        token=token,
        can_refresh=token_refresh is not None,
        heartbeat=heartbeat,
        read_timeout=read_timeout,
        poll_timeout=poll_timeout,
        limit=limit,
        backoff=backoff,
        clock=clock,
    )
    return Watch(core, client, token_refresh, sleep)


class Watch:
    """An async iterator of :class:`WatchEvent` that reconnects and resumes on its own.

    It raises :class:`StatusError` (or :class:`UnauthorizedError`) for a refusal no retry can
    fix and :class:`ProtocolError` for an answer that is not a watch; everything else is
    retried with backoff.
    """

    def __init__(
        self,
        core: WatchCore,
        client: httpx.AsyncClient | None,
        token_refresh: AsyncTokenRefresh | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._core = core
        self._client = client
        self._token_refresh = token_refresh
        self._sleep = sleep
        # Events travel in batches (those of one chunk): one async step per chunk, not per
        # event, through the generators.
        self._batches = self._run()
        self._pending: collections.deque[WatchEvent] = collections.deque()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        pending = self._pending
        while not pending:
            pending.extend(await self._batches.__anext__())
        return pending.popleft()

    async def batches(self) -> AsyncGenerator[list[WatchEvent], None]:
        """The events as they arrive, a list at a time (those of one read)."""
        if self._pending:
            batch = list(self._pending)
            self._pending.clear()
            yield batch
        async for batch in self._batches:
            yield batch

    async def aclose(self) -> None:
        """Close the connection (and the client, when the watch made it)."""
        await self._batches.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def resource_version(self) -> str | None:
        """Where a reconnect would resume."""
        return self._core.rv

    def statistics(self) -> WatchStatistics:
        return self._core.statistics()

    async def _run(self) -> AsyncGenerator[list[WatchEvent], None]:
        core = self._core
        client = self._client
        owned = client is None
        if client is None:
            client = httpx.AsyncClient()
        try:
            while True:
                spec = core.request()
                result: list[Outcome] = []
                if core.transport is Transport.WEBSOCKET:
                    from ._websocket import stream_async

                    attempt = stream_async(core, spec, result)
                else:
                    attempt = _attempt(core, client, spec, result)
                async with contextlib.aclosing(attempt) as batches:
                    async for batch in batches:
                        yield batch
                outcome = result[0]
                pending = core.take_pending()
                if pending:
                    yield pending
                if outcome is REFRESH:
                    assert self._token_refresh is not None
                    token = self._token_refresh()
                    if inspect.isawaitable(token):
                        token = await token
                    core.refreshed(token)
                elif outcome > 0:
                    await self._sleep(outcome)
        finally:
            if owned:
                # Also when cancelled (an informer stopping): its sockets must close, not leak.
                with anyio.CancelScope(shield=True):
                    await client.aclose()


async def _attempt(
    core: WatchCore, client: httpx.AsyncClient, spec: RequestSpec, outcome: list[Outcome]
) -> AsyncGenerator[list[WatchEvent], None]:
    """The events of one HTTP request; appends what to do next to ``outcome``."""
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=spec.read_timeout)
    try:
        async with client.stream(
            "GET", spec.url, params=spec.params, headers=spec.headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                body = await _head(response)
                retry_after = response.headers.get("retry-after")
                outcome.append(core.refused(response.status_code, retry_after, body))
                return
            core.opened(response.headers.get("content-type", ""))
            if core.transport is Transport.LONG_POLL:
                batch = core.answer(await response.aread())
                if batch:
                    yield batch
                outcome.append(0.0)
                return
            async for chunk in response.aiter_bytes():
                batch = core.feed(chunk)
                if batch:
                    yield batch
                if core.finished:
                    break
            outcome.append(core.ended())
    except httpx.TransportError as exc:
        outcome.append(core.failed(exc))


async def _head(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return bytes(body[:MAX_ERROR_BODY])
