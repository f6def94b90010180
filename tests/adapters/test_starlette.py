"""The Starlette adapter's helpers for writes: bodies read under a limit, JSON decoded into
400s, FastAPI's validation errors as a Status; and the shared pieces they stand on."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchroutes import BadRequest, ClientError, Hub, RequestEntityTooLarge
from watchroutes._runtime.reply import BodyLimit, decode_json
from watchroutes.adapters.starlette import (
    error_response,
    list_response,
    read_json,
    request_validation_error,
    watch_endpoint,
    watchable,
)
from watchroutes.testing import WatchClient

pytestmark = pytest.mark.anyio


def app(limit: int = 100_000) -> WatchClient:
    async def echo(request: Request) -> Response:
        try:
            return JSONResponse({"got": await read_json(request, limit=limit)})
        except ClientError as exc:
            return error_response(exc)

    return WatchClient(Starlette(routes=[Route("/echo", echo, methods=["POST"])]))


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"a": [1, 2]}', 200, None),
        (b"[" * 101 + b"]" * 101, 400, "nests deeper than 100"),
        (b"[" * 5000, 400, "nests deeper than 100"),  # past the recursion limit, unfinished
        (b'"\xc3\x28"', 400, "UTF-8"),
        (b"{", 400, "not valid JSON"),
        (b" " * 100_001, 413, "more than 100000 bytes"),
    ],
)
async def test_read_json(body: bytes, status: int, fragment: str | None) -> None:
    response = await app().post("/echo", body=body)
    assert response.status == status
    if fragment is not None:
        assert fragment in json.loads(response.body)["message"]


async def test_a_declared_length_over_the_limit_is_refused_at_once() -> None:
    response = await app(limit=10).post("/echo", body=b"[1]", headers={"content-length": "11"})
    assert response.status == 413
    assert json.loads(response.body)["message"] == "the body is 11 bytes; the limit is 10"


def test_body_limit_counts_chunks() -> None:
    counter = BodyLimit(10)
    counter.feed(b"12345")
    counter.feed(b"")
    counter.feed(b"67890")
    assert counter.body() == b"1234567890"
    with pytest.raises(RequestEntityTooLarge, match="more than 10 bytes"):
        counter.feed(b"x")
    for bad in ("-1", "1e3", "٣", " "):
        with pytest.raises(BadRequest, match="Content-Length"):
            BodyLimit(10, bad)
    assert BodyLimit(10, " 10 ").size == 0


def test_decode_json_keeps_shallow_values() -> None:
    assert decode_json(b"[" * 100 + b"]" * 100) is not None
    assert decode_json(b'{"a": {"b": null}}', max_depth=2) == {"a": {"b": None}}
    with pytest.raises(BadRequest, match="deeper than 1 levels"):
        decode_json(b'{"a": {}}', max_depth=1)


async def test_fastapi_validation_errors_are_a_status_naming_the_field() -> None:
    api = FastAPI()
    api.add_exception_handler(RequestValidationError, request_validation_error)

    @api.get("/items")
    async def items(limit: int) -> Any:
        return {"limit": limit}

    client = WatchClient(api)
    response = await client.get("/items", params={"limit": "s3cret-not-a-number"})
    assert response.status == 400
    status = json.loads(response.body)
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 400, "BadRequest")
    assert status["message"].startswith("query.limit: ")
    assert "s3cret" not in response.body.decode()  # the input is never echoed
    missing = await client.get("/items")
    assert json.loads(missing.body)["message"].startswith("query.limit: ")


@pytest.mark.parametrize("decorated", [True, False])
async def test_head_is_never_a_watch(decorated: bool) -> None:
    hub = Hub()
    orders = hub.resource("orders", kind="Order")
    orders.create({"metadata": {"name": "a"}})

    @watchable(orders)
    async def listing(request: Request) -> Response:
        return list_response(orders, request)

    endpoint = listing if decorated else watch_endpoint(orders)
    client = WatchClient(Starlette(routes=[Route("/orders", endpoint)]))
    for params in ({"watch": "true"}, {"watch": "true", "feed": "longpoll"}, {}):
        with anyio.fail_after(5):
            head = await client.request("HEAD", "/orders", params=params)
        assert head.status == 200
        assert head.headers["content-type"] == "application/json"
