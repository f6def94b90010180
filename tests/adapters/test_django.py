"""The Django adapter in memory, under both handlers: WSGI (``WSGIClient`` over Django's
``WSGIHandler``) and ASGI (``WatchClient`` over the ``asgi()`` wrapper). Each picks the
iterator its handler streams (a mismatch would make Django consume the endless stream to its
end, so these tests would time out); database connections are closed before a stream starts;
``publish_on_commit`` publishes after the commit, and not after a rollback. The example app on
uvicorn runs the whole conformance suite (tests/conformance)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import clear_url_caches, path
from django.views import View

from watchroutes import Hub
from watchroutes.adapters.django import (
    WatchViewMixin,
    asgi,
    publish_on_commit,
    stop,
    watch_view,
    watchable,
)
from watchroutes.testing import WatchClient, WSGIClient

HEARTBEAT = 0.2
SSE = {"accept": "text/event-stream"}


def order(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"region": "eu"}}, "spec": {"qty": 1}}


def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class Recorder:
    """What the views saw of the database connection when they returned."""

    def __init__(self) -> None:
        self.open_after: list[bool] = []


def make_urls(hub: Hub, recorder: Recorder) -> ModuleType:
    orders = hub.resources["orders"]

    @watchable(orders)
    def sync_view(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"own": "sync"})

    @watchable(orders)
    async def async_view(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"own": "async"})

    class ClassView(WatchViewMixin, View):  # type: ignore[misc]
        watch_resource = orders

        def get(self, request: HttpRequest) -> HttpResponse:
            return JsonResponse({"own": "class"})

    full = watch_view(orders)

    async def with_db(request: HttpRequest) -> Any:
        def touch() -> None:
            connection.ensure_connection()

        from asgiref.sync import sync_to_async

        await sync_to_async(touch)()
        response = await full(request)

        def still_open() -> bool:
            return connection.connection is not None

        recorder.open_after.append(await sync_to_async(still_open)())
        return response

    urls = ModuleType("watch_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("orders", full),
        path("orders/<str:name>", watch_view(orders, key="name")),
        path("sync", sync_view),
        path("async", async_view),
        path("class", ClassView.as_view()),
        path("db", with_db),
    ]
    return urls


@pytest.fixture(scope="module", autouse=True)
def django_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    # (a file: Django never closes the connection of an in-memory SQLite database)
    database = tmp_path_factory.mktemp("django") / "db.sqlite3"
    if not settings.configured:
        settings.configure(
            SECRET_KEY="test",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="watch_urls",
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}},
            USE_TZ=True,
        )
        import django

        django.setup()


@pytest.fixture
def hub() -> Hub:
    made = Hub(heartbeat=HEARTBEAT, shutdown_grace=2.0)
    made.resource("orders", kind="Order")
    return made


@pytest.fixture
def recorder(hub: Hub) -> Recorder:
    found = Recorder()
    settings.ROOT_URLCONF = make_urls(hub, found)
    clear_url_caches()
    return found


@pytest.fixture
def wsgi(hub: Hub, recorder: Recorder) -> Iterator[WSGIClient]:
    from django.core.handlers.wsgi import WSGIHandler

    yield WSGIClient(WSGIHandler())
    stop()


@pytest.mark.parametrize("route", ["/orders", "/sync", "/async", "/class"])
def test_wsgi_streams_from_the_request_thread(hub: Hub, wsgi: WSGIClient, route: str) -> None:
    orders = hub.resources["orders"]
    with wsgi.stream("GET", route, headers=SSE) as s:
        assert s.status == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "Accept" in s.headers["vary"]
        assert s.next_sse() is not None  # retry
        assert s.next_sse() is not None  # the end of the (empty) initial events
        created = orders.create(order("o-1"))  # from this thread, not the hub's
        live = s.next_sse()
        assert live is not None
        assert live.id == created["metadata"]["resourceVersion"]
        s.disconnect()
        assert s.wait_closed(5 * HEARTBEAT + 2)
    until(lambda: hub.statistics().active_watches == 0)
    if route != "/orders":
        plain = wsgi.get(route)
        assert plain.status == 200
        assert "Accept" in plain.headers["vary"]


def test_wsgi_lists_and_objects(hub: Hub, wsgi: WSGIClient) -> None:
    stored = hub.resources["orders"].create(order("o-1"))
    assert wsgi.get("/orders").json()["items"] == [stored]
    assert wsgi.get("/orders/o-1").json() == stored
    assert wsgi.get("/orders/o-9").status == 404
    refused = wsgi.request("POST", "/orders")
    assert refused.status == 405
    assert refused.json()["reason"] == "MethodNotAllowed"


def test_wsgi_refuses_websocket_upgrades(wsgi: WSGIClient) -> None:
    refused = wsgi.get("/orders", headers={"upgrade": "websocket", "connection": "Upgrade"})
    assert refused.status == 400
    assert "ASGI" in refused.json()["message"]


def test_wsgi_closes_database_connections_before_streaming(
    wsgi: WSGIClient, recorder: Recorder
) -> None:
    with wsgi.stream("GET", "/db", params={"watch": "1", "allowWatchBookmarks": "1"}) as s:
        assert s.next_line()["type"] == "BOOKMARK"
    assert recorder.open_after == [False]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("route", ["/orders", "/sync", "/async", "/class"])
async def test_asgi_streams_an_async_iterator(hub: Hub, recorder: Recorder, route: str) -> None:
    from django.core.asgi import get_asgi_application

    client = WatchClient(asgi(get_asgi_application(), hub))
    orders = hub.resources["orders"]
    async with hub:
        params = {"watch": "1", "allowWatchBookmarks": "1"}
        async with client.stream("GET", route, params=params) as s:
            assert s.status == 200
            assert (await s.next_line())["type"] == "BOOKMARK"
            created = await orders.acreate(order("o-1"))
            line = await s.next_line()
            assert line["object"] == created
        with anyio.fail_after(5):
            while hub.statistics().active_watches:  # noqa: ASYNC110 - polling a statistic
                await anyio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asgi_websocket_and_body_limit(hub: Hub, recorder: Recorder) -> None:
    from django.core.asgi import get_asgi_application

    client = WatchClient(asgi(get_asgi_application(), hub, max_body=10))
    async with hub:
        async with client.websocket("/orders", subprotocols=["watchroutes.v1"]) as ws:
            await hub.resources["orders"].acreate(order("o-1"))
            message = await ws.receive_json()
            assert (message["id"], message["type"]) == ("", "ADDED")
        too_large = await client.post("/orders", body=b"x" * 11)
        assert too_large.status == 413
        assert too_large.json()["reason"] == "RequestEntityTooLarge"


def test_publish_on_commit_waits_for_the_commit(hub: Hub, recorder: Recorder) -> None:
    orders = hub.resources["orders"]
    events: list[str] = []

    def run() -> None:
        with transaction.atomic():
            publish_on_commit(orders, "ADDED", order("kept"))
        try:
            with transaction.atomic():
                publish_on_commit(orders, "ADDED", order("dropped"))
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        events.extend(obj["metadata"]["name"] for obj in orders.list()[1])
        connection.close()

    thread = threading.Thread(target=run)  # (Django's connections are per thread)
    thread.start()
    thread.join(10)
    assert events == ["kept"]
