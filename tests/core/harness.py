"""A paired harness for the sans-IO core: publisher -> state -> session -> decoder, with the
clock in the test's hands. No test using it sleeps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from watchroutes._core.events import EventType
from watchroutes._core.params import parse_request
from watchroutes._core.registry import SlowConsumerPolicy
from watchroutes._core.session import WatchSession
from watchroutes._core.state import HubState, Opening, StateSource
from watchroutes._core.wire import Wire
from watchroutes._core.wire.jsonlines import JsonLinesWire
from watchroutes._core.wire.sse import SseWire
from watchroutes.testing import SSEMessage, SSEParser

START_US = 1_000_000


def order(name: str, region: str = "eu", phase: str = "new") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"region": region}},
        "status": {"phase": phase},
    }


@dataclass
class Core:
    """A HubState with a hand-driven clock."""

    now: float = 0.0
    buffer: int = 100
    retention: int = 10_000
    state: HubState = field(init=False)

    def __post_init__(self) -> None:
        self.state = HubState(now_us=START_US, retention_events=self.retention)
        self.state.add_resource("orders")

    def publish(self, etype: str, obj: dict[str, Any]) -> int:
        entry = self.state.append("orders", EventType(etype), obj, now=self.now, now_us=START_US)
        return entry.rv

    def open(
        self,
        query: dict[str, str] | None = None,
        *,
        sse: bool = True,
        last_event_id: str | None = None,
        key: str | None = None,
        heartbeat: float = 15.0,
        end_at: float | None = None,
        source: StateSource = StateSource.CACHE,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
    ) -> Watcher:
        params = dict(query or {})
        if not sse:
            params.setdefault("watch", "true")
        request = parse_request(
            list(params.items()),
            accept="text/event-stream" if sse else None,
            last_event_id=last_event_id,
            key=key,
        )
        opening = self.state.open_watch(
            "orders", request, source=source, buffer=self.buffer, policy=policy
        )
        wire: Wire = (
            SseWire("Order", "v1")
            if sse
            else JsonLinesWire("Order", "v1", bookmarks=request.allow_watch_bookmarks)
        )
        session = WatchSession(
            wire=wire,
            subscription=opening.subscription,
            now=self.now,
            snapshot_rv=opening.head,
            start_rv=opening.start_rv,
            initial=opening.initial,
            replay=opening.replay,
            reset=opening.reset,
            heartbeat=heartbeat,
            end_at=end_at,
        )
        return Watcher(self, session, opening, sse)


@dataclass
class Watcher:
    core: Core
    session: WatchSession
    opening: Opening
    sse: bool
    raw: bytearray = field(default_factory=bytearray)
    parser: SSEParser = field(default_factory=SSEParser)

    def __post_init__(self) -> None:
        self.raw += self.session.preamble()

    def pump(self) -> list[Any]:
        """Run steps until the session has nothing more to write now; decode what it wrote."""
        out = bytearray()
        while True:
            data = self.session.step(self.core.now, self.core.state.head)
            out += data
            if self.session.closed or not self.session.ready:
                break
        deadline = self.session.deadline()
        assert deadline is None or deadline > self.core.now, "the runtime would spin"
        self.raw += out
        return self.decode(bytes(out))

    def decode(self, data: bytes) -> list[Any]:
        if self.sse:
            return [_sse_item(m) for m in self.parser.feed(data)]
        return [json.loads(line) for line in data.split(b"\n") if line]


def _sse_item(message: SSEMessage) -> Any:
    if message.data is None:
        if message.id is not None:
            return ("id", message.id)
        if message.comments:
            return ("comment", message.comments[0])
        return ("retry", message.retry)
    envelope = json.loads(message.data)
    envelope["_id"] = message.id
    return envelope


def types(items: list[Any]) -> list[str]:
    return [i["type"] if isinstance(i, dict) else i[0] for i in items]
