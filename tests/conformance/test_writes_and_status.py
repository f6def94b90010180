"""protocol.md §6 (the orders app's writes) and 3.5 (the Status body of every error)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ._support import (
    STATUS_KEYS,
    Server,
    assert_status,
    name_of,
    order,
    rv_of,
)

pytestmark = pytest.mark.network

MERGE = {"content-type": "application/merge-patch+json"}


def _put(server: Server, name: str, body: Any) -> httpx.Response:
    return server.client.put(f"/orders/{name}", json=body)


def test_post_creates_201_with_the_stored_object(server: Server) -> None:
    response = server.client.post("/orders", json=order("o-1", "eu", qty=2))
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    rv = rv_of(created)
    assert created == {
        "metadata": {"name": "o-1", "labels": {"region": "eu"}, "resourceVersion": str(rv)},
        "spec": {"item": "book", "qty": 2},
        "status": {"phase": "new"},
    }
    objects, head = server.state()
    assert objects == {"o-1": created}
    assert head == rv


def test_post_of_an_existing_name_is_409_already_exists(server: Server) -> None:
    server.create("o-1")
    response = server.client.post("/orders", json=order("o-1", "us"))
    assert_status(response, 409, "AlreadyExists", "o-1")
    objects, _ = server.state()
    assert objects["o-1"]["metadata"]["labels"] == {"region": "eu"}


def test_put_replaces_200(server: Server) -> None:
    created = server.create("o-1")
    body = order("o-1", "us", qty=5)
    response = _put(server, "o-1", body)
    assert response.status_code == 200
    replaced = response.json()
    assert rv_of(replaced) > rv_of(created)
    assert replaced["spec"] == {"item": "book", "qty": 5}
    assert replaced["metadata"]["labels"] == {"region": "us"}
    assert server.state()[0]["o-1"] == replaced


def test_put_of_a_missing_object_is_404(server: Server) -> None:
    assert_status(_put(server, "o-9", order("o-9")), 404, "NotFound", "o-9")


def test_put_with_a_different_name_is_400(server: Server) -> None:
    server.create("o-1")
    assert_status(_put(server, "o-1", order("o-2")), 400, "BadRequest", "o-2")


@pytest.mark.parametrize("media", ["application/merge-patch+json", "application/json"])
def test_patch_applies_a_json_merge_patch(server: Server, media: str) -> None:
    created = server.create("o-1", qty=1)
    patch = {"spec": {"qty": 4, "item": None}, "status": {"phase": "paid"}}
    response = server.client.patch(
        "/orders/o-1", content=json.dumps(patch), headers={"content-type": media}
    )
    assert response.status_code == 200
    patched = response.json()
    assert patched["spec"] == {"qty": 4}  # null removes the key (RFC 7386)
    assert patched["status"] == {"phase": "paid"}
    assert patched["metadata"]["labels"] == created["metadata"]["labels"]
    assert rv_of(patched) > rv_of(created)


def test_patch_with_text_plain_is_415(server: Server) -> None:
    server.create("o-1")
    response = server.client.patch(
        "/orders/o-1", content=b'{"spec":{"qty":3}}', headers={"content-type": "text/plain"}
    )
    assert_status(response, 415, "UnsupportedMediaType")


def test_patch_of_a_missing_object_is_404(server: Server) -> None:
    response = server.client.patch("/orders/o-9", content=b"{}", headers=MERGE)
    assert_status(response, 404, "NotFound", "o-9")


def test_delete_200_stamped_with_the_deletion_rv(server: Server) -> None:
    created = server.create("o-1")
    with server.lines(params={"resourceVersion": str(rv_of(created)), "timeoutSeconds": "5"}) as s:
        response = server.client.delete("/orders/o-1")
        event = s.next()
    assert response.status_code == 200
    deleted = response.json()
    rv = rv_of(deleted)
    assert rv > rv_of(created)
    assert {**deleted, "metadata": {**deleted["metadata"], "resourceVersion": "x"}} == {
        **created,
        "metadata": {**created["metadata"], "resourceVersion": "x"},
    }
    assert event == {"type": "DELETED", "object": deleted, "resourceVersion": str(rv)}
    objects, head = server.state()
    assert objects == {}
    assert head == rv
    assert_status(server.client.delete("/orders/o-1"), 404, "NotFound", "o-1")


def test_delete_then_plain_get_is_404(server: Server, request: pytest.FixtureRequest) -> None:
    server.create("o-1")
    server.delete("o-1")
    assert_status(server.client.get("/orders/o-1"), 404, "NotFound", "o-1")


def test_stale_resource_version_is_409_conflict(server: Server) -> None:
    created = server.create("o-1")
    current = server.patch("o-1", {"spec": {"qty": 2}})
    stale = created["metadata"]["resourceVersion"]

    body = order("o-1", qty=3)
    body["metadata"]["resourceVersion"] = stale
    assert_status(_put(server, "o-1", body), 409, "Conflict", stale)

    patch = {"metadata": {"resourceVersion": stale}, "spec": {"qty": 3}}
    response = server.client.patch("/orders/o-1", content=json.dumps(patch), headers=MERGE)
    assert_status(response, 409, "Conflict", stale)
    assert server.state()[0]["o-1"] == current  # nothing was written

    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    response = _put(server, "o-1", body)
    assert response.status_code == 200
    patch["metadata"]["resourceVersion"] = response.json()["metadata"]["resourceVersion"]
    response = server.client.patch("/orders/o-1", content=json.dumps(patch), headers=MERGE)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/orders", b"[1, 2]"),
        ("POST", "/orders", b'"o-1"'),
        ("POST", "/orders", b"null"),
        ("POST", "/orders", b"not json"),
        ("POST", "/orders", b""),
        ("PUT", "/orders/o-1", b"[]"),
        ("PUT", "/orders/o-1", b"{"),
        ("PATCH", "/orders/o-1", b"[]"),
        ("PATCH", "/orders/o-1", b"42"),
    ],
)
def test_bodies_that_are_not_json_objects_are_400(
    shared_server: Server, method: str, path: str, body: bytes
) -> None:
    server = shared_server  # holds o-1; nothing here writes
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    response = server.client.request(
        method, path, content=body, headers={"content-type": content_type}
    )
    assert_status(response, 400, "BadRequest")


def test_post_without_a_name_is_400(server: Server) -> None:
    response = server.client.post("/orders", json={"metadata": {}, "spec": {}})
    assert_status(response, 400, "BadRequest", "metadata.name")


def test_writes_reach_watchers_in_order(server: Server) -> None:
    with server.lines(params={"timeoutSeconds": "5"}) as stream:
        a = server.create("a")
        b = server.patch("a", {"spec": {"qty": 2}})
        c = _put(server, "a", order("a", qty=3)).json()
        d = server.delete("a")
        events = stream.take(4)
    assert [(e["type"], name_of(e), e["object"]) for e in events] == [
        ("ADDED", "a", a),
        ("MODIFIED", "a", b),
        ("MODIFIED", "a", c),
        ("DELETED", "a", d),
    ]


def _raw_status(response: httpx.Response, code: int, reason: str) -> None:
    assert response.status_code == code, response.text
    prefix = b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","code":%d,' % (
        code
    )
    assert response.content.startswith(prefix + b'"reason":"%s","message":"' % reason.encode())
    status = response.json()
    assert list(status) == STATUS_KEYS
    assert "Traceback" not in status["message"]
    assert "/work/" not in status["message"]


@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "body", "code", "reason"),
    [
        ("GET", "/orders", {"watch": "1", "resourceVersion": "x"}, {}, None, 400, "BadRequest"),
        ("GET", "/orders", {"labelSelector": "a in ("}, {}, None, 400, "BadRequest"),
        ("GET", "/nowhere", {}, {}, None, 404, "NotFound"),
        ("POST", "/orders", {}, {}, b'{"metadata":{"name":"o-1"}}', 409, "AlreadyExists"),
        ("PUT", "/orders/o-404", {}, {}, b'{"metadata":{"name":"o-404"}}', 404, "NotFound"),
        (
            "PUT",
            "/orders/o-1",
            {},
            {},
            b'{"metadata":{"name":"o-1","resourceVersion":"1"}}',
            409,
            "Conflict",
        ),
        (
            "PATCH",
            "/orders/o-1",
            {},
            {"content-type": "text/plain"},
            b"{}",
            415,
            "UnsupportedMediaType",
        ),
        ("POST", "/orders/o-1", {}, {}, b"{}", 405, "MethodNotAllowed"),
        ("DELETE", "/orders", {}, {}, None, 405, "MethodNotAllowed"),
        # bodies over the example's 1 MiB limit: just over it, and far over it (which aiohttp
        # refuses before the app reads it)
        ("POST", "/orders", {}, {}, b" " * (1024 * 1024 + 1), 413, "RequestEntityTooLarge"),
        ("PUT", "/orders/o-1", {}, {}, b" " * (4 * 1024 * 1024), 413, "RequestEntityTooLarge"),
    ],
)
def test_status_body_exact_key_order(
    shared_server: Server,
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    body: bytes | None,
    code: int,
    reason: str,
) -> None:
    # The shared server holds o-1; none of these requests writes anything.
    response = shared_server.client.request(
        method, path, params=params, headers=headers, content=body
    )
    _raw_status(response, code, reason)


def test_status_of_a_missing_object_get(server: Server, request: pytest.FixtureRequest) -> None:
    _raw_status(server.client.get("/orders/o-404"), 404, "NotFound")
