"""WebSocket watches (protocol.md §4) through the Starlette adapter, in memory with a fake clock:
every rule, close code and limit, and no subscription or task left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from watchroutes import Forbidden, Hub, Resource, Unauthorized, WebSocketLimits
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.testing import FakeClock, TestWebSocket, WatchClient, WebSocketClosed

pytestmark = pytest.mark.anyio


def order(name: str, region: str = "eu") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": region}}}


class App:
    def __init__(self, *, buffer: int = 1000, retention_events: int = 100, **endpoint: Any) -> None:
        self.clock = FakeClock()
        self.hub = Hub(clock=self.clock, buffer=buffer, retention_events=retention_events)
        self.orders: Resource = self.hub.resource("orders", kind="Order")
        self.users = self.hub.resource("users", kind="User")
        endpoint.setdefault("resources", [self.users])  # its sockets may watch users too
        app = Starlette(
            routes=[
                Route("/orders", watch_endpoint(self.orders)),
                WebSocketRoute("/orders", websocket_endpoint(self.orders, **endpoint)),
                WebSocketRoute(
                    "/orders/{name}", websocket_endpoint(self.orders, key="name", **endpoint)
                ),
            ]
        )
        self.client = WatchClient(app)
        self.open = 0

    @asynccontextmanager
    async def ws(self, path: str = "/orders", **kwargs: Any) -> AsyncIterator[TestWebSocket]:
        self.open += 1
        try:
            async with self.client.websocket(path, **kwargs) as socket:
                yield socket
        finally:
            self.open -= 1
        await anyio.wait_all_tasks_blocked()
        if not self.open:
            self.assert_released()

    def assert_released(self) -> None:
        assert len(self.hub.state.registry) == 0, "a subscription outlived its socket"
        assert not self.hub.streams, "a socket is still tracked"


async def closed(socket: TestWebSocket) -> tuple[int, str]:
    with anyio.fail_after(5):
        return await socket.wait_closed()


async def test_the_url_subscription_sends_initial_state_then_changes() -> None:
    app = App()
    app.orders.create(order("a"))
    async with app.ws(params={"allowWatchBookmarks": "true"}) as socket:
        assert socket.subprotocol == "watchroutes.v1"
        added, end = await socket.take(2)
        assert list(added) == ["id", "type", "object", "resourceVersion"]
        assert (added["id"], added["type"]) == ("", "ADDED")
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        app.orders.patch("a", {"spec": {"x": 1}})
        (modified,) = await socket.take(1)
        assert (modified["id"], modified["type"]) == ("", "MODIFIED")


async def test_envelopes_share_the_encoded_frame() -> None:
    app = App()
    async with app.ws() as one, app.ws() as two:
        app.orders.create(order("a"))
        first, second = await one.receive(), await two.receive()
        assert first == second
        entry = app.hub.state.log("orders").current("a")
        assert entry is not None
        assert isinstance(first, str)
        assert first.encode() == b'{"id":"",' + entry.frame().json()[1:]


async def test_more_subscriptions_and_unwatch() -> None:
    app = App()
    async with app.ws(params={"sendInitialEvents": "false"}) as socket:
        await socket.send_json({"op": "watch", "id": "eu", "labelSelector": "region=eu"})
        await socket.send_json({"op": "watch", "id": "u", "resource": "users"})
        await anyio.wait_all_tasks_blocked()
        assert app.hub.statistics().active_watches == 3  # subscriptions, not sockets
        app.orders.create(order("a", "us"))
        app.orders.create(order("b", "eu"))
        app.users.create(order("x"))
        got = await socket.take(4)
        assert sorted((m["id"], m["object"]["metadata"]["name"]) for m in got) == [
            ("", "a"),
            ("", "b"),
            ("eu", "b"),
            ("u", "x"),
        ]
        await socket.send_json({"op": "unwatch", "id": "eu"})
        assert await socket.receive_json() == {"id": "eu", "type": "UNWATCHED"}
        app.orders.create(order("c", "eu"))
        (only,) = await socket.take(1)
        assert only["id"] == ""
        assert len(app.hub.state.registry) == 2
        assert app.hub.statistics().active_watches == 2


async def test_object_route_and_key() -> None:
    app = App()
    async with app.ws("/orders/o-1", params={"allowWatchBookmarks": "1"}) as socket:
        (end,) = await socket.take(1)  # o-1 does not exist yet: only the end bookmark
        assert (end["id"], end["type"]) == ("", "BOOKMARK")
        await socket.send_json(
            {"op": "watch", "id": "k", "key": "o-2", "allowWatchBookmarks": True}
        )
        assert (await socket.receive_json())["type"] == "BOOKMARK"
        app.orders.create(order("o-2"))
        app.orders.create(order("o-3"))
        app.orders.create(order("o-1"))
        got = [(m["id"], m["object"]["metadata"]["name"]) for m in await socket.take(2)]
        assert sorted(got) == [("", "o-1"), ("k", "o-2")]  # ordered per subscription only
        await socket.send_json(
            {"op": "watch", "id": "x", "key": "o-1", "fieldSelector": "metadata.name=o-9"}
        )
        error = await socket.receive_json()
        assert (error["id"], error["object"]["code"]) == ("x", 400)


async def test_subscription_errors_keep_the_socket_open() -> None:
    app = App(retention_events=3)
    app.orders.create(order("a"))
    rv = app.hub.head
    for _ in range(5):
        app.orders.patch("a", {"spec": {"n": _}})
    app.orders.patch("a", {"spec": {"n": 9}})  # with retention 3, rv has left the log
    async with app.ws(params={"sendInitialEvents": "false"}) as socket:
        for message in (
            {"op": "watch", "id": "", "labelSelector": "x"},  # the URL's subscription
            {"op": "watch", "id": "r", "resource": "nope"},
            {"op": "watch", "id": "s", "labelSelector": "a in"},
            {"op": "watch", "id": "f", "fieldSelector": "x"},
            {"op": "watch", "id": "v", "resourceVersion": "abc"},
            {"op": "watch", "id": "e", "resourceVersion": str(rv)},
            {"op": "watch", "id": "m", "resourceVersionMatch": "Exact"},
            {"op": "unwatch", "id": "nobody"},
        ):
            await socket.send_json(message)
        errors = {m["id"]: m["object"] for m in await socket.take(8)}
        assert {k: (v["code"], v["reason"]) for k, v in errors.items()} == {
            "": (400, "BadRequest"),
            "r": (404, "NotFound"),
            "s": (400, "BadRequest"),
            "f": (400, "BadRequest"),
            "v": (400, "BadRequest"),
            "e": (410, "Expired"),
            "m": (400, "BadRequest"),
            "nobody": (404, "NotFound"),
        }
        assert "already in use" in errors[""]["message"]
        assert errors["s"]["message"].startswith("labelSelector: ")
        assert errors["v"]["message"].startswith("resourceVersion: ")
        app.orders.patch("a", {"spec": {"n": 10}})
        (still,) = await socket.take(1)
        assert (still["id"], still["type"]) == ("", "MODIFIED")


async def test_the_url_subscription_can_fail_alone() -> None:
    app = App()
    async with app.ws(params={"labelSelector": "!!"}) as socket:
        error = await socket.receive_json()
        assert (error["id"], error["type"], error["object"]["code"]) == ("", "ERROR", 400)
        await socket.send_json({"op": "watch", "id": "", "sendInitialEvents": False})
        await anyio.wait_all_tasks_blocked()
        app.orders.create(order("a"))
        assert (await socket.receive_json())["type"] == "ADDED"


@pytest.mark.parametrize(
    ("message", "code", "fragment"),
    [
        ("{bad", 4400, "not JSON"),
        ("[]", 4400, "invalid message"),
        ('{"op": "watch"}', 4400, "id"),
        ('{"op": "stop", "id": "a"}', 4400, "invalid message"),
        ('{"id": "a"}', 4400, "op"),
        ('{"op": "watch", "id": 5}', 4400, "id"),
        ('{"op": "watch", "id": "a", "labelselector": "x=y"}', 4400, "labelselector"),
        ('{"op": "watch", "id": "a", "sendInitialEvents": "yes"}', 4400, "sendInitialEvents"),
        ('{"op": "watch", "id": "' + "x" * 300 + '"}', 4400, "at most 256"),
        (b"\x00binary", 4400, "binary"),
        ("x" * (64 * 1024 + 1), 1009, "65536 bytes"),
        ('{"op": "watch", "id": "' + "é" * 33_000 + '"}', 1009, "65536 bytes"),
    ],
)
async def test_invalid_messages_close_with_their_code(
    message: str | bytes, code: int, fragment: str
) -> None:
    app = App()
    async with app.ws() as socket:
        if isinstance(message, bytes):
            await socket.send_bytes(message)
        else:
            await socket.send_text(message)
        got_code, reason = await closed(socket)
        assert got_code == code
        assert fragment in reason, reason
        assert len(reason.encode()) <= 123


async def test_a_flood_closes_4429_and_the_rate_refills() -> None:
    app = App()
    async with app.ws() as socket:
        for i in range(20):
            await socket.send_json({"op": "unwatch", "id": f"n{i}"})
        await socket.take(20)
        app.clock.advance_nowait(0.5)  # 10 tokens back
        for i in range(10):
            await socket.send_json({"op": "unwatch", "id": f"m{i}"})
        await socket.take(10)
        await socket.send_json({"op": "unwatch", "id": "one-too-many"})
        assert await closed(socket) == (4429, "more than 20 messages per second")


async def test_the_subscription_limit() -> None:
    app = App(limits=WebSocketLimits(max_subscriptions=3, max_messages_per_second=1000))
    async with app.ws(params={"sendInitialEvents": "false"}) as socket:
        for i in range(3):
            await socket.send_json({"op": "watch", "id": f"s{i}", "sendInitialEvents": False})
        (error,) = list(await socket.take(1))
        assert error["id"] == "s2"
        assert error["object"]["message"] == "at most 3 subscriptions per socket"
        await socket.send_json({"op": "unwatch", "id": "s0"})
        await socket.send_json({"op": "watch", "id": "s2", "sendInitialEvents": False})
        assert await socket.receive_json() == {"id": "s0", "type": "UNWATCHED"}
        await anyio.wait_all_tasks_blocked()
        app.orders.create(order("a"))
        assert sorted(m["id"] for m in await socket.take(3)) == ["", "s1", "s2"]


async def test_subprotocol_negotiation() -> None:
    app = App()
    async with app.ws(subprotocols=()) as socket:  # a client that offers none is served
        assert socket.subprotocol is None
        app.orders.create(order("a"))
        assert (await socket.receive_json())["type"] == "ADDED"
    async with app.ws(subprotocols=("graphql-ws",)) as socket:
        assert await closed(socket) == (4400, 'unsupported subprotocol: offer "watchroutes.v1"')
    async with app.ws(subprotocols=("bearer.t", "watchroutes.v1")) as socket:
        assert socket.subprotocol == "watchroutes.v1"  # the token is never echoed


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, None, True),
        ("http://testserver", None, True),
        ("http://testserver:80", None, True),
        ("https://testserver", None, False),
        ("http://evil.example", None, False),
        ("null", None, False),
        ("http://app.example:8080", ["http://app.example:8080"], True),
        ("http://app.example", ["http://app.example:8080"], False),
        ("http://anything", ["*"], True),
    ],
)
async def test_origin(origin: str | None, allowed: list[str] | None, ok: bool) -> None:
    app = App(limits=WebSocketLimits(origins=allowed))
    headers = {} if origin is None else {"origin": origin}
    async with app.ws(headers=headers, params={"sendInitialEvents": "false"}) as socket:
        if ok:
            app.orders.create(order("a"))
            assert (await socket.receive_json())["type"] == "ADDED"
        else:
            assert await closed(socket) == (4403, "origin not allowed")


async def test_credentials() -> None:
    seen: list[str | None] = []

    async def authorize(websocket: WebSocket, token: str | None) -> None:
        seen.append(token)
        if token is None:
            raise Unauthorized("a bearer token is required")
        if token != "good":
            raise Forbidden("not yours")

    app = App(authorize=authorize)
    async with app.ws() as socket:
        assert await closed(socket) == (4401, "a bearer token is required")
    async with app.ws(subprotocols=("watchroutes.v1", "bearer.bad")) as socket:
        assert await closed(socket) == (4403, "not yours")
    for kwargs in (
        {"subprotocols": ("watchroutes.v1", "bearer.good")},
        {"headers": {"authorization": "Bearer good"}},
        {"params": {"access_token": "good"}},
    ):
        async with app.ws(**kwargs) as socket:
            app.orders.create(order(f"o-{len(seen)}"))
            assert (await socket.receive_json())["type"] == "ADDED"
    assert seen == [None, "bad", "good", "good", "good"]


async def test_a_slow_consumer_is_closed_4008() -> None:
    app = App(buffer=3)
    async with app.ws(params={"sendInitialEvents": "false"}) as socket:
        await anyio.wait_all_tasks_blocked()
        (sub,) = app.hub.state.registry.all()
        waker, sub.waker = sub.waker, None  # the writer sleeps on, as behind a stuck socket
        for i in range(5):
            app.orders.create(order(f"o-{i}"))
        assert sub.closed is not None
        assert sub.closed.value == "slow"
        assert waker is not None
        waker()
        assert await closed(socket) == (4008, "slow consumer: resume from the last resourceVersion")
        with pytest.raises(WebSocketClosed):
            await socket.receive()  # the dropped queue is not sent: the client resumes instead


async def test_shutdown_sends_final_bookmarks_then_1012() -> None:
    app = App()
    params = {"labelSelector": "region=eu", "allowWatchBookmarks": "1"}
    async with app.ws(params=params) as one:
        await one.take(1)  # the end of the (empty) initial state
        app.orders.create(order("a", "eu"))
        app.orders.create(order("b", "us"))  # not for this watcher: the head moves past it
        await one.take(1)
        async with app.ws(subprotocols=("graphql-ws",)) as refused:
            await closed(refused)
        async with app.ws(params={"labelSelector": "!!"}) as idle:  # no subscription at all
            await idle.take(1)
            await app.hub.aclose()
            bookmark = await one.receive_json()
            assert (bookmark["id"], bookmark["type"]) == ("", "BOOKMARK")
            assert bookmark["resourceVersion"] == str(app.hub.head)
            assert (await closed(one))[0] == 1012
            assert (await closed(idle))[0] == 1012
    async with app.ws() as late:
        assert await closed(late) == (1012, "the server is shutting down")


async def test_timeout_seconds_closes_1000_after_a_bookmark() -> None:
    app = App()
    params = {"labelSelector": "region=eu", "allowWatchBookmarks": "1", "timeoutSeconds": "5"}
    async with app.ws(params=params) as socket:
        await socket.take(1)
        await socket.send_json({"op": "watch", "id": "other", "sendInitialEvents": False})
        await anyio.wait_all_tasks_blocked()
        app.orders.create(order("b", "us"))
        await socket.take(1)  # "other" sees it, "" does not
        await app.clock.advance(5)
        bookmark = await socket.receive_json()
        assert (bookmark["id"], bookmark["type"]) == ("", "BOOKMARK")
        assert await closed(socket) == (1000, "timeoutSeconds passed")


async def test_a_client_that_leaves_releases_everything() -> None:
    app = App()
    async with app.ws() as socket:
        for i in range(5):
            await socket.send_json({"op": "watch", "id": f"s{i}"})
        await anyio.wait_all_tasks_blocked()
        assert len(app.hub.state.registry) == 6
    # App.ws asserted that nothing is left; a barrage of bad input leaves nothing either
    for bad in ("{", "[1]", '{"op":"watch","id":"x","resource":"nope"}'):
        async with app.ws() as socket:
            await socket.send_text(bad)
            with anyio.fail_after(5):
                with suppress(WebSocketClosed):
                    await socket.receive()


async def test_an_unknown_route_is_refused_before_accepting() -> None:
    app = App()
    with pytest.raises(WebSocketClosed):
        async with app.client.websocket("/nowhere"):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    "params",
    [
        {"labelSelector": "a in (b", "timeoutSeconds": "2"},  # the URL's subscription: 400
        {"resourceVersion": "9" * 18, "timeoutSeconds": "2"},  # 410: newer than the log
        {"timeoutSeconds": "2"},  # opened, then unwatched
    ],
)
async def test_timeout_seconds_closes_1000_whatever_became_of_the_url_subscription(
    params: dict[str, str],
) -> None:
    app = App(limits=WebSocketLimits(idle_seconds=60))
    async with app.ws(params=params) as socket:
        if "timeoutSeconds" in params and len(params) == 1:
            await socket.send_json({"op": "unwatch", "id": ""})
            while (await socket.receive_json())["type"] != "UNWATCHED":
                pass
        else:
            error = await socket.receive_json()
            assert (error["id"], error["type"]) == ("", "ERROR")
        await socket.send_json({"op": "watch", "id": "other", "sendInitialEvents": False})
        await anyio.wait_all_tasks_blocked()
        await app.clock.advance(1.9)
        app.orders.create(order("a"))
        (added,) = await socket.take(1)  # the other subscription is served until then
        assert (added["id"], added["type"]) == ("other", "ADDED")
        await app.clock.advance(0.1)
        assert await closed(socket) == (1000, "timeoutSeconds passed")


async def test_a_socket_without_subscriptions_is_closed_after_the_idle_period() -> None:
    app = App(limits=WebSocketLimits(idle_seconds=3))
    async with app.ws(params={"labelSelector": "!!"}) as socket:
        assert (await socket.receive_json())["type"] == "ERROR"
        await app.clock.advance(2.9)
        await socket.send_json({"op": "watch", "id": "s", "sendInitialEvents": False})
        await anyio.wait_all_tasks_blocked()
        await app.clock.advance(10)  # watching something: not idle
        app.orders.create(order("a"))
        assert (await socket.receive_json())["type"] == "ADDED"
        await socket.send_json({"op": "unwatch", "id": "s"})
        assert (await socket.receive_json())["type"] == "UNWATCHED"
        await app.clock.advance(2.9)
        await anyio.wait_all_tasks_blocked()
        assert socket.close_code is None
        await app.clock.advance(0.1)
        assert await closed(socket) == (1000, "no subscription for 3 s")


def test_the_idle_period_is_positive() -> None:
    with pytest.raises(ValueError, match="idle_seconds"):
        WebSocketLimits(idle_seconds=0)


async def test_a_socket_watches_only_the_resources_its_endpoint_lists() -> None:
    """A resource that only a route's own checks protect (or that no route serves) is never
    reachable by naming it in a watch message on another route's socket."""
    app = App(resources=[])
    async with app.ws(params={"sendInitialEvents": "false"}) as socket:
        await socket.send_json({"op": "watch", "id": "u", "resource": "users"})
        (refused,) = await socket.take(1)
        assert (refused["id"], refused["type"]) == ("u", "ERROR")
        assert refused["object"]["code"] == 404
        app.users.create(order("x"))
        app.orders.create(order("a"))
        (only,) = await socket.take(1)
        assert only["object"]["metadata"]["name"] == "a"
