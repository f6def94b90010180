"""The orders app on aiohttp: one route per path serves lists, watches and WebSockets."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from watchroutes import (
    AuthRequest,
    BadRequest,
    ClientError,
    Hub,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
)
from watchroutes.adapters import freeze_startup_objects
from watchroutes.adapters.aiohttp import (
    error_response,
    is_websocket,
    list_response,
    read_json,
    request_info,
    server_settings,
    setup,
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Where the application keeps its hub (``app[HUB]``).
HUB = web.AppKey("hub", Hub)


def json_response(body: object, status: int = 200) -> web.Response:
    import msgspec

    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )


def create_app(settings: Settings) -> web.Application:
    hub, orders = make_hub(settings)
    writes = Writes(orders, users_of(settings))

    def auth(request: web.Request) -> AuthRequest:
        return request_info(request).auth()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            path = request.path
            if (
                (path == "/orders" or path.startswith("/orders/"))
                and not is_websocket(request)
                and request.method != "OPTIONS"  # a preflight carries no credentials
            ):
                check_token(settings, auth(request))  # before a write reads its body
            return await handler(request)
        except ClientError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            error: ClientError
            if exc.status == 405:
                response = error_response(
                    MethodNotAllowed(f"{request.method[:20]} is not allowed here")
                )
                response.headers["Allow"] = exc.headers.get("Allow", "")
                return response
            if exc.status == 404:
                error = NotFound(f"no route for {request.path[:200]}")
            elif exc.status == 400:  # aiohttp says why (a malformed body, a bad header)
                error = BadRequest((exc.text or exc.reason)[:200])
            elif exc.status == 413:
                error = RequestEntityTooLarge(f"the body is larger than {MAX_BODY} bytes")
            else:
                return json_response({"message": exc.reason}, exc.status)
            return error_response(error)

    # --token and --users: the hub's Access hooks check every socket (no legacy authorize hook)
    # (the handlers are the library's list and do no checks of their own: the hub's Access
    # hooks guard every watch, so they need not run first for one)
    @watchable(orders, run_endpoint=False)
    async def list_orders(request: web.Request) -> web.StreamResponse:
        return await list_response(orders, request)

    @watchable(orders, key="name", run_endpoint=False)
    async def get_order(request: web.Request) -> web.StreamResponse:
        return await list_response(orders, request, key="name")

    async def create_order(request: web.Request) -> web.StreamResponse:
        body = object_body(await read_json(request, limit=MAX_BODY))
        return json_response(await writes.create(auth(request), body), 201)

    async def replace_order(request: web.Request) -> web.StreamResponse:
        body = object_body(await read_json(request, limit=MAX_BODY))
        name = request.match_info["name"]
        return json_response(await writes.replace(auth(request), name, body))

    async def patch_order(request: web.Request) -> web.StreamResponse:
        check_patch_type(request.headers.get("content-type"))
        body = object_body(await read_json(request, limit=MAX_BODY))
        name = request.match_info["name"]
        return json_response(await writes.patch(auth(request), name, body))

    async def delete_order(request: web.Request) -> web.StreamResponse:
        return json_response(await writes.delete(auth(request), request.match_info["name"]))

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8")

    async def browser_module(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BROWSER_MODULE, headers={"content-type": BROWSER_MODULE_TYPE})

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=metrics_text(hub),
            headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def seed(app: web.Application) -> None:
        await start(hub, settings)  # the hub follows its log by now

    # (bodies are read by read_json, which stops reading past MAX_BODY)
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    setup(app, hub)
    app.on_startup.append(seed)
    # GET routes take HEAD too: the same answer without its body (no watch)
    app.router.add_get("/", page)
    app.router.add_get(BROWSER_MODULE_PATH, browser_module)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/orders", list_orders)
    app.router.add_post("/orders", create_order)
    app.router.add_get("/orders/{name}", get_order)
    app.router.add_put("/orders/{name}", replace_order)
    app.router.add_patch("/orders/{name}", patch_order)
    app.router.add_delete("/orders/{name}", delete_order)
    if settings.cors_origins:  # the CORS preflight (otherwise OPTIONS is a 405)
        app.router.add_route("OPTIONS", "/orders", list_orders)
        app.router.add_route("OPTIONS", "/orders/{name}", get_order)
    app[HUB] = hub
    return app


async def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    app = create_app(settings)
    # server_settings(): request lines and headers up to 64 KiB reach the app, and a client's
    # malformed request is a one-line warning in the log, not an ERROR with a traceback
    runner = web.AppRunner(app, **server_settings(access_log=None, shutdown_timeout=8))
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    freeze_startup_objects()  # the serving process: shorter collector pauses (operations.md)
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    print(f"ready http://{host}:{port}", flush=True)
    sys.stdout.flush()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await runner.cleanup()  # stop accepting, end the streams (on_shutdown), wait, clean up


def main(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(settings))  # then exit with status 0
