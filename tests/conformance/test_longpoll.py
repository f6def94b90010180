"""Long poll (protocol.md §3.6) against every example app: the body, the cursor, the wait, the
limit, the timeout and Expired."""

from __future__ import annotations

import threading
import time
from typing import Any

from ._support import Launch, Server, assert_status, name_of

POLL = {"watch": "true", "feed": "longpoll"}


def poll(server: Server, **params: str) -> Any:
    response = server.client.get("/orders", params={**POLL, **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["events", "resourceVersion"]
    return body


def test_initial_state_then_the_cursor(seeded: Server) -> None:
    first = poll(seeded)
    assert [(e["type"], name_of(e)) for e in first["events"]] == [
        ("ADDED", "o-1"),
        ("ADDED", "o-2"),
        ("ADDED", "o-3"),
    ]
    assert first["resourceVersion"] == first["events"][-1]["resourceVersion"]
    changed = seeded.patch("o-2", {"spec": {"qty": 5}})
    second = poll(seeded, resourceVersion=first["resourceVersion"])
    assert [e["type"] for e in second["events"]] == ["MODIFIED"]
    assert second["resourceVersion"] == changed["metadata"]["resourceVersion"]


def test_waits_for_the_first_change(server: Server) -> None:
    start = str(server.head())
    result: list[Any] = []
    waiter = threading.Thread(
        target=lambda: result.append(poll(server, resourceVersion=start, timeoutSeconds="10"))
    )
    began = time.monotonic()
    waiter.start()
    time.sleep(0.5)
    assert not result
    created = server.create("a")
    waiter.join(10)
    assert time.monotonic() - began < 5
    (event,) = result[0]["events"]
    assert event["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_timeout_without_a_match_still_advances(server: Server) -> None:
    start = str(server.head())
    server.create("a", "us")
    body = poll(server, resourceVersion=start, labelSelector="region=eu", timeoutSeconds="1")
    assert body["events"] == []
    assert int(body["resourceVersion"]) > int(start)  # complete through the head


def test_limit_cuts_and_the_cursor_continues(server: Server) -> None:
    start = str(server.head())
    for name in ("a", "b", "c"):
        server.create(name)
    first = poll(server, resourceVersion=start, limit="2")
    assert [name_of(e) for e in first["events"]] == ["a", "b"]
    assert first["resourceVersion"] == first["events"][-1]["resourceVersion"]
    rest = poll(server, resourceVersion=first["resourceVersion"], limit="2")
    assert [name_of(e) for e in rest["events"]] == ["c"]


def test_expired_and_bad_parameters(launch: Launch) -> None:
    server = launch("--heartbeat", "30", "--retention", "2")
    server.create("a")
    start = str(server.head())
    for qty in range(4):
        server.patch("a", {"spec": {"qty": qty}})
    response = server.client.get("/orders", params={**POLL, "resourceVersion": start})
    assert_status(response, 410, "Expired", start)
    for name, value in (("limit", "0"), ("limit", "10001"), ("timeoutSeconds", "-1")):
        response = server.client.get("/orders", params={**POLL, name: value})
        assert_status(response, 400, "BadRequest", name)
