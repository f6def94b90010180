"""Long poll (protocol.md §3.6): one request, one JSON answer, the same cursor as every stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.access import REVOKED
from .._core.errors import Forbidden
from .._core.events import Frame
from .._core.params import WatchRequest
from .._core.registry import CloseReason
from .guard import OPEN, Admission
from .meter import WatchMeter
from .reply import JSON_HEADERS, Reply

if TYPE_CHECKING:
    from .node import Node, ResourceSpec

__all__ = ["DEFAULT_LONGPOLL_SECONDS", "answer_longpoll"]

#: How long a long poll waits for a change when the client gives no ``timeoutSeconds``:
#: under the 60 s idle timeouts of common proxies.
DEFAULT_LONGPOLL_SECONDS = 30.0


def _body(frames: list[Frame], rv: int) -> bytes:
    events = b",".join(f.json() for f in frames)
    return b'{"events":[%s],"resourceVersion":"%d"}' % (events, rv)


async def answer_longpoll(
    hub: Node, res: ResourceSpec, parsed: WatchRequest, admission: Admission = OPEN
) -> Reply:
    import anyio

    clock = hub.clock
    await hub.sync(parsed)
    with hub.lock:
        admission.check(hub)  # revoked since it was let in?
        opening = hub.state.open_watch(
            res.name,
            parsed,
            source=res.source,
            buffer=hub.buffer,
            policy=res.slow_consumer,
            principal=admission.name,
        )
    sub = opening.subscription
    meter = WatchMeter(hub.metrics, clock, res.name, "longpoll", sub)
    reason = CloseReason.CLIENT
    try:
        if opening.initial is not None:
            frames = opening.initial
            if opening.needs_snapshot:
                frames = await hub.snapshot_frames(res, parsed)
            return _answer(meter, frames, opening.head)
        frames = opening.replay
        rv = opening.head
        if not frames:
            # timeoutSeconds=0 asks "what changed since rv?" without waiting
            timeout = parsed.timeout_seconds
            seconds = DEFAULT_LONGPOLL_SECONDS if timeout is None else float(timeout)
            deadline = clock.now() + min(seconds, hub.max_watch_seconds)
            expires_at = admission.expires_at(hub)  # never wait past the credentials
            if expires_at is not None and expires_at < deadline:
                deadline = expires_at
            event = anyio.Event()
            sub.waker = event.set
            while not len(sub) and sub.closed is None and clock.now() < deadline:
                await clock.wait(event, deadline)
                if event.is_set():
                    event = anyio.Event()
                    sub.waker = event.set
            with hub.lock:
                frames = sub.drain()
                position = sub.position(hub.state.head)  # never past where it stopped buffering
                rv = opening.head if position is None else position
                if sub.closed is CloseReason.SLOW:  # its queue was dropped: poll again from here
                    frames, rv = [], opening.head
                if sub.closed is CloseReason.REVOKED:
                    reason = CloseReason.REVOKED
                    raise Forbidden(REVOKED)
            if not frames:
                reason = CloseReason.TIMEOUT
        if len(frames) > parsed.limit:
            frames = frames[: parsed.limit]
            last = frames[-1].rv
            rv = last if last is not None else rv
        return _answer(meter, frames, rv)
    finally:
        with hub.lock:
            hub.state.close_watch(sub, reason)
        admission.release()
        meter.closed(reason.value)


def _answer(meter: WatchMeter, frames: list[Frame], rv: int) -> Reply:
    body = _body(frames, rv)
    meter.wrote(len(body), None)
    return Reply(200, list(JSON_HEADERS), body)
