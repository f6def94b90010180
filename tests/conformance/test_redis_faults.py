"""Redis failures under a running example app, on a Redis of the test's own (so it can be
killed and flushed): killed and restarted mid-stream (its AOF with ``appendfsync always``
keeps what was acknowledged), and flushed (clients start over, never across the gap)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from .._services import free_port
from ._support import READ_TIMEOUT, Server, order
from .test_shared_log import _data_events

pytestmark = pytest.mark.network

RECOVERY_TIMEOUT = 15.0  # the follower's backoff tops out at 5 s (with jitter)


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed", pytrace=False)
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(READ_TIMEOUT)

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def _until_status(server: Server, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while (response := server.client.get(path)).status_code != status:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    return response


def test_redis_killed_and_restarted_mid_stream(private_redis: PrivateRedis) -> None:
    server = Server.start("starlette", "--backend", private_redis.url, "--heartbeat", "30")
    try:
        head = str(server.head())
        acknowledged = [server.create(f"o-{i}") for i in range(5)]
        with server.sse(params={"resourceVersion": head}) as stream:
            got = _data_events(stream, 5)
            private_redis.kill()
            assert stream.rest() == []  # ended without a bookmark: resume from the last id
        assert [e["object"] for _, e in got] == acknowledged
        refused = server.client.post("/orders", json=order("x"))
        assert refused.status_code == 503
        assert refused.json()["reason"] == "ServiceUnavailable"
        assert server.client.get("/orders", params={"watch": "true"}).status_code == 503
        private_redis.start()  # the same AOF: everything acknowledged is still there
        _until_status(server, "/orders", 200)
        later = [server.create(f"p-{i}") for i in range(3)]
        with server.sse(headers={"last-event-id": got[-1][0]}) as stream:
            resumed = _data_events(stream, 3)
        assert [e["object"] for _, e in resumed] == later
        names = {o["metadata"]["name"] for o in server.list()["items"]}
        assert names == {f"o-{i}" for i in range(5)} | {f"p-{i}" for i in range(3)}
        assert server.metric("watchroutes_follower_lag_seconds") >= 0
    finally:
        server.stop()


def test_a_flushed_redis_makes_clients_start_over(private_redis: PrivateRedis) -> None:
    server = Server.start("starlette", "--backend", private_redis.url, "--heartbeat", "30")
    try:
        head = str(server.head())
        [server.create(f"o-{i}") for i in range(3)]
        with server.sse(params={"resourceVersion": head}) as stream:
            got = _data_events(stream, 3)
            private_redis.flush()
            assert stream.rest(timeout=RECOVERY_TIMEOUT) == []
        last = got[-1][0]
        _until_status(server, "/orders", 200)  # the node has loaded the new epoch
        with server.lines(params={"resourceVersion": last}) as lines:
            error = lines.next()  # kube-apiserver style: 200, then the 410 as an ERROR event
        assert error["type"] == "ERROR"
        assert error["object"]["code"] == 410
        with server.sse(headers={"last-event-id": last}) as stream:
            first = stream.next()
            while first is not None and first.data is None:
                first = stream.next()
        assert first is not None
        assert first.data is not None
        assert '"type":"RESET"' in first.data
        assert server.list()["items"] == []  # the node dropped its cache with the old epoch
    finally:
        server.stop()
