"""The orders app on FastAPI: the same routes, as path operations."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from watchroutes import BadRequest, ClientError, MethodNotAllowed, NotFound
from watchroutes.adapters.starlette import (
    error_response,
    list_response,
    watchable,
    websocket_endpoint,
)

from .orders import (
    PAGE,
    Settings,
    check_socket_token,
    check_token,
    decode_body,
    make_hub,
    metrics_text,
)


def create_app(settings: Settings) -> FastAPI:
    hub, orders = make_hub(settings)
    app = FastAPI(title="orders", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if request.url.path == "/orders" or request.url.path.startswith("/orders/"):
            try:
                query = request.query_params.get("access_token")
                check_token(
                    settings,
                    request.headers.get("authorization"),
                    query if request.method == "GET" else None,
                )
            except ClientError as exc:
                return error_response(exc)
        response: Response = await call_next(request)
        return response

    def authorize(websocket: object, token: str | None) -> None:
        check_socket_token(settings, websocket, token)

    app.add_api_websocket_route("/orders", websocket_endpoint(orders, authorize=authorize))
    app.add_api_websocket_route(
        "/orders/{name}", websocket_endpoint(orders, key="name", authorize=authorize)
    )

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            return error_response(MethodNotAllowed(f"{request.method} is not allowed here"))
        if exc.status_code == 404:
            return error_response(NotFound(f"no route for {request.url.path[:200]}"))
        return JSONResponse({"message": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest("the request is malformed"))

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(metrics_text(hub), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/orders")
    @watchable(orders)
    async def list_orders(request: Request) -> Response:
        return list_response(orders, request)

    @app.post("/orders", status_code=201)
    async def create_order(request: Request) -> Any:
        body = decode_body(await request.body(), request.headers.get("content-type"))
        return await orders.acreate(body)

    @app.get("/orders/{name}")
    @watchable(orders, key="name")
    async def get_order(name: str, request: Request) -> Response:
        return list_response(orders, request, key="name")

    @app.put("/orders/{name}")
    async def replace_order(name: str, request: Request) -> Any:
        body = decode_body(await request.body(), request.headers.get("content-type"))
        return await orders.areplace(body, key=name)

    @app.patch("/orders/{name}")
    async def patch_order(name: str, request: Request) -> Any:
        body = decode_body(await request.body(), request.headers.get("content-type"), patch=True)
        return await orders.apatch(name, body)

    @app.delete("/orders/{name}")
    async def delete_order(name: str) -> Any:
        return await orders.adelete(name)

    return app
