"""No token leaks (protocol.md §7): a run that presents tokens in every source (header,
cookie, ``access_token`` query, ``bearer.`` and Kubernetes subprotocols), valid, wrong and
malformed, on every transport, with refusals of every kind (401, 403, 429, a bad selector,
expiry, revocation); then every log record (all loggers, DEBUG), the ``/metrics`` text and
every answer's body and headers are searched for the tokens."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from watchroutes import Access, AuthRequest, Forbidden, Hub, Principal, WatchLimits, WatchScope
from watchroutes.adapters.starlette import watch_endpoint, websocket_endpoint
from watchroutes.prometheus import PrometheusMetrics
from watchroutes.testing import WatchClient, WebSocketClosed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (what is checked here does not depend on the event loop)


GOOD = "tok-GOOD-51ab0c"
EXPIRING = "tok-EXPIRING-77de41"
FORBIDDEN = "tok-FORBIDDEN-3c9f"
WRONG = "tok-WRONG-e2e2e2"
SECRETS = (GOOD, EXPIRING, FORBIDDEN, WRONG)


def authenticate(request: AuthRequest) -> Principal | None:
    token = request.bearer_token(cookie="token", query=True)
    if token == GOOD:
        return Principal("alice")
    if token == EXPIRING:
        return Principal("eve", expires_at=time.time() + 0.3)
    if token == FORBIDDEN:
        return Principal("mallory")
    return None


def authorize(principal: Principal, scope: WatchScope) -> str | None:
    if principal.name == "mallory":
        raise Forbidden("not for you")
    return None


def k8s(token: str) -> str:
    return "base64url.bearer.authorization.k8s.io." + (
        base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    )


def sources(token: str) -> list[dict[str, Any]]:
    return [
        {"headers": {"authorization": f"Bearer {token}"}},
        {"headers": {"cookie": f"token={token}"}},
        {"params": {"access_token": token}},
    ]


async def answer_of(
    client: WatchClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> list[str]:
    """An answer's status line, headers and what its body says within 0.1 s (a watch that
    was let in is left open no longer)."""
    body = b""
    async with client.stream("GET", path, params=params, headers=headers) as response:
        with anyio.move_on_after(0.1):
            while (chunk := await response.next_chunk()) is not None:
                body += chunk
    return [f"{response.status} {response.headers!r}", body.decode(errors="replace")]


async def test_no_token_in_logs_metrics_or_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    metrics = PrometheusMetrics()
    hub = Hub(
        heartbeat=0.1,
        metrics=metrics,
        access=Access(authenticate, authorize, can_see=lambda p, o: True),
        watch_limits=WatchLimits(per_principal=1),
    )
    orders = hub.resource("orders", kind="Order")
    app = Starlette(
        routes=[
            Route("/orders", watch_endpoint(orders)),
            Route("/orders/{name}", watch_endpoint(orders, key="name")),
            WebSocketRoute("/ws", websocket_endpoint(orders)),
        ]
    )
    client = WatchClient(app)
    seen: list[str] = []
    asks: list[dict[str, str]] = [
        {},
        {"watch": "true", "timeoutSeconds": "1"},
        {"watch": "true", "feed": "longpoll", "timeoutSeconds": "0"},
        {"watch": "true", "labelSelector": "a in (", "timeoutSeconds": "1"},  # 400
        {"watch": "true", "resourceVersion": "99999999", "timeoutSeconds": "1"},  # too new
    ]
    async with hub:
        orders.create({"metadata": {"name": "o-1"}})
        for token in SECRETS:
            for source in sources(token):
                for ask in asks:
                    params = {**source.get("params", {}), **ask}
                    for accept in (None, "text/event-stream"):
                        headers = dict(source.get("headers", {}))
                        if accept:
                            headers["accept"] = accept
                        seen.extend(await answer_of(client, "/orders", params, headers))
                seen.extend(await answer_of(client, "/orders/nope", params, headers))
            for protocol in (f"bearer.{token}", k8s(token)):
                try:
                    async with client.websocket(
                        "/ws", subprotocols=("watchroutes.v1", protocol)
                    ) as ws:
                        seen.append(ws.subprotocol or "")
                        await ws.send_json({"op": "watch", "id": "x", "labelSelector": "a in ("})
                        with anyio.move_on_after(0.5):
                            try:
                                for _ in range(4):
                                    seen.append(repr(await ws.receive_json()))
                            except WebSocketClosed as closed:  # (expired, 4401)
                                seen.append(repr(closed))
                except WebSocketClosed as closed:
                    seen.append(repr(closed))
        # the limit (one watch each) while one is open, expiry and revocation mid-stream
        query = {"watch": "true", "access_token": GOOD}
        async with client.stream("GET", "/orders", params=query) as first:
            refused = await client.get("/orders", params=query)
            assert refused.status == 429
            seen.append(refused.body.decode())
            hub.revoke("alice")
            with anyio.fail_after(5):
                seen.extend([repr(line) async for line in first.json_lines()])
        query["access_token"] = EXPIRING
        async with client.stream("GET", "/orders", params=query) as expiring:
            with anyio.fail_after(5):
                seen.extend([repr(line) async for line in expiring.json_lines()])
        assert any("credentials expired" in text for text in seen)
        assert any("access revoked" in text for text in seen)
        seen.append(metrics.exposition().decode())
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    )
    for secret in SECRETS:
        assert secret not in logged, logged
        for text in seen:
            assert secret not in text, text
