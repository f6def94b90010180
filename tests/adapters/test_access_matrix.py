"""The ``Access`` hooks, limits and CORS through each adapter, in memory (aiohttp on a test
server on 127.0.0.1): every adapter hands authentication the request's headers, cookies and
client address; a principal refused by ``authorize`` gets a 403 and a forced selector narrows
lists and watches; the per-address limit counts that address (429); the per-second limit
refuses a burst; the watch route answers the CORS preflight. The example apps run the same
contract on their real servers (tests/conformance/test_security.py)."""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import anyio
import pytest

from watchroutes import (
    Access,
    AuthRequest,
    Cors,
    Forbidden,
    Hub,
    Principal,
    WatchLimits,
    WatchScope,
)

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example"
TOKENS = {"TA": "alice", "TB": "bob", "TC": "carol", "TD": "dave"}
ADAPTERS = ("starlette", "aiohttp", "flask", "django")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (aiohttp's test server needs asyncio)


class Seen:
    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def authenticate(self, request: AuthRequest) -> Principal | None:
        self.requests.append(request)
        name = TOKENS.get(request.bearer_token(cookie="token", query=True) or "")
        return None if name is None else Principal(name)


def authorize(principal: Principal, scope: WatchScope) -> str | None:
    if principal.name == "carol":
        raise Forbidden("carol may not read orders")
    return f"owner={principal.name}"


def can_see(principal: Principal, obj: Any) -> bool:
    return bool(obj["metadata"]["labels"].get("owner") == principal.name)


def make_hub(seen: Seen) -> Hub:
    hub = Hub(
        heartbeat=0.2,
        shutdown_grace=2.0,
        access=Access(seen.authenticate, authorize, can_see),
        watch_limits=WatchLimits(per_address=2, per_second=3),
        cors=Cors([ORIGIN]),
    )
    hub.resource("orders", kind="Order")
    return hub


class Driver(Protocol):
    """One adapter's app, driven through its own kind of client."""

    async def get(
        self, params: dict[str, str], headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]: ...

    def hold(self, params: dict[str, str], headers: dict[str, str]) -> Any:
        """An async context manager: a watch held open, yielding its status."""


# -- the drivers -------------------------------------------------------------------------------


class AsgiDriver:
    def __init__(self, app: Any) -> None:
        from watchroutes.testing import WatchClient

        self.client = WatchClient(app)

    async def get(
        self, params: dict[str, str], headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        answer = await self.client.request(method, "/orders", params=params, headers=headers)
        return answer.status, dict(answer.headers), answer.body

    @contextlib.asynccontextmanager
    async def hold(self, params: dict[str, str], headers: dict[str, str]) -> AsyncIterator[int]:
        async with self.client.stream("GET", "/orders", params=params, headers=headers) as s:
            yield s.status


class AiohttpDriver:
    def __init__(self, client: Any) -> None:
        self.client: Any = client

    async def get(
        self, params: dict[str, str], headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.client.request(method, "/orders", params=params, headers=headers) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    @contextlib.asynccontextmanager
    async def hold(self, params: dict[str, str], headers: dict[str, str]) -> AsyncIterator[int]:
        response = await self.client.get("/orders", params=params, headers=headers)
        try:
            yield response.status
        finally:
            response.close()


class FlaskDriver:
    """The WSGI client blocks (the hub runs in its own thread): called from the test's loop."""

    def __init__(self, app: Any) -> None:
        from watchroutes.testing import WSGIClient

        self.client = WSGIClient(app)

    async def get(
        self, params: dict[str, str], headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        answer = self.client.request(method, "/orders", params=params, headers=headers)
        return answer.status, dict(answer.headers), answer.body

    @contextlib.asynccontextmanager
    async def hold(self, params: dict[str, str], headers: dict[str, str]) -> AsyncIterator[int]:
        with self.client.stream("GET", "/orders", params=params, headers=headers) as stream:
            yield stream.status


@contextlib.asynccontextmanager
async def driver_for(adapter: str, hub: Hub) -> AsyncIterator[Driver]:
    orders = hub.resources["orders"]
    if adapter == "starlette":
        from starlette.applications import Starlette
        from starlette.routing import Route

        from watchroutes.adapters.starlette import watch_endpoint

        route = Route("/orders", watch_endpoint(orders), methods=["GET", "OPTIONS"])
        async with hub:
            yield AsgiDriver(Starlette(routes=[route]))
    elif adapter == "aiohttp":
        from aiohttp import web
        from aiohttp.test_utils import TestClient, TestServer

        from watchroutes.adapters.aiohttp import setup, watch_handler

        app = web.Application()
        handler = watch_handler(orders)
        app.router.add_get("/orders", handler)
        app.router.add_route("OPTIONS", "/orders", handler)
        setup(app, hub)
        async with TestServer(app, host="127.0.0.1") as server:
            client: TestClient[web.Request, None] = TestClient(server)
            async with client:
                yield AiohttpDriver(client)
    elif adapter == "flask":
        from flask import Flask

        from watchroutes.adapters.flask import WatchRoutes, watch_view

        flask = Flask(__name__)
        ext = WatchRoutes(flask, hub)
        flask.add_url_rule("/orders", view_func=watch_view(orders), methods=["GET", "OPTIONS"])
        try:
            yield FlaskDriver(flask)
        finally:
            ext.stop()
    else:
        from django.conf import settings
        from django.urls import clear_url_caches, path

        from watchroutes.adapters.django import asgi, watch_view

        if not settings.configured:  # as tests/adapters/test_django.py does (a file database)
            import tempfile

            database = Path(tempfile.mkdtemp(prefix="watchroutes-django-")) / "db.sqlite3"
            settings.configure(
                SECRET_KEY="test",
                ALLOWED_HOSTS=["*"],
                INSTALLED_APPS=[],
                MIDDLEWARE=[],
                DATABASES={
                    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}
                },
                USE_TZ=True,
            )
            import django

            django.setup()
        from django.core.asgi import get_asgi_application

        urls = ModuleType("access_matrix_urls")
        urls.urlpatterns = [path("orders", watch_view(orders))]  # type: ignore[attr-defined]
        previous = getattr(settings, "ROOT_URLCONF", None)
        settings.ROOT_URLCONF = urls
        clear_url_caches()
        try:
            async with hub:
                yield AsgiDriver(asgi(get_asgi_application(), hub))
        finally:
            settings.ROOT_URLCONF = previous
            clear_url_caches()
            # The in-memory client cancels the app's task when a held stream is left (uvicorn
            # sends http.disconnect instead); Django's ASGI handler, cancelled, leaves its
            # request body's temporary file to the garbage collector: collect it here, where
            # that is known, rather than as a warning in whichever test comes next.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


#: (bookmarks: the in-memory WSGI client lets a departed watch go at its next write, and an idle
#: JSON-lines watch without bookmarks writes nothing)
WATCH = {"watch": "true", "sendInitialEvents": "false", "allowWatchBookmarks": "true"}


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_hooks_limits_and_cors_through_the_adapter(adapter: str) -> None:
    seen = Seen()
    hub = make_hub(seen)
    orders = hub.resources["orders"]
    async with driver_for(adapter, hub) as app:
        for name, owner in (("a-1", "alice"), ("b-1", "bob")):
            orders.create({"metadata": {"name": name, "labels": {"owner": owner}}})
        # the hook sees the headers, the cookies and the client address
        status, _, body = await app.get({}, {"cookie": "token=TA", "x-probe": "1"})
        assert status == 200, body
        request = seen.requests[-1]
        assert request.cookies.get("token") == "TA"
        assert request.headers.get("x-probe") == "1"
        assert request.client == "127.0.0.1"
        assert request.method == "GET"
        assert b'"a-1"' in body
        assert b'"b-1"' not in body  # the forced selector and can_see
        # authorize refuses carol: 403 on a list and on a watch
        for params in ({}, WATCH):
            status, _, body = await app.get(params, bearer("TC"))
            assert status == 403, body
        # no token: the 401
        status, headers, _ = await app.get(WATCH, {})
        assert (status, headers.get("www-authenticate")) == (401, "Bearer")
        # two watches from this address, then a 429 for a third, whoever asks
        async with app.hold(WATCH, bearer("TA")) as first, app.hold(WATCH, bearer("TB")) as second:
            assert (first, second) == (200, 200)
            status, headers, body = await app.get(WATCH, bearer("TD"))
            assert status == 429, body
            assert headers.get("retry-after") == "1"
            assert b"address" in body
        # the preflight
        ask = {"origin": ORIGIN, "access-control-request-method": "GET"}
        status, headers, _ = await app.get({}, ask, method="OPTIONS")
        assert status == 204
        assert headers.get("access-control-allow-origin") == ORIGIN
        assert "Authorization" in headers.get("access-control-allow-headers", "")
        status, headers, _ = await app.get({}, {**ask, "origin": "https://evil.example"}, "OPTIONS")
        assert "access-control-allow-origin" not in headers
        with anyio.fail_after(5):  # the held watches are released
            while hub.watch_counts:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        # new watches per second per principal: a burst of dave's past 3 is refused
        brief = {"watch": "true", "feed": "longpoll"}  # (answered at once: the state)
        statuses = [(await app.get(brief, bearer("TD")))[0] for _ in range(6)]
        assert 429 in statuses, statuses
        assert statuses[0] == 200
