"""The real servers some tests need (Redis, PostgreSQL, NATS on 127.0.0.1).

A plain developer run skips those tests when a server is down; under CI (``CI`` set) a missing
server fails them, so a broken machine can never pass by skipping (``.ci/run`` starts them).
"""

from __future__ import annotations

import os
import socket

import pytest

SERVICES = {
    "redis": ("127.0.0.1", 6379),
    "postgres": ("127.0.0.1", 5432),
    "nats": ("127.0.0.1", 4222),
}

REDIS_URL = os.environ.get("WATCHROUTES_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "WATCHROUTES_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
NATS_URL = os.environ.get("WATCHROUTES_TEST_NATS", "nats://127.0.0.1:4222")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str) -> None:
    """Skip (developer) or fail (CI) unless the named server accepts connections."""
    host, port = SERVICES[name]
    if reachable(host, port):
        return
    message = f"{name} is not running on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI requires it: .ci/run starts it)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
