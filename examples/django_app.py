"""The orders app on Django, served by uvicorn (ASGI).

Django is configured in code here (one module instead of ``settings.py``, ``urls.py`` and
``asgi.py``; docs/django.md shows the usual project layout). Views are async; the ASGI
application is Django's, wrapped by ``watchroutes.adapters.django.asgi`` for the hub's
lifespan, WebSocket watches and body limits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from types import ModuleType
from typing import Any

import django
from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import path

from watchroutes import ClientError, Hub, MethodNotAllowed, NotFound
from watchroutes.adapters.django import (
    asgi,
    error_response,
    list_response,
    read_json,
    request_info,
    watchable,
)

from .orders import (
    BROWSER_MODULE,
    BROWSER_MODULE_PATH,
    BROWSER_MODULE_TYPE,
    MAX_BODY,
    PAGE,
    Settings,
    Writes,
    check_patch_type,
    check_token,
    make_hub,
    metrics_text,
    object_body,
    start,
    users_of,
)

View = Any


def configure(urlconf: object) -> None:
    """Django's settings for this app (once per process)."""
    if not django_settings.configured:
        django_settings.configure(
            DEBUG=False,
            SECRET_KEY="watchroutes-example-not-secret",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=urlconf,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
            # bodies are limited by the asgi() wrapper while they are read
            DATA_UPLOAD_MAX_MEMORY_SIZE=None,
            LOGGING_CONFIG=None,
        )
        django.setup()
    else:  # a second app in this process (tests): its own URLconf
        django_settings.ROOT_URLCONF = urlconf


def json_response(body: object, status: int = 200) -> HttpResponse:
    import msgspec

    return HttpResponse(msgspec.json.encode(body), status=status, content_type="application/json")


def not_allowed(request: HttpRequest, methods: str) -> HttpResponseBase:
    response = error_response(MethodNotAllowed(f"{str(request.method)[:20]} is not allowed here"))
    response.headers["Allow"] = methods
    return response


def create_app(settings: Settings) -> tuple[Any, Hub]:
    """The ASGI application and its hub."""
    hub, orders = make_hub(settings)
    writes = Writes(orders, users_of(settings))

    def guarded(view: View) -> View:
        async def wrapper(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method != "OPTIONS":  # a CORS preflight carries no credentials
                    # (before a write reads its body)
                    check_token(settings, request_info(request).auth())
                response: HttpResponseBase = await view(request, **kwargs)
            except ClientError as exc:
                return error_response(exc)
            return response

        wrapper.watchroutes = view.watchroutes  # type: ignore[attr-defined] # (WebSocket routing)
        return wrapper

    # (the list views do no checks of their own: the hub's Access hooks guard every watch)
    @watchable(orders, run_endpoint=False)
    async def collection(request: HttpRequest) -> HttpResponseBase:
        if request.method in ("GET", "HEAD"):
            return await list_response(orders, request)
        if request.method == "POST":
            body = object_body(read_json(request, limit=MAX_BODY))
            return json_response(await writes.create(request_info(request).auth(), body), 201)
        return not_allowed(request, "GET, HEAD, POST")

    @watchable(orders, key="name", run_endpoint=False)
    async def item(request: HttpRequest, name: str) -> HttpResponseBase:
        method = request.method
        auth = request_info(request).auth()
        if method in ("GET", "HEAD"):
            return await list_response(orders, request, key="name", name=name)
        if method == "PUT":
            body = object_body(read_json(request, limit=MAX_BODY))
            return json_response(await writes.replace(auth, name, body))
        if method == "PATCH":
            check_patch_type(request.headers.get("content-type"))
            body = object_body(read_json(request, limit=MAX_BODY))
            return json_response(await writes.patch(auth, name, body))
        if method == "DELETE":
            return json_response(await writes.delete(auth, name))
        return not_allowed(request, "GET, HEAD, PUT, PATCH, DELETE")

    async def page(request: HttpRequest) -> HttpResponse:
        return HttpResponse(PAGE, content_type="text/html; charset=utf-8")

    async def browser_module(request: HttpRequest) -> HttpResponse:
        return HttpResponse(BROWSER_MODULE, content_type=BROWSER_MODULE_TYPE)

    async def metrics(request: HttpRequest) -> HttpResponse:
        return HttpResponse(
            metrics_text(hub), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponseBase:
        return error_response(NotFound(f"no route for {request.path[:200]}"))

    def server_error(request: HttpRequest) -> HttpResponseBase:
        return json_response({"message": "internal error"}, 500)

    urlconf = ModuleType("orders_urls")  # what urls.py would be
    urlconf.urlpatterns = [  # type: ignore[attr-defined]
        path("", page),
        path(BROWSER_MODULE_PATH.lstrip("/"), browser_module),
        path("metrics", metrics),
        path("orders", guarded(collection)),
        path("orders/<str:name>", guarded(item)),
    ]
    urlconf.handler404 = not_found  # type: ignore[attr-defined]
    urlconf.handler500 = server_error  # type: ignore[attr-defined]
    configure(urlconf)
    from django.core.asgi import get_asgi_application

    # --token and --users: the hub's Access hooks check every socket (no legacy authorize hook)
    return asgi(get_asgi_application(), hub, max_body=MAX_BODY), hub


def main(settings: Settings) -> None:
    """Serve with uvicorn until SIGINT or SIGTERM."""
    # request lines and headers up to 64 KiB reach the app on WebSockets too (the websockets
    # package reads lines of at most 8 KiB unless told otherwise, before it is imported)
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(64 * 1024 + 1024))
    import uvicorn

    from watchroutes.adapters.uvicorn import Server

    app, hub = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("django.request").setLevel(logging.ERROR)  # not every 404 and 405
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="off",  # the Server below runs the hub (asgi() would, under plain uvicorn)
        # the hub ends every watch first (within its 5 s grace); what uvicorn still waits for
        # then is a write to a peer that stopped reading, which Django does not time out
        timeout_graceful_shutdown=4,
        h11_max_incomplete_event_size=128 * 1024,
    )

    class Orders(Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await start(hub, settings)  # the hub follows its log by now
            await super().startup(sockets)

    with contextlib.suppress(KeyboardInterrupt):
        Orders(config, hubs=[hub], announce=True).run()
