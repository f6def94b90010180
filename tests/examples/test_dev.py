"""``python3 dev.py demo FRAMEWORK``: every framework the examples have, and a SIGTERM to
``dev.py`` stops the server (it replaces itself with it), freeing the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from examples.__main__ import FRAMEWORKS

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_demo_serves_every_framework_and_stops_on_sigterm(framework: str) -> None:
    port = free_port()
    # (WATCHROUTES_DEV_SETUP=0: use the test run's .venv as it is, without reinstalling)
    env = {**os.environ, "WATCHROUTES_DEV_SETUP": "0", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "dev.py", "demo", framework, "--port", str(port), "--seed", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        lines = []
        for _ in range(50):  # (log lines may come first; each read is bounded by the timeout)
            lines.append(process.stdout.readline().decode())
            if lines[-1].startswith("ready") or not lines[-1]:
                break
        assert lines[-1].strip() == f"ready http://127.0.0.1:{port}", lines
        response = httpx.get(f"http://127.0.0.1:{port}/orders", timeout=5, trust_env=False)
        assert response.status_code == 200
        assert len(response.json()["items"]) == 2
        process.send_signal(signal.SIGTERM)  # to dev.py's pid: the server itself
        assert process.wait(15) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not port_is_free(port):
            assert time.monotonic() < deadline, f"port {port} still in use after the exit"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
