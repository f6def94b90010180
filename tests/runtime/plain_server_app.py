"""The app ``test_plain_servers`` runs under plain servers: the hub is entered in the lifespan,
as users write it, and nothing else knows about watchroutes (no ``Server``, no hooks).

``app`` is a Starlette app (``uvicorn``, ``hypercorn``); ``fastapi_app`` is the same routes as
a FastAPI app, for ``fastapi run``, which accepts only FastAPI apps.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from watchroutes import Hub
from watchroutes.adapters.starlette import read_json, watch_endpoint, websocket_endpoint

hub = Hub()
orders = hub.resource("orders", kind="Order")


async def create_order(request: Request) -> Response:
    return JSONResponse(orders.create(await read_json(request)), status_code=201)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    async with hub:
        yield


routes = [
    Route("/orders", watch_endpoint(orders)),
    Route("/orders", create_order, methods=["POST"]),
    WebSocketRoute("/orders", websocket_endpoint(orders)),
]
app = Starlette(routes=routes, lifespan=lifespan)
fastapi_app = FastAPI(routes=routes, lifespan=lifespan)
