"""Per-event visibility as a property (protocol.md §7): several principals, random objects and
random changes of ownership; each principal's stream, on every transport (SSE, JSON lines,
long poll, WebSocket), from the start and resumed from a random resourceVersion, is exactly
what it may see, with the ``ADDED``/``DELETED`` transitions, and nothing else.

The model is written out here from the contract (the predicate of the previous and of the new
object decide the type), independent of the library. ``test_the_property_catches_*`` checks
the checker: with visibility applied to the new object only (a mutant of the library's
transition), the same property fails.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from watchroutes import Access, AuthRequest, Hub, Principal
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.testing import WatchClient

PRINCIPALS = ("alice", "bob", "carol")
TOKENS = {f"t-{name}": name for name in PRINCIPALS}
NAMES = ("o-1", "o-2", "o-3", "o-4")
#: Each watch ends at an object of this prefix that its principal owns, created once the
#: watch is open (a marker: everything before it is what the watch was sent).
SENTINEL = "zz-"
TRANSPORTS = ("sse", "jsonlines", "longpoll", "websocket")


def authenticate(request: AuthRequest) -> Principal | None:
    name = TOKENS.get(request.bearer_token(query=True) or "")
    return None if name is None else Principal(name)


def can_see(principal: Principal, obj: Any) -> bool:
    return bool(obj["metadata"].get("labels", {}).get("owner") == principal.name)


def order(name: str, owner: str, phase: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"owner": owner}}, "status": {"phase": phase}}


# An operation: ("put", name, owner) creates or replaces; ("delete", name, "").
operations = st.lists(
    st.tuples(
        st.sampled_from(("put", "put", "put", "delete")),
        st.sampled_from(NAMES),
        st.sampled_from(PRINCIPALS),
    ),
    min_size=1,
    max_size=14,
)


def expected(
    log: list[tuple[int, str, Any, Any]], principal: str, after: int
) -> list[tuple[str, str, int, str | None]]:
    """What ``principal`` must receive of ``log`` after rv ``after``: (type, name, rv, owner
    of the object sent). A change is sent when the principal sees the new or the previous
    object: ADDED when it gains it, DELETED (the previous object) when it loses it."""
    out: list[tuple[str, str, int, str | None]] = []
    for rv, kind, prev, new in log:
        if rv <= after:
            continue
        was = prev is not None and prev["metadata"]["labels"]["owner"] == principal
        now = new is not None and new["metadata"]["labels"]["owner"] == principal
        name = (new or prev)["metadata"]["name"]
        if now:
            out.append(("ADDED" if not was else "MODIFIED", name, rv, principal))
        elif was:
            out.append(("DELETED", name, rv, principal))
        del kind
    return out


def sent(events: list[Any]) -> list[tuple[str, str, int, str | None]]:
    rows = []
    for e in events:
        meta = e["object"]["metadata"]
        rows.append(
            (e["type"], meta["name"], int(meta["resourceVersion"]), meta["labels"].get("owner"))
        )
    return rows


async def read_until_sentinel(next_event: Any, sentinel: str) -> list[Any]:
    out: list[Any] = []
    with anyio.fail_after(5):
        while True:
            event = await next_event()
            assert event is not None, "the stream ended before the sentinel"
            if event.get("type") == "BOOKMARK":
                continue
            if event["object"]["metadata"]["name"] == sentinel:
                return out
            out.append(event)


async def watch(
    client: WatchClient, transport: str, token: str, after: int, hub: Hub, principal: str
) -> list[Any]:
    """The principal's events after rv ``after`` on ``transport``; the sentinel (an object
    the principal owns, created once the watch is open) marks their end."""
    orders = hub.resources["orders"]
    query = {"resourceVersion": str(after), "access_token": token}
    sentinel = f"{SENTINEL}{hub.head}"

    def publish_sentinel() -> None:
        orders.create(order(sentinel, principal, 0))

    if transport == "longpoll":
        params = {**query, "watch": "true", "feed": "longpoll", "timeoutSeconds": "0"}
        answer = await client.get("/orders", params=params)
        assert answer.status == 200, answer.body
        return list(answer.json()["events"])
    if transport == "websocket":
        async with client.websocket(
            "/ws", subprotocols=("watchroutes.v1", f"bearer.{token}")
        ) as ws:
            await ws.send_json({"op": "watch", "id": "w", "resourceVersion": str(after)})
            publish_sentinel()

            async def next_ws() -> Any:
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == "w":
                        return message

            return await read_until_sentinel(next_ws, sentinel)
    headers = {"accept": "text/event-stream"} if transport == "sse" else {}
    params = query if transport == "sse" else {**query, "watch": "true"}
    async with client.stream("GET", "/orders", params=params, headers=headers) as stream:
        assert stream.status == 200
        publish_sentinel()
        return await read_until_sentinel(stream.next_event, sentinel)


async def scenario(ops: list[tuple[str, str, str]], resume_at: float) -> None:
    hub = Hub(heartbeat=30, access=Access(authenticate, can_see=can_see))
    orders = hub.resource("orders", kind="Order")
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            WebSocketRoute("/ws", websocket_endpoint(orders)),
        ]
    )
    client = WatchClient(app)
    async with hub:
        log: list[tuple[int, str, Any, Any]] = []
        current: dict[str, Any] = {}
        start = hub.head
        for phase, (kind, name, owner) in enumerate(ops):
            prev = current.get(name)
            if kind == "delete":
                if prev is None:
                    continue
                gone = orders.delete(name)
                log.append((int(gone["metadata"]["resourceVersion"]), kind, prev, None))
                del current[name]
            else:
                body = order(name, owner, phase)
                stored = orders.create(body) if prev is None else orders.replace(body)
                log.append((int(stored["metadata"]["resourceVersion"]), kind, prev, stored))
                current[name] = stored
        rvs = [start] + [rv for rv, *_ in log]
        resume = rvs[int(resume_at * (len(rvs) - 1))]
        for principal in PRINCIPALS:
            token = f"t-{principal}"
            visible = sorted(
                n for n, o in current.items() if o["metadata"]["labels"]["owner"] == principal
            )
            listed = (await client.get("/orders", params={"access_token": token})).json()
            assert sorted(i["metadata"]["name"] for i in listed["items"]) == visible
            for after in (start, resume):
                want = expected(log, principal, after)
                for transport in TRANSPORTS:
                    got = sent(await watch(client, transport, token, after, hub, principal))
                    got = [row for row in got if not row[1].startswith(SENTINEL)]
                    assert got == want, (principal, transport, after, ops)


def run(ops: list[tuple[str, str, str]], resume_at: float) -> None:
    anyio.run(scenario, ops, resume_at)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations, resume_at=st.floats(0, 1))
def test_each_principal_sees_exactly_its_own_changes(
    ops: list[tuple[str, str, str]], resume_at: float
) -> None:
    run(ops, resume_at)


@pytest.fixture
def new_object_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant of the library: the visibility predicate applied to the new object only (a
    change that makes an object invisible is dropped instead of becoming DELETED)."""
    from watchroutes._core import registry, state

    original = registry.transition

    def mutant(flt: Any, entry: Any) -> Any:
        if flt.visible is None:
            return original(flt, entry)
        return entry.type if flt.visible(entry.object) else None

    monkeypatch.setattr(registry, "transition", mutant)
    monkeypatch.setattr(state, "transition", mutant)


@pytest.mark.usefixtures("new_object_only")
def test_the_property_catches_a_predicate_on_the_new_object_only() -> None:
    """The same property fails on the mutant (and the fixture restores the library)."""
    with pytest.raises(AssertionError, match="'DELETED', 'o-1'"):
        run([("put", "o-1", "alice"), ("put", "o-1", "bob")], 0.0)
    failing = settings(max_examples=50, deadline=None, database=None)(
        given(ops=operations, resume_at=st.floats(0, 1))(run)
    )
    with pytest.raises(AssertionError):
        failing()


def test_the_model_itself() -> None:
    """The model on the case of the mutant: alice loses o-1 to bob."""
    a, b = order("o-1", "alice", 0), order("o-1", "bob", 1)
    log = [(1, "put", None, a), (2, "put", a, b)]
    assert expected(log, "alice", 0) == [
        ("ADDED", "o-1", 1, "alice"),
        ("DELETED", "o-1", 2, "alice"),
    ]
    assert expected(log, "bob", 0) == [("ADDED", "o-1", 2, "bob")]
    assert expected(log, "carol", 0) == []
    assert expected(log, "bob", 1) == [("ADDED", "o-1", 2, "bob")]
