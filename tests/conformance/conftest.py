"""Fixtures: real uvicorn servers of every example app (``python -m examples FRAMEWORK``).

``framework`` parametrizes every test over the example apps. ``launch(*flags)`` starts a
server with extra command-line flags; at teardown each server gets SIGTERM and must exit
within 10 s with status 0 or -SIGTERM, and must not have logged a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._support import FRAMEWORKS, Launch, Server


@pytest.fixture(scope="session", params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _stop_all(servers: list[Server], *, allow_tracebacks: bool) -> None:
    failures: list[str] = []
    for server in servers:
        try:
            log = server.stop()
        except AssertionError as exc:
            failures.append(f"{server.framework} {server.args}: {exc}")
            continue
        if "Traceback" in log and not allow_tracebacks:
            failures.append(f"{server.framework} {server.args} logged a traceback:\n{log}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def launch(framework: str, request: pytest.FixtureRequest) -> Iterator[Launch]:
    """Start servers of the parametrized framework; stops and checks them at teardown."""
    servers: list[Server] = []

    def start(*flags: str) -> Server:
        server = Server.start(framework, *flags)
        servers.append(server)
        return server

    yield start
    _stop_all(servers, allow_tracebacks=request.node.get_closest_marker("xfail") is not None)


@pytest.fixture
def server(launch: Launch) -> Server:
    """A fresh server with a long heartbeat (nothing periodic gets in the way)."""
    return launch("--heartbeat", "30")


@pytest.fixture
def seeded(launch: Launch) -> Server:
    """A fresh server holding o-1 (us), o-2 (apac) and o-3 (eu)."""
    return launch("--heartbeat", "30", "--seed", "3")


@pytest.fixture
def fast_server(launch: Launch) -> Server:
    """A fresh server with a 0.5 s heartbeat/bookmark interval."""
    return launch("--heartbeat", "0.5")


@pytest.fixture(scope="module")
def shared_server(framework: str) -> Iterator[Server]:
    """One server per module and framework, for tests that never write."""
    server = Server.start(framework, "--heartbeat", "30", "--seed", "3")
    yield server
    _stop_all([server], allow_tracebacks=False)
