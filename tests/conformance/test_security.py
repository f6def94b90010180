"""The security contract (protocol.md §7) on every framework's example app, through its real
server: ``--users``, ``--token-ttl``, ``--cors-origin`` and ``--max-watches-per-user``
(protocol.md §6).

One server per framework serves the whole module (users, CORS and a watch limit), a second
one the expiry test. Every error body the tests see is kept: the last test checks that no
token appears in any of them, in ``/metrics`` or (at teardown) in the server's log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ._support import (
    READ_TIMEOUT,
    Server,
    SSEStream,
    envelope,
    is_initial_end,
)

#: Distinctive tokens, so that a leak anywhere is found by a plain substring search.
ALICE, BOB = "tA-7f3c9e21d4", "tB-0b8a6e55c2"
WRONG = "tX-9d9d9d9d9d"
USERS = f"alice:{ALICE},bob:{BOB}"
ORIGIN = "https://app.example"
LIMIT = 3
GENERIC = "a valid bearer token is required"
PROTOCOL = "watchroutes.v1"
FRAMEWORKS = ("starlette", "fastapi", "aiohttp", "flask", "django")
TOKENS = (ALICE, BOB, WRONG)


class Secured:
    """A module's server and every error body seen on it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = server.client
        self.bodies: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            self.bodies.append(response.text)
        return response


def _stop(server: Server) -> None:
    log = server.stop()
    assert "Traceback" not in log, log
    for token in TOKENS:
        assert token not in log, f"a token in the {server.framework} log:\n{log}"


@pytest.fixture(scope="module", params=FRAMEWORKS)
def secured(request: pytest.FixtureRequest) -> Iterator[Secured]:
    server = Server.start(
        str(request.param),
        *("--heartbeat", "30", "--users", USERS, "--cors-origin", ORIGIN),
        *("--max-watches-per-user", str(LIMIT)),
    )
    try:
        yield Secured(server)
    finally:
        _stop(server)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def owned(name: str, owner: str | None = None, **labels: str) -> dict[str, Any]:
    if owner is not None:
        labels["owner"] = owner
    return {"metadata": {"name": name, "labels": labels}, "spec": {"item": "book", "qty": 1}}


