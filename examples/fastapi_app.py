"""The orders app on FastAPI: the same routes, as path operations."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from watchroutes import AuthRequest, ClientError, MethodNotAllowed, NotFound
from watchroutes.adapters.starlette import (
    error_response,
    list_response,
    read_json,
    request_info,
    request_validation_error,
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


def create_app(settings: Settings) -> FastAPI:
    hub, orders = make_hub(settings)
    writes = Writes(orders, users_of(settings))
    cors = ["OPTIONS"] if settings.cors_origins else []  # (otherwise OPTIONS is a 405)

    def auth(request: Request) -> AuthRequest:
        return request_info(request).auth()

    app = FastAPI(title="orders", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    @app.middleware("http")
    async def check_credentials(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if request.method != "OPTIONS" and (path == "/orders" or path.startswith("/orders/")):
            try:
                check_token(settings, auth(request))  # before a write reads its body
            except ClientError as exc:
                return error_response(exc)
        response: Response = await call_next(request)
        return response

    # --token and --users: the hub's Access hooks check every socket (no legacy authorize hook)
    app.add_api_websocket_route("/orders", websocket_endpoint(orders))
    app.add_api_websocket_route("/orders/{name}", websocket_endpoint(orders, key="name"))

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            response = error_response(
                MethodNotAllowed(f"{request.method[:20]} is not allowed here")
            )
            # (FastAPI's 405 lists the methods of one route; the path has several)
            allowed = {
                method
                for route in app.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
            response.headers["allow"] = ", ".join(sorted(allowed))
            return response
        if exc.status_code == 404:
            return error_response(NotFound(f"no route for {request.url.path[:200]}"))
        return JSONResponse({"message": exc.detail}, status_code=exc.status_code)

    # a request FastAPI cannot validate is a 400 Status too, not FastAPI's 422 {"detail": ...}
    app.add_exception_handler(RequestValidationError, request_validation_error)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8")

    @app.api_route(BROWSER_MODULE_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def browser_module() -> Response:
        return Response(BROWSER_MODULE, media_type=BROWSER_MODULE_TYPE)

    @app.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(metrics_text(hub), media_type="text/plain; version=0.0.4; charset=utf-8")

    # (HEAD is a plain GET without its body: ``watchable`` watches on GET only)
    @app.api_route("/orders", methods=["GET", "HEAD", *cors])
    @watchable(orders)
    async def list_orders(request: Request) -> Response:
        return list_response(orders, request)

    @app.post("/orders", status_code=201)
    async def create_order(request: Request) -> Any:
        return await writes.create(
            auth(request), object_body(await read_json(request, limit=MAX_BODY))
        )

    @app.api_route("/orders/{name}", methods=["GET", "HEAD", *cors])
    @watchable(orders, key="name")
    async def get_order(name: str, request: Request) -> Response:
        return list_response(orders, request, key="name")

    @app.put("/orders/{name}")
    async def replace_order(name: str, request: Request) -> Any:
        body = object_body(await read_json(request, limit=MAX_BODY))
        return await writes.replace(auth(request), name, body)

    @app.patch("/orders/{name}")
    async def patch_order(name: str, request: Request) -> Any:
        check_patch_type(request.headers.get("content-type"))
        body = object_body(await read_json(request, limit=MAX_BODY))
        return await writes.patch(auth(request), name, body)

    @app.delete("/orders/{name}")
    async def delete_order(name: str, request: Request) -> Any:
        return await writes.delete(auth(request), name)

    return app
