"""Backend failures stop at one boundary: a client gets a generic 503 Status, never the
engine's address or exception text (those go to the log)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route

import watchroutes._runtime.replica as replica_module
from watchroutes import Hub
from watchroutes.adapters.starlette import watch_endpoint
from watchroutes.testing import WatchClient

from .._services import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the engines' clients are asyncio libraries


def dead_url(engine: str, port: int) -> str:
    return {
        "redis": f"redis://:s3cret@127.0.0.1:{port}/0",
        "postgres": f"postgresql://postgres:s3cret@127.0.0.1:{port}/test",
        "nats": f"nats://127.0.0.1:{port}",
    }[engine]


@pytest.mark.parametrize("engine", ["redis", "postgres", "nats"])
async def test_an_unreachable_engine_is_a_generic_503(
    engine: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(replica_module, "START_TIMEOUT", 0.3)
    port = free_port()
    hub = Hub(backend=dead_url(engine, port))
    orders = hub.resource("orders", kind="Order")

    async def create(request: Any) -> Any:
        from watchroutes.adapters.starlette import error_response

        try:
            await orders.acreate({"metadata": {"name": "o-1"}})
        except Exception as exc:  # a ClientError: its Status
            return error_response(exc)  # type: ignore[arg-type]
        raise AssertionError("the write cannot have succeeded")  # pragma: no cover

    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            Route("/create", create, methods=["POST"]),
        ]
    )
    client = WatchClient(app)
    async with hub:
        answers = [
            await client.get("/orders"),
            await client.get("/orders", params={"watch": "true"}),
            await client.get("/orders", headers={"accept": "text/event-stream"}),
            await client.post("/create"),
        ]
    leaks = re.compile(rf"127\.0\.0\.1|{port}|s3cret|{engine}|refused|[a-z]Error|errno|Exception")
    for answer in answers:
        text = answer.body.decode()
        assert "ServiceUnavailable" in text, text
        assert not leaks.search(text), text
    assert [a.status for a in answers] == [503, 503, 200, 503]
    assert f"{port}" in caplog.text  # the detail is in the log, for the operator