def create(app: Secured, name: str, token: str, owner: str | None = None) -> Any:
    response = app.request("POST", "/orders", json=owned(name, owner), headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def move(app: Secured, name: str, token: str, owner: str) -> httpx.Response:
    patch = {"metadata": {"labels": {"owner": owner}}}
    return app.request(
        "PATCH",
        f"/orders/{name}",
        content=json.dumps(patch),
        headers={**bearer(token), "content-type": "application/merge-patch+json"},
    )


def names(app: Secured, token: str) -> set[str]:
    response = app.request("GET", "/orders", headers=bearer(token))
    assert response.status_code == 200, response.text
    return {item["metadata"]["name"] for item in response.json()["items"]}


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert (body["reason"], body["message"]) == ("Unauthorized", GENERIC)


@contextlib.contextmanager
def ws(app: Secured, path: str = "/orders", **kwargs: Any) -> Iterator[ClientConnection]:
    url = app.server.base_url.replace("http://", "ws://") + path
    kwargs.setdefault("subprotocols", [PROTOCOL])
    with connect(url, open_timeout=READ_TIMEOUT, close_timeout=2, **kwargs) as conn:
        yield conn


def close_of(conn: ClientConnection, timeout: float = READ_TIMEOUT) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    closed: ConnectionClosed | None = None
    try:
        while time.monotonic() < deadline:
            conn.recv(timeout=READ_TIMEOUT)
    except ConnectionClosed as exc:
        closed = exc
    assert closed is not None, "the server did not close"
    assert closed.rcvd is not None, "no close frame"
    return closed.rcvd.code, closed.rcvd.reason


def k8s(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return "base64url.bearer.authorization.k8s.io." + encoded


@contextlib.contextmanager
def sse(app: Secured, token: str | None = None, **params: str) -> Iterator[SSEStream]:
    query = {**params, **({} if token is None else {"access_token": token})}
    headers = {"accept": "text/event-stream"}
    with app.client.stream("GET", "/orders", params=query, headers=headers) as response:
        assert response.status_code == 200, response.read()
        yield SSEStream(response)


def test_every_token_source_and_only_the_owners_orders(secured: Secured) -> None:
    app = secured
    create(app, "a-src", ALICE)
    create(app, "b-src", BOB)
    sources: list[dict[str, Any]] = [
        {"headers": bearer(ALICE)},
        {"headers": {"cookie": f"token={ALICE}"}},
        {"params": {"access_token": ALICE}},
    ]
    for source in sources:
        response = app.request("GET", "/orders", **source)
        assert response.status_code == 200, (source, response.text)
        seen = {item["metadata"]["name"] for item in response.json()["items"]}
        assert "a-src" in seen, source
        assert "b-src" not in seen, source
        assert app.request("GET", "/orders/b-src", **source).status_code == 404
    with sse(app, ALICE) as stream:  # EventSource: the token on the query
        blocks = stream.until(is_initial_end)
    events = [envelope(b) for b in blocks if b.data]
    seen = {e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"}
    assert "a-src" in seen
    assert "b-src" not in seen
    for protocols in ([PROTOCOL, f"bearer.{ALICE}"], [PROTOCOL, k8s(ALICE)]):
        with ws(app, subprotocols=protocols) as conn:
            assert conn.subprotocol == PROTOCOL  # the token is never echoed
            first = json.loads(conn.recv(timeout=READ_TIMEOUT))
            assert first["object"]["metadata"]["labels"]["owner"] == "alice"
    with ws(app, additional_headers=bearer(ALICE)) as conn:
        assert json.loads(conn.recv(timeout=READ_TIMEOUT))["type"] in ("ADDED", "BOOKMARK")
    # a write never takes the query token (it would end up in access logs and histories)
    refused = app.request("POST", "/orders", params={"access_token": ALICE}, json=owned("a-q"))
    assert_401(refused)


@pytest.mark.parametrize(
    "headers",
    [{}, bearer(WRONG), {"authorization": "Basic dTpw"}, {"cookie": f"token={WRONG}"}],
    ids=["none", "wrong", "scheme", "cookie"],
)
def test_missing_and_wrong_credentials_are_the_same_401_everywhere(
    secured: Secured, headers: dict[str, str]
) -> None:
    app = secured
    asks: list[dict[str, Any]] = [
        {},
        {"params": {"watch": "true"}},
        {"params": {"watch": "true", "feed": "longpoll", "timeoutSeconds": "1"}},
        {"headers": {"accept": "text/event-stream"}},
    ]
    for ask in asks:
        merged = {**ask.get("headers", {}), **headers}
        assert_401(app.request("GET", "/orders", params=ask.get("params"), headers=merged))
    assert_401(app.request("GET", "/orders/a-src", headers=headers))
    assert_401(app.request("POST", "/orders", json=owned("x"), headers=headers))
    assert_401(app.request("DELETE", "/orders/x", headers=headers))
    subprotocols = [PROTOCOL] + ([f"bearer.{WRONG}"] if headers else [])
    with ws(app, subprotocols=subprotocols) as conn:
        assert close_of(conn) == (4401, GENERIC)


def test_ownership_of_writes(secured: Secured) -> None:
    app = secured
    created = create(app, "a-own", ALICE)
    assert created["metadata"]["labels"]["owner"] == "alice"  # set when absent
    forged = app.request("POST", "/orders", json=owned("a-x", "bob"), headers=bearer(ALICE))
    assert forged.status_code == 403, forged.text
    assert forged.json()["reason"] == "Forbidden"
    missing = app.request("DELETE", "/orders/nope", headers=bearer(BOB))
    # someone else's order is exactly as missing as one that does not exist
    for method in ("DELETE", "PUT", "PATCH"):
        kwargs: dict[str, Any] = {"headers": bearer(BOB)}
        if method != "DELETE":
            kwargs["json"] = owned("a-own", "bob")
        response = app.request(method, "/orders/a-own", **kwargs)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["reason"] == missing.json()["reason"] == "NotFound"
        assert response.json()["message"] == missing.json()["message"].replace("nope", "a-own")
    assert "a-own" in names(app, ALICE)
    put = app.request("PUT", "/orders/a-own", json=owned("a-own"), headers=bearer(ALICE))
    assert put.status_code == 200, put.text
    assert put.json()["metadata"]["labels"]["owner"] == "alice"  # a PUT keeps its owner


@pytest.mark.parametrize("transport", ["sse", "jsonlines", "longpoll", "websocket"])
def test_visibility_and_moves_on_every_transport(secured: Secured, transport: str) -> None:
    """Alice sees her orders only; when she hands one to Bob, her watch gets DELETED (the
    previous object) and his ADDED; Bob's changes never reach her."""
    app = secured
    tag = transport[:2]
    mine, theirs = create(app, f"a-{tag}", ALICE), create(app, f"b-{tag}", BOB)
    start = mine["metadata"]["resourceVersion"]

    def changes() -> str:
        app.request(
            "PATCH",
            f"/orders/b-{tag}",
            json={"spec": {"qty": 5}},
            headers={**bearer(BOB), "content-type": "application/merge-patch+json"},
        )
        moved = move(app, f"a-{tag}", ALICE, "bob")
        assert moved.status_code == 200, moved.text
        return str(moved.json()["metadata"]["resourceVersion"])

    got: list[tuple[str, str]] = []
    event: Any = None
    query = {"resourceVersion": start}
    if transport == "sse":
        with sse(app, ALICE, **query) as stream:
            rv = changes()
            data = stream.data_events(1)
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in data]
    elif transport == "jsonlines":
        params = {**query, "watch": "true"}
        with app.client.stream("GET", "/orders", params=params, headers=bearer(ALICE)) as r:
            assert r.status_code == 200
            rv = changes()
            lines = r.iter_lines()
            event = json.loads(next(line for line in lines if line.strip()))
        got = [(event["type"], event["object"]["metadata"]["name"])]
    elif transport == "longpoll":
        rv = changes()
        params = {**query, "watch": "true", "feed": "longpoll", "timeoutSeconds": "1"}
        answer = app.request("GET", "/orders", params=params, headers=bearer(ALICE)).json()
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in answer["events"]]
    else:
        with ws(app, subprotocols=[PROTOCOL, f"bearer.{ALICE}"]) as conn:
            conn.send(json.dumps({"op": "watch", "id": "w", "resourceVersion": start}))
            rv = changes()
            message = json.loads(conn.recv(timeout=READ_TIMEOUT))
            while message.get("id") != "w":
                message = json.loads(conn.recv(timeout=READ_TIMEOUT))
        got = [(message["type"], message["object"]["metadata"]["name"])]
        event = message
    assert got == [("DELETED", f"a-{tag}")], got
    assert theirs["metadata"]["name"] not in {name for _, name in got}
    if transport == "jsonlines":  # the DELETED carries the previous object, stamped
        assert event["object"]["metadata"]["labels"]["owner"] == "alice"
        assert event["object"]["metadata"]["resourceVersion"] == rv
    assert f"a-{tag}" in names(app, BOB)
    assert f"a-{tag}" not in names(app, ALICE)


def test_a_selector_for_someone_elses_orders_is_refused_per_subscription(
    secured: Secured,
) -> None:
    """``authorize`` refuses a watch that asks for Bob's orders (403 on every transport, the
    subscription's ERROR on a WebSocket, which stays open); asking for one's own is let in,
    narrowed by the forced ``owner=<user>`` selector."""
    app = secured
    create(app, "a-sel", ALICE)
    create(app, "b-sel", BOB)
    theirs = {"labelSelector": "owner=bob"}
    asks: list[dict[str, Any]] = [
        {"params": theirs},
        {"params": {**theirs, "watch": "true"}},
        {"params": {**theirs, "watch": "true", "feed": "longpoll", "timeoutSeconds": "1"}},
        {"params": theirs, "headers": {"accept": "text/event-stream"}},
    ]
    for ask in asks:
        headers = {**bearer(ALICE), **ask.get("headers", {})}
        refused = app.request("GET", "/orders", params=ask["params"], headers=headers)
        assert refused.status_code == 403, (ask, refused.text)
        assert refused.json()["reason"] == "Forbidden"
    own = {"labelSelector": "owner=alice", "watch": "true", "feed": "longpoll"}
    answer = app.request("GET", "/orders", params=own, headers=bearer(ALICE)).json()
    names = {e["object"]["metadata"]["name"] for e in answer["events"]}
    assert "a-sel" in names
    assert "b-sel" not in names
    with ws(app, subprotocols=[PROTOCOL, f"bearer.{ALICE}"]) as conn:
        conn.send(json.dumps({"op": "watch", "id": "theirs", "labelSelector": "owner=bob"}))
        conn.send(json.dumps({"op": "watch", "id": "mine", "key": "a-sel"}))
        seen: dict[str, Any] = {}
        while len(seen) < 2:
            message = json.loads(conn.recv(timeout=READ_TIMEOUT))
            if message.get("id") in ("theirs", "mine"):
                seen.setdefault(message["id"], message)
    assert (seen["theirs"]["type"], seen["theirs"]["object"]["code"]) == ("ERROR", 403)
    assert seen["mine"]["object"]["metadata"]["name"] == "a-sel"


def test_a_move_is_an_added_for_the_new_owner(secured: Secured) -> None:
    app = secured
    create(app, "a-gift", ALICE)
    params = {"watch": "true", "sendInitialEvents": "false"}
    with app.client.stream("GET", "/orders", params=params, headers=bearer(BOB)) as response:
        assert response.status_code == 200
        assert move(app, "a-gift", ALICE, "bob").status_code == 200
        event = json.loads(next(line for line in response.iter_lines() if line.strip()))
    assert (event["type"], event["object"]["metadata"]["labels"]["owner"]) == ("ADDED", "bob")


def test_watches_per_user_limit(secured: Secured) -> None:
    app = secured
    # (the held watches end on the server's side: a WSGI server or aiohttp notices a client
    # that left only at its next write, within a heartbeat)
    params = {"watch": "true", "sendInitialEvents": "false", "timeoutSeconds": "2"}
    with contextlib.ExitStack() as stack:
        for _ in range(LIMIT):
            opened = stack.enter_context(
                app.client.stream("GET", "/orders", params=params, headers=bearer(ALICE))
            )
            assert opened.status_code == 200
        refused = app.request("GET", "/orders", params=params, headers=bearer(ALICE))
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["reason"] == "TooManyRequests"
        assert refused.json()["details"]["retryAfterSeconds"] >= 1
        with app.client.stream("GET", "/orders", params=params, headers=bearer(BOB)) as other:
            assert other.status_code == 200  # the limit is per user
        assert app.request("GET", "/orders", headers=bearer(ALICE)).status_code == 200  # lists
    deadline = time.monotonic() + READ_TIMEOUT  # closed watches free their places
    status = 0
    while status != 200 and time.monotonic() < deadline:
        with app.client.stream("GET", "/orders", params=params, headers=bearer(ALICE)) as again:
            status = again.status_code
        if status != 200:
            time.sleep(0.2)
    assert status == 200


def test_cors_preflight_and_headers(secured: Secured) -> None:
    app = secured
    ask = {
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization",
    }
    for path in ("/orders", "/orders/a-src"):
        listed = app.client.options(path, headers={"origin": ORIGIN, **ask})
        assert listed.status_code in (200, 204), listed.text
        assert listed.headers["access-control-allow-origin"] == ORIGIN
        assert "Origin" in listed.headers["vary"]
        allowed = {
            h.strip().lower() for h in listed.headers["access-control-allow-headers"].split(",")
        }
        assert {"authorization", "last-event-id", "accept"} <= allowed
        assert "access-control-allow-credentials" not in listed.headers
        unlisted = app.client.options(path, headers={"origin": "https://evil.example", **ask})
        assert "access-control-allow-origin" not in unlisted.headers
        absent = app.client.options(path, headers=ask)
        assert "access-control-allow-origin" not in absent.headers
    headers = {"origin": ORIGIN, "accept": "text/event-stream"}
    params = {"access_token": ALICE, "timeoutSeconds": "1"}
    with app.client.stream("GET", "/orders", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "*" not in response.headers["access-control-allow-origin"]
    headers["origin"] = "https://evil.example"
    with app.client.stream("GET", "/orders", params=params, headers=headers) as response:
        assert "access-control-allow-origin" not in response.headers


def test_websocket_origin(secured: Secured) -> None:
    app = secured
    host = app.server.base_url.removeprefix("http://")
    # (Bob: Alice's watches of the limit test may still hold her places on a server that
    # notices a departed client only at its next write)
    protocols = [PROTOCOL, f"bearer.{BOB}"]
    for origin in ("http://evil.example", ORIGIN):  # CORS does not open the WebSocket
        with ws(app, subprotocols=protocols, origin=origin) as conn:
            assert close_of(conn) == (4403, "origin not allowed")
    with ws(app, subprotocols=protocols, origin=f"http://{host}") as conn:
        message = json.loads(conn.recv(timeout=READ_TIMEOUT))
        assert message["type"] in ("ADDED", "BOOKMARK"), json.dumps(message)


def test_zz_no_token_in_error_bodies_or_metrics(secured: Secured) -> None:
    """Runs last in the module: every error body seen, and /metrics (the log is checked at
    teardown)."""
    app = secured
    assert app.bodies, "the tests above saw no error body"
    metrics = app.client.get("/metrics").text
    for token in TOKENS:
        assert token not in metrics
        for body in app.bodies:
            assert token not in body, body


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_expired_sse_then_browser_style_reconnect(framework: str) -> None:
    """The stream ends with a bookmark and the 401 ERROR (no id); a reconnect with the last
    id and a fresh token (EventSource's Last-Event-ID) resumes exactly after it."""
    server = Server.start(framework, "--heartbeat", "30", "--users", USERS, "--token-ttl", "1.5")
    try:
        app = Secured(server)
        create(app, "a-exp-1", ALICE)
        with sse(app, ALICE) as stream:
            stream.until(is_initial_end)
            create(app, "a-exp-2", ALICE)
            blocks = stream.rest(timeout=READ_TIMEOUT)
        last = blocks[-1]
        assert last.id is None
        error = envelope(last)
        assert error["type"] == "ERROR"
        assert (error["object"]["code"], error["object"]["reason"]) == (401, "Unauthorized")
        assert error["object"]["message"] == "credentials expired"
        last_id = [b.id for b in blocks if b.id][-1]
        create(app, "a-exp-3", ALICE)  # while the client was away
        headers = {"accept": "text/event-stream", "last-event-id": last_id}
        params = {"access_token": ALICE}
        with app.client.stream("GET", "/orders", params=params, headers=headers) as response:
            assert response.status_code == 200
            resumed = SSEStream(response)
            (event,) = resumed.data_events(1)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "a-exp-3")
        # a WebSocket's credentials expire the same way: its close says so
        with ws(app, subprotocols=[PROTOCOL, f"bearer.{ALICE}"]) as conn:
            assert close_of(conn, timeout=READ_TIMEOUT) == (4401, "credentials expired")
        for body in app.bodies:
            assert ALICE not in body
    finally:
        _stop(server)
