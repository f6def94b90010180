"""The blocking watch: the same :class:`WatchCore` over an ``httpx.Client``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Mapping
from types import TracebackType

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("watchroutes.client needs httpx: pip install 'watchroutes[client]'") from exc

from typing import Self

from ._aio import CONNECT_TIMEOUT
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

__all__ = ["SyncWatch", "TokenRefresh", "watch_sync"]

#: Called on a 401 for a new bearer token (``None``: there is none).
TokenRefresh = Callable[[], "str | None"]


def watch_sync(
    url: str,
    *,
    client: httpx.Client | None = None,
    transport: Transport | str = Transport.SSE,
    resource_version: str | None = None,
    send_initial_events: bool | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    token_refresh: TokenRefresh | None = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    read_timeout: float | None = None,
    poll_timeout: int = DEFAULT_POLL_TIMEOUT,
    limit: int | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncWatch:
    """:func:`watch` for blocking code: ``with watch_sync(url) as events: for e in events``."""
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
    return SyncWatch(core, client, token_refresh, sleep)


class SyncWatch:
    """An iterator of :class:`WatchEvent` that reconnects and resumes on its own."""

    def __init__(
        self,
        core: WatchCore,
        client: httpx.Client | None,
        token_refresh: TokenRefresh | None,
        sleep: Callable[[float], None],
    ) -> None:
        self._core = core
        self._client = client
        self._token_refresh = token_refresh
        self._sleep = sleep
        self._events = self._run()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def close(self) -> None:
        """Close the connection (and the client, when the watch made it)."""
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def resource_version(self) -> str | None:
        """Where a reconnect would resume."""
        return self._core.rv

    def statistics(self) -> WatchStatistics:
        return self._core.statistics()

    def _run(self) -> Generator[WatchEvent, None, None]:
        core = self._core
        client = self._client
        owned = client is None
        if client is None:
            client = httpx.Client()
        try:
            while True:
                spec = core.request()
                result: list[Outcome] = []
                if core.transport is Transport.WEBSOCKET:
                    from ._websocket import stream_sync

                    attempt = stream_sync(core, spec, result)
                else:
                    attempt = _attempt(core, client, spec, result)
                with contextlib.closing(attempt) as events:
                    yield from events
                outcome = result[0]
                yield from core.take_pending()
                if outcome is REFRESH:
                    assert self._token_refresh is not None
                    core.refreshed(self._token_refresh())
                elif outcome > 0:
                    self._sleep(outcome)
        finally:
            if owned:
                client.close()


def _attempt(
    core: WatchCore, client: httpx.Client, spec: RequestSpec, outcome: list[Outcome]
) -> Generator[WatchEvent, None, None]:
    """The events of one HTTP request; appends what to do next to ``outcome``."""
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=spec.read_timeout)
    try:
        with client.stream(
            "GET", spec.url, params=spec.params, headers=spec.headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                body = _head(response)
                retry_after = response.headers.get("retry-after")
                outcome.append(core.refused(response.status_code, retry_after, body))
                return
            core.opened(response.headers.get("content-type", ""))
            if core.transport is Transport.LONG_POLL:
                yield from core.answer(response.read())
                outcome.append(0.0)
                return
            for chunk in response.iter_bytes():
                yield from core.feed(chunk)
                if core.finished:
                    break
            outcome.append(core.ended())
    except httpx.TransportError as exc:
        outcome.append(core.failed(exc))


def _head(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return bytes(body[:MAX_ERROR_BODY])
