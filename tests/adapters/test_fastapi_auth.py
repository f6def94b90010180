"""A watch never bypasses a FastAPI endpoint's own checks: dependency-based authentication, a
check in the function's body, and the resource's Access hooks for the WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request

from watchroutes import Access, AuthRequest, Hub, Principal
from watchroutes.adapters.starlette import list_response, watchable, websocket_endpoint
from watchroutes.testing import WatchClient

pytestmark = pytest.mark.anyio

WATCHES = [
    ({"watch": "true"}, {}),
    ({"watch": "true", "feed": "longpoll", "timeoutSeconds": "0"}, {}),
    ({}, {"accept": "text/event-stream"}),
]


def current_user(authorization: Annotated[str | None, Header()] = None) -> str:
    if authorization != "Bearer good":
        raise HTTPException(401, "not signed in", headers={"WWW-Authenticate": "Bearer"})
    return "alice"


def authenticate(request: AuthRequest) -> Principal | None:
    return Principal("alice") if request.bearer_token() == "good" else None


@pytest.fixture
async def client() -> AsyncIterator[WatchClient]:
    hub = Hub(heartbeat=1.0)
    orders = hub.resource("orders", kind="Order", access=Access(authenticate))
    app = FastAPI()

    @app.get("/by-dependency")
    @watchable(orders)
    async def by_dependency(request: Request, user: Annotated[str, Depends(current_user)]) -> Any:
        return list_response(orders, request)

    @app.get("/in-body")
    @watchable(orders)
    async def in_body(request: Request) -> Any:
        if request.headers.get("authorization") != "Bearer good":
            raise HTTPException(403, "not yours")
        return list_response(orders, request)

    app.add_api_websocket_route("/ws", websocket_endpoint(orders))
    async with hub:
        yield WatchClient(app)


@pytest.mark.parametrize(("params", "headers"), WATCHES)
@pytest.mark.parametrize(("path", "status"), [("/by-dependency", 401), ("/in-body", 403)])
async def test_an_unauthenticated_watch_is_refused_as_the_get_is(
    client: WatchClient, path: str, status: int, params: dict[str, str], headers: dict[str, str]
) -> None:
    with anyio.fail_after(5):
        refused = await client.get(path, params=params, headers=headers)
        assert refused.status == status
        assert (await client.get(path)).status == status  # the plain GET, the same answer
        good = {**headers, "authorization": "Bearer good"}
        async with client.stream("GET", path, params=params, headers=good) as allowed:
            assert allowed.status == 200


async def test_the_websocket_of_a_protected_resource_needs_credentials(
    client: WatchClient,
) -> None:
    async with client.websocket("/ws") as ws:
        with anyio.fail_after(5):
            assert (await ws.wait_closed())[0] == 4401
    protocols = ["watchroutes.v1", "bearer.good"]
    async with client.websocket(
        "/ws", params={"allowWatchBookmarks": "true"}, subprotocols=protocols
    ) as ws:
        with anyio.fail_after(5):
            assert (await ws.receive_json())["type"] == "BOOKMARK"  # the initial events' end
