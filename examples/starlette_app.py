"""The orders app on Starlette."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from watchroutes import AuthRequest, ClientError, MethodNotAllowed, NotFound
from watchroutes.adapters.starlette import (
    error_response,
    list_response,
    read_json,
    request_info,
    watchable,
    websocket_endpoint,
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
    users_of,
)

Endpoint = Callable[[Request], Awaitable[Response]]


def not_allowed(request: Request, methods: Iterable[str]) -> Response:
    """405 ``MethodNotAllowed``, with ``Allow``."""
    response = error_response(MethodNotAllowed(f"{request.method[:20]} is not allowed here"))
    response.headers["allow"] = ", ".join(methods)
    return response


def create_app(settings: Settings) -> Starlette:
    hub, orders = make_hub(settings)
    writes = Writes(orders, users_of(settings))

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            try:
                if request.method == "OPTIONS":  # a preflight carries no credentials
                    return await endpoint(request)
                check_token(settings, auth(request))  # before a write reads its body
                return await endpoint(request)
            except ClientError as exc:
                return error_response(exc)

        return wrapper

    @watchable(orders)
    async def list_orders(request: Request) -> Response:
        return list_response(orders, request)

    @watchable(orders, key="name")
    async def get_order(request: Request) -> Response:
        return list_response(orders, request, key="name")

    async def create_order(request: Request) -> Response:
        body = object_body(await read_json(request, limit=MAX_BODY))
        return JSONResponse(await writes.create(auth(request), body), status_code=201)

    async def replace_order(request: Request) -> Response:
        body = object_body(await read_json(request, limit=MAX_BODY))
        name = request.path_params["name"]
        return JSONResponse(await writes.replace(auth(request), name, body))

    async def patch_order(request: Request) -> Response:
        check_patch_type(request.headers.get("content-type"))
        body = object_body(await read_json(request, limit=MAX_BODY))
        return JSONResponse(await writes.patch(auth(request), request.path_params["name"], body))

    async def delete_order(request: Request) -> Response:
        return JSONResponse(await writes.delete(auth(request), request.path_params["name"]))

    def auth(request: Request) -> AuthRequest:
        return request_info(request).auth()

    async def collection(request: Request) -> Response:
        if request.method == "POST":
            return await create_order(request)
        # GET, HEAD (the same answer without its body), and OPTIONS (the CORS preflight)
        return await list_orders(request)

    item_methods: dict[str, Endpoint] = {
        "GET": get_order,
        "HEAD": get_order,
        "PUT": replace_order,
        "PATCH": patch_order,
        "DELETE": delete_order,
    }
    cors = ["OPTIONS"] if settings.cors_origins else []  # (otherwise OPTIONS is a 405)
    if cors:
        item_methods["OPTIONS"] = get_order

    async def item(request: Request) -> Response:
        handler = item_methods.get(request.method)
        if handler is None:  # (the route lists these methods; Starlette answers the others)
            return not_allowed(request, item_methods)
        return await handler(request)

    async def page(request: Request) -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8")

    async def browser_module(request: Request) -> Response:
        return Response(BROWSER_MODULE, media_type=BROWSER_MODULE_TYPE)

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(hub), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return not_allowed(request, allow.split(", ") if allow else ())
        if exc.status_code == 404:
            return error_response(NotFound(f"no route for {request.url.path[:200]}"))
        return JSONResponse({"message": exc.detail}, status_code=exc.status_code)

    # --token and --users: the hub's Access hooks check every socket (no legacy authorize hook)
    app = Starlette(
        routes=[
            WebSocketRoute("/orders", websocket_endpoint(orders)),
            WebSocketRoute("/orders/{name}", websocket_endpoint(orders, key="name")),
            Route("/", page),
            Route(BROWSER_MODULE_PATH, browser_module),
            Route("/metrics", metrics),
            Route("/orders", guarded(collection), methods=["GET", "POST", *cors]),
            Route(
                "/orders/{name}",
                guarded(item),
                methods=["GET", "PUT", "PATCH", "DELETE", *cors],
            ),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.hub = hub
    return app
