"""The shared-log scenarios of ``test_shared_log`` on a cluster of *different* adapters: a
Flask (gunicorn), a Django (uvicorn) and a Starlette process on one Redis log. Publish on
Flask, watch on Django and Starlette, kill Django mid-stream and resume on Starlette; publish
from Flask and Django at once; SIGTERM the Flask process with a watcher of every transport and
resume each on Django.

This is the shared-log variant of the Flask and Django apps: what a shared log changes for an
adapter (the hub's follower in a background thread under WSGI, writes from request threads,
seeding, shutdown) is exercised here, across adapters, while the shared log's own semantics
run through the whole suite on ``starlette-redis`` and ``aiohttp-redis``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ._support import Server, shared_log
from .test_shared_log import (
    killed,
    test_a_client_killed_with_its_server_resumes_on_another_exactly,
    test_concurrent_publishers_on_two_processes_share_one_order,
    test_shutdown_ends_every_transport_and_each_client_resumes_on_another_server,
)

pytestmark = pytest.mark.network

__all__ = [
    "test_a_client_killed_with_its_server_resumes_on_another_exactly",
    "test_concurrent_publishers_on_two_processes_share_one_order",
    "test_shutdown_ends_every_transport_and_each_client_resumes_on_another_server",
]

#: The first server of a test is Flask, the second Django, the third Starlette.
ORDER = ("flask", "django", "starlette")


@pytest.fixture
def cluster() -> Iterator[Callable[[], Server]]:
    """Flask, Django and Starlette processes on one fresh Redis log, in that order."""
    url, remove = shared_log("redis")
    servers: list[Server] = []

    def start() -> Server:
        framework = ORDER[len(servers) % len(ORDER)]
        server = Server.start(framework, "--backend", url, "--heartbeat", "30")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        logs = [s.stop() for s in servers if s not in killed]
        remove()
        assert not [log for log in logs if "Traceback" in log], logs
