"""protocol.md §3.4: the official ``kubernetes`` Python client consumes the JSON-lines watch,
including its reconnect-and-resume from the last rv it saw (research k8s-watch.md 4.3 B)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import urllib3
from kubernetes import watch

from ._support import Server

pytestmark = pytest.mark.network

EVENTS = 12
DEADLINE = 30.0


def test_official_client_resumes_across_server_timeouts(fast_server: Server) -> None:
    server = fast_server
    server.needs_process()
    first = server.create("k-0")
    pool = urllib3.PoolManager()
    requests: list[tuple[str | None, str | None]] = []  # (rv asked, last rv yielded)
    last_seen: list[str | None] = [None]

    def list_orders(
        watch: bool = False, resource_version: str | None = None, **_: Any
    ) -> urllib3.BaseHTTPResponse:
        """The watch call: the server ends every watch after 1 s (timeoutSeconds on the URL,
        not passed to ``stream``, so the client reconnects from the last rv it saw)."""
        requests.append((resource_version, last_seen[0]))
        fields = {"watch": "true" if watch else "false", "timeoutSeconds": "1"}
        fields["allowWatchBookmarks"] = "true"
        if resource_version is not None:
            fields["resourceVersion"] = str(resource_version)
        return pool.request(
            "GET",
            server.base_url + "/orders",
            fields=fields,
            preload_content=False,
            timeout=urllib3.Timeout(connect=2.0, read=5.0),
        )

    expected: list[tuple[str, str, str]] = [("ADDED", "k-0", first["metadata"]["resourceVersion"])]
    errors: list[BaseException] = []
    done = threading.Event()

    def publish() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=5.0, trust_env=False) as post:
                for i in range(EVENTS):
                    if done.wait(0.25):
                        return
                    name = f"k-{i // 3 + 1}"
                    kind = ("ADDED", "MODIFIED", "DELETED")[i % 3]
                    if kind == "ADDED":
                        response = post.post("/orders", json=_order(name))
                    elif kind == "MODIFIED":
                        response = post.patch(
                            f"/orders/{name}",
                            content=b'{"status":{"phase":"paid"}}',
                            headers={"content-type": "application/merge-patch+json"},
                        )
                    else:
                        response = post.delete(f"/orders/{name}")
                    assert response.status_code in (200, 201), response.text
                    expected.append((kind, name, response.json()["metadata"]["resourceVersion"]))
        except BaseException as exc:
            errors.append(exc)

    seen: list[tuple[str, str, str]] = []
    bookmarks = 0
    watch_class: Any = watch.Watch  # the client has no annotations
    w = watch_class(return_type="object")
    publisher = threading.Thread(target=publish, daemon=True)
    began = time.monotonic()
    try:
        publisher.start()
        for event in w.stream(list_orders):
            assert time.monotonic() - began < DEADLINE, f"saw {seen}, expected {expected}"
            assert event is not None  # never a blank line
            obj = event["raw_object"]
            last_seen[0] = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                bookmarks += 1
            else:
                assert event["type"] in ("ADDED", "MODIFIED", "DELETED"), event
                seen.append(
                    (event["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
                )
            if len(seen) == EVENTS + 1 or errors:
                w.stop()
    finally:
        done.set()
        publisher.join(10)
        pool.clear()
    assert not errors, errors
    assert seen == expected  # every event exactly once, in order
    rvs = [int(rv) for _, _, rv in seen]
    assert rvs == sorted(set(rvs))
    # The client reconnected several times, each time from the last rv it had seen.
    assert len(requests) >= 3, requests
    assert requests[0] == (None, None)
    for asked, last in requests[1:]:
        assert asked is not None
        assert asked == last, requests
    assert bookmarks >= 1


def _order(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"region": "eu"}},
        "spec": {"item": "book", "qty": 1},
        "status": {"phase": "new"},
    }
