"""``--token T`` on the example apps goes through the hub's ``Access`` hook, on every
transport, in memory (the real-server runs are in tests/conformance): no example passes the
legacy WebSocket ``authorize=`` hook any more."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from examples.orders import Settings
from watchroutes.testing import WatchClient, WSGIClient
from watchroutes.testing.aiohttp import AiohttpClient

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = Settings(token="s3cret", heartbeat=30, seed=2)
GOOD = {"authorization": "Bearer s3cret"}
GENERIC = "a valid bearer token is required"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the aiohttp app runs on asyncio only


def test_no_example_passes_the_legacy_authorize_hook() -> None:
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                names = {k.arg for k in node.keywords}
                assert "authorize" not in names or ast.unparse(node.func).endswith("Access"), (
                    f"{path.name}:{node.lineno} passes authorize="
                )


async def check_http(client: Any) -> None:
    refused = await client.get("/orders")
    assert refused.status == 401
    assert refused.json()["message"] == GENERIC
    assert (await client.get("/orders", headers={"cookie": "token=s3cret"})).status == 401
    listed = await client.get("/orders", headers=GOOD)
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["o-1", "o-2"]
    params = {"access_token": "s3cret", "watch": "true"}
    async with client.stream("GET", "/orders", params=params) as response:
        assert response.status == 200
        assert len(await response.take(2)) == 2
    created = await client.post("/orders", json_body={"metadata": {"name": "x"}})
    assert created.status == 401  # a write needs the header; the query token is for GETs
    created = await client.post(
        "/orders", params={"access_token": "s3cret"}, json_body={"metadata": {"name": "x"}}
    )
    assert created.status == 401


TWICE = [("authorization", "Bearer s3cret"), ("authorization", "Bearer other")]


async def check_repeated_header(client: Any) -> None:
    answer = await client.get("/orders", headers=TWICE)
    assert answer.status == 400
    assert answer.json()["message"].startswith("conflicting credentials: more than one")


async def check_websocket(client: Any) -> None:
    for params, protocols in (
        ({}, ["watchroutes.v1"]),
        ({"access_token": "wrong"}, ["watchroutes.v1"]),
        ({}, ["watchroutes.v1", "bearer.wrong"]),
    ):
        async with client.websocket("/orders", params=params, subprotocols=protocols) as ws:
            with anyio.fail_after(5):
                assert await ws.wait_closed() == (4401, GENERIC)  # accepted, then closed
    for params, protocols in (
        ({"access_token": "s3cret"}, ["watchroutes.v1"]),
        ({}, ["watchroutes.v1", "bearer.s3cret"]),
    ):
        async with client.websocket("/orders", params=params, subprotocols=protocols) as ws:
            assert ws.subprotocol == "watchroutes.v1"  # the token is never echoed
            events = await ws.take(2)
            assert [e["object"]["metadata"]["name"] for e in events] == ["o-1", "o-2"]


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_asgi_examples(framework: str) -> None:
    from examples import fastapi_app, starlette_app

    app = (fastapi_app if framework == "fastapi" else starlette_app).create_app(SETTINGS)
    async with app.state.hub:
        client = WatchClient(app)
        await check_http(client)
        await check_repeated_header(client)
        await check_websocket(client)


async def test_aiohttp_example() -> None:
    from examples.aiohttp_app import create_app

    async with AiohttpClient(create_app(SETTINGS), handler_cancellation=True) as client:
        await check_http(client)
        await check_websocket(client)


@pytest.fixture
def flask_client() -> Iterator[WSGIClient]:
    from examples.flask_app import create_app

    app = create_app(SETTINGS)
    try:
        yield WSGIClient(app)
    finally:
        app.extensions["watchroutes"].stop()


def test_flask_example(flask_client: WSGIClient) -> None:
    client = flask_client
    assert client.get("/orders").status == 401
    assert client.get("/orders", headers={"cookie": "token=s3cret"}).status == 401
    listed = client.get("/orders", headers=GOOD)
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["o-1", "o-2"]
    events = client.watch("/orders", 2, params={"access_token": "s3cret", "watch": "true"})
    assert [e["object"]["metadata"]["name"] for e in events] == ["o-1", "o-2"]
    assert client.post("/orders", json_body={"metadata": {"name": "x"}}).status == 401
    assert client.post("/orders", json_body={"metadata": {"name": "x"}}, headers=GOOD).status == 201
    answer = client.get("/orders", headers=TWICE)  # the WSGI environ joins them with a comma
    assert answer.status == 400


async def test_aiohttp_example_refuses_a_repeated_authorization_header() -> None:
    from examples.aiohttp_app import create_app

    async with AiohttpClient(create_app(SETTINGS)) as client:
        await check_repeated_header(client)
