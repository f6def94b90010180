"""Long poll (protocol.md §3.6): one request, one JSON answer, the same cursor as every stream.

The rules are :class:`~watchroutes._core.session.LongPollSession`'s; this drives it: register
the subscription, step the session under the hub's lock until it answers, sleeping until the
subscription wakes it or its deadline passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.params import WatchRequest
from .._core.registry import CloseReason
from .._core.session import DEFAULT_LONGPOLL_SECONDS, LongPollSession
from .guard import OPEN, Admission
from .meter import WatchMeter
from .reply import JSON_HEADERS, Reply

if TYPE_CHECKING:
    from .node import Node, ResourceSpec

__all__ = ["DEFAULT_LONGPOLL_SECONDS", "answer_longpoll"]


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
    poll: LongPollSession | None = None
    try:
        initial = opening.initial
        if initial is not None and opening.needs_snapshot:
            initial = await hub.snapshot_frames(res, parsed)
        poll = LongPollSession(
            subscription=sub,
            head=opening.head,
            now=clock.now(),
            limit=parsed.limit,
            initial=initial,
            replay=opening.replay,
            timeout_seconds=parsed.timeout_seconds,
            max_seconds=hub.max_watch_seconds,
            expires_at=admission.expires_at(hub),
        )
        event: anyio.Event | None = None
        while True:
            with hub.lock:
                answer = poll.step(clock.now(), hub.state.head)
                if answer is None and (event is None or event.is_set()):
                    # (under the lock that the step held: no wake-up falls in between)
                    event = anyio.Event()
                    sub.waker = hub.on_loop(event.set)
            if answer is not None:
                break
            assert event is not None
            await clock.wait(event, poll.deadline())
        body = answer.body()
        meter.wrote(len(body), None)
        return Reply(200, list(JSON_HEADERS), body)
    finally:
        reason = CloseReason.CLIENT if poll is None else poll.close_reason or CloseReason.CLIENT
        with hub.lock:
            hub.state.close_watch(sub, reason)
        admission.release()
        meter.closed(reason.value)
