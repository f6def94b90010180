"""One watch, without I/O: what to write next, and when it next needs attention.

The runtime owns the socket and the clock; this object owns the rules. The runtime loop is::

    write(session.preamble())
    while not session.closed:
        write(session.step(now(), hub.head))           # may be b""
        if not session.ready:
            wait until the subscription wakes or session.deadline() passes

Rules (protocol.md §3.2-3.4) and where they live:

* initial events, then the end-of-initial-events bookmark, then a replay from the log, then
  live frames: ``_prelude`` / the ``INITIAL`` phase;
* bookmarks never skip anything: a bookmark is written only after the subscription's buffer
  was drained in the same step, at the hub's head, through which every entry has been either
  queued for this watcher or filtered out; never during the initial events; never to a watcher
  closed as a slow consumer;
* heartbeats when nothing was written for a heartbeat interval;
* ``timeoutSeconds`` and shutdown: drain, a final bookmark when the subscription's position
  (the head when it stopped buffering, or now if it is still open) is past what the client
  holds, then the end.

Phases and their transitions are the table below; a failed session raises on every call.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from .access import CREDENTIALS_EXPIRED, REVOKED
from .errors import Forbidden, Status, Unauthorized, UsageError
from .events import Frame
from .registry import CloseReason, Subscription
from .wire import Wire

__all__ = ["DEFAULT_HEARTBEAT", "Phase", "WatchSession"]

#: Heartbeat and bookmark interval, seconds. Under nginx's and most load balancers' 60 s idle
#: timeouts with margin; the interval Mercure and sse-starlette use.
DEFAULT_HEARTBEAT: Final = 15.0
#: Frames of initial events / replay written per step, so a large snapshot is written in
#: bounded chunks and the runtime can interleave other work between them.
PRELUDE_BATCH: Final = 256


class Phase(enum.Enum):
    INITIAL = "initial"  # reset / initial events / end bookmark / replay
    LIVE = "live"  # frames from the subscription buffer, bookmarks, heartbeats
    CLOSED = "closed"  # ended; every step returns b""
    FAILED = "failed"  # the runtime misused the session; every call raises


_TRANSITIONS: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.INITIAL: frozenset({Phase.LIVE, Phase.CLOSED, Phase.FAILED}),
    Phase.LIVE: frozenset({Phase.CLOSED, Phase.FAILED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
    Phase.FAILED: frozenset(),
}


class WatchSession:
    """The sans-IO state of one watch stream."""

    def __init__(
        self,
        *,
        wire: Wire,
        subscription: Subscription,
        now: float,
        snapshot_rv: int,
        start_rv: int | None = None,
        initial: Sequence[Frame] | None = None,
        replay: Iterable[Frame] = (),
        reset: bool = False,
        heartbeat: float = DEFAULT_HEARTBEAT,
        end_at: float | None = None,
        expires_at: float | None = None,
    ) -> None:
        """``initial`` (possibly empty) sends the state and the end bookmark at
        ``snapshot_rv``; ``None`` sends no initial events and marks ``start_rv`` instead.
        """
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        self.wire = wire
        self.subscription = subscription
        self.heartbeat = heartbeat
        self.end_at = end_at
        #: When the principal's credentials expire (the runtime's clock): the watch ends then
        #: with a final bookmark and a 401 ``credentials expired``.
        self.expires_at = expires_at
        self.phase = Phase.INITIAL
        self.close_reason: CloseReason | None = None
        #: The newest rv the client holds (an id or bookmark it was sent).
        self.sent_rv: int | None = start_rv if initial is None else None
        self._last_write = now
        self._last_bookmark = now
        self._prelude = self._make_prelude(initial, snapshot_rv, start_rv, replay, reset)

    def _make_prelude(
        self,
        initial: Sequence[Frame] | None,
        snapshot_rv: int,
        start_rv: int | None,
        replay: Iterable[Frame],
        reset: bool,
    ) -> Iterator[tuple[bytes, int | None]]:
        wire = self.wire
        parts: list[Iterable[tuple[bytes, int | None]]] = []
        if reset:
            parts.append([(wire.reset(), None)])
        if initial is not None:
            parts.append((wire.frame(f), f.rv) for f in initial)
            parts.append([(wire.initial_end(snapshot_rv), snapshot_rv)])
        elif start_rv is not None:
            parts.append([(wire.start(start_rv), start_rv)])
        parts.append((wire.frame(f), f.rv) for f in replay)
        return itertools.chain.from_iterable(parts)

    # -- state table -------------------------------------------------------------------------

    def _goto(self, phase: Phase) -> None:
        if phase not in _TRANSITIONS[self.phase]:
            self.phase = Phase.FAILED
            raise UsageError(f"watch session cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    def _check(self) -> None:
        if self.phase is Phase.FAILED:
            raise UsageError("watch session failed earlier; it cannot be used")

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def ready(self) -> bool:
        """True when ``step`` has more to write right away (no need to wait)."""
        phase = self.phase
        if phase is Phase.LIVE:
            sub = self.subscription
            return sub.closed is not None or len(sub) > 0
        self._check()
        return phase is Phase.INITIAL

    def deadline(self) -> float | None:
        """When ``step`` must run again even if nothing is published (``None``: never).

        After a ``step(now)`` that left the session live and not ``ready``, this is always
        later than ``now``, so the runtime never spins.
        """
        if self.phase is not Phase.LIVE:
            self._check()
            return None
        last_write = self._last_write
        last_bookmark = self._last_bookmark
        due = (last_write if last_write < last_bookmark else last_bookmark) + self.heartbeat
        end_at = self.end_at
        if end_at is not None and end_at < due:
            due = end_at
        expires_at = self.expires_at
        return due if expires_at is None or due < expires_at else expires_at

    # -- inputs ------------------------------------------------------------------------------

    def preamble(self) -> bytes:
        self._check()
        return self.wire.preamble()

    def step(self, now: float, head: int) -> bytes:
        """The bytes to write now; ``head`` is the hub's applied rv at this instant."""
        phase = self.phase
        data = b""
        if phase is not Phase.LIVE:
            self._check()
            if phase is Phase.CLOSED:
                return b""
            out: list[bytes] = []
            if self._prelude_step(out, now):
                return self._flush(out, now)
            data = b"".join(out)  # the prelude's last batch; live from here on
        sub = self.subscription
        reason = sub.closed
        frames = sub.drain()
        if frames:  # the hot path: one shared encoding per frame, joined once
            encode = self.wire.frame
            body = encode(frames[0]) if len(frames) == 1 else b"".join(map(encode, frames))
            data = data + body if data else body
            last = frames[-1].rv
            if last is not None:
                self.sent_rv = last
        sent = self.sent_rv
        if reason is CloseReason.SLOW or reason is CloseReason.UNAVAILABLE:
            # no bookmark: a slow consumer resumes from its last event; after the shared log
            # was lost or replaced this node's head may belong to another epoch
            self._finish(reason)
            return self._wrote(data, now)
        expires_at = self.expires_at
        if reason is None and expires_at is not None and now >= expires_at:
            reason = CloseReason.EXPIRED
        if reason is not None or (self.end_at is not None and now >= self.end_at):
            # The closing bookmark claims only what this watch was served: the head at the
            # subscription's close, never a head read later (entries applied since were
            # never offered to it).
            through = sub.position(head)
            if through is not None and (sent is None or through > sent):
                data += self.wire.bookmark(through)
            if reason is CloseReason.EXPIRED:  # the client re-authenticates, then resumes
                data += self.wire.error(Unauthorized(CREDENTIALS_EXPIRED).status())
            elif reason is CloseReason.REVOKED:
                data += self.wire.error(Forbidden(REVOKED).status())
            self._finish(reason or CloseReason.TIMEOUT)
            return self._wrote(data, now)
        if now - self._last_bookmark >= self.heartbeat:
            self._last_bookmark = now  # checked now; the next check is an interval away
            if sent is None or head > sent:
                mark = self.wire.bookmark(head)
                if mark:
                    data += mark
                    self.sent_rv = head
        if not data and now - self._last_write >= self.heartbeat:
            self._last_write = now  # a format with no heartbeat must not be asked again now
            data = self.wire.heartbeat(head if sent is None else max(head, sent))
        return self._wrote(data, now)

    def deliver(self, frame: Frame, now: float) -> bytes | None:
        """The bytes of a live ``frame`` to write at once, when the subscription's buffer is
        empty and nothing else is due (no bookmark, heartbeat, end or expiry): the direct write
        path, which skips the buffer and the wake-up. ``None``: nothing was consumed; queue
        ``frame`` and let :meth:`step` send it.
        """
        if self.phase is not Phase.LIVE:
            return None
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return None
        rv = frame.rv
        if rv is not None:
            self.sent_rv = rv
        self._last_write = now
        return self.wire.frame(frame)

    def _wrote(self, data: bytes, now: float) -> bytes:
        if data:
            self._last_write = now
        return data

    def _prelude_step(self, out: list[bytes], now: float) -> bool:
        """Write a batch of the prelude; True while more of it remains."""
        if self.expires_at is not None and now >= self.expires_at:
            out.append(self.wire.error(Unauthorized(CREDENTIALS_EXPIRED).status()))
            self._finish(CloseReason.EXPIRED)  # no bookmark during the initial events
            return True
        if self.subscription.closed is CloseReason.REVOKED:  # stop sending state at once
            out.append(self.wire.error(Forbidden(REVOKED).status()))
            self._finish(CloseReason.REVOKED)
            return True
        if self.end_at is not None and now >= self.end_at:
            self._finish(CloseReason.TIMEOUT)  # no bookmark during the initial events
            return True
        sent = self.sent_rv
        for data, rv in itertools.islice(self._prelude, PRELUDE_BATCH):
            out.append(data)
            if rv is not None:
                sent = rv
        self.sent_rv = sent
        if len(out) == PRELUDE_BATCH:
            return True
        self._goto(Phase.LIVE)
        self._last_bookmark = now
        return False

    def _flush(self, out: list[bytes], now: float) -> bytes:
        if not out:
            return b""
        self._last_write = now
        return out[0] if len(out) == 1 else b"".join(out)

    def _finish(self, reason: CloseReason) -> None:
        self.close_reason = reason
        self._goto(Phase.CLOSED)

    def close(self, reason: CloseReason) -> None:
        """The runtime reports the end (peer gone, write failed); no more bytes follow."""
        self._check()
        if self.phase is not Phase.CLOSED:
            self._finish(reason)

    def fail(self, status: Status) -> bytes:
        """End the stream with an ERROR event (an error after the stream started)."""
        self._check()
        if self.phase is Phase.CLOSED:
            return b""
        self._finish(CloseReason.ERROR)
        return self.wire.error(status)
