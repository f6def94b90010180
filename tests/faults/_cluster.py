"""The processes of a fault run: example-app nodes on one shared log, and (Redis) a private
``redis-server`` that can be killed and restarted, empty or from its AOF.

Nodes are the conformance suite's :class:`Server` (``python -m examples``); a node that a fault
killed is started again (on a new port), the others stay up for the whole run.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import redis

from .._services import SERVICES, reachable
from ..conformance._support import EXIT_TIMEOUT, Server, shared_log
from ..conformance.test_redis_faults import PrivateRedis

ENGINES: Final = ("redis", "postgres", "nats")
#: Node frameworks, in start order: Starlette (uvicorn) and aiohttp mixed on one log.
FRAMEWORKS: Final = ("starlette", "aiohttp", "starlette")


class Node:
    """One example-app process; ``state`` is ``up``, ``paused`` (SIGSTOP) or ``down``."""

    def __init__(self, index: int, framework: str, args: tuple[str, ...]) -> None:
        self.index = index
        self.framework = framework
        self.args = args
        self.server: Server | None = None
        self.state = "down"
        self.url = ""
        self.logs: list[str] = []
        self.starts = 0

    def __repr__(self) -> str:
        return f"node{self.index}({self.framework}, {self.state})"

    def start(self) -> None:
        assert self.server is None
        self.server = Server.start(self.framework, *self.args)
        self.server.client.close()  # requests go through the run's own clients
        self.url = self.server.base_url
        self.state = "up"
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        server = self._take()
        server.process.kill()
        server.process.wait(EXIT_TIMEOUT)
        self._collect(server)

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown (the server ends its streams), bounded by 10 s."""
        server = self._take()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(EXIT_TIMEOUT)
        except Exception:
            server.process.kill()
            server.process.wait(EXIT_TIMEOUT)
            self.logs.append(f"node{self.index} did not exit within {EXIT_TIMEOUT} s of SIGTERM")
        self._collect(server)

    def pause(self) -> None:
        assert self.server is not None
        self.server.process.send_signal(signal.SIGSTOP)
        self.state = "paused"

    def resume(self) -> None:
        if self.server is not None and self.state == "paused":
            self.server.process.send_signal(signal.SIGCONT)
            self.state = "up"

    def close(self) -> None:
        self.resume()
        if self.server is not None:
            self.terminate()

    def _take(self) -> Server:
        server = self.server
        assert server is not None
        if self.state == "paused":
            server.process.send_signal(signal.SIGCONT)
        self.server = None
        self.state = "down"
        self.url = ""
        return server

    def _collect(self, server: Server) -> None:
        assert server.process.stdout is not None
        server.process.stdout.close()
        stderr = server._stderr
        stderr.seek(0)
        self.logs.append(stderr.read().decode(errors="replace"))
        stderr.close()


class Cluster:
    """The shared log of one run and the nodes on it."""

    def __init__(self, engine: str, *, nodes: int, retention: int, heartbeat: float) -> None:
        if engine not in ENGINES:
            raise ValueError(f"no engine {engine!r}; one of {', '.join(ENGINES)}")
        self.engine = engine
        self.retention = retention
        self.lock = threading.Lock()
        self.private: PrivateRedis | None = None
        self.prefix = ""
        self._directory: Path | None = None
        self._remove: Callable[[], None] | None = None
        if engine == "redis":
            self._directory = Path(tempfile.mkdtemp(prefix="watchroutes-faults-"))
            self.private = PrivateRedis(self._directory)
            self.private.start()
            self.prefix = f"faults_{uuid.uuid4().hex[:12]}"
            url = f"{self.private.url}?prefix={self.prefix}"
        else:
            url, self._remove = shared_log(engine)
        self.url = url
        args = ("--backend", url, "--retention", str(retention), "--heartbeat", str(heartbeat))
        self.nodes = [Node(i, FRAMEWORKS[i % len(FRAMEWORKS)], args) for i in range(nodes)]

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(Node.start, self.nodes))

    def restart(self, nodes: list[Node]) -> None:
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            failures = [f.exception() for f in [pool.submit(n.start) for n in nodes]]
        for failure in failures:
            if failure is not None:
                raise failure

    def urls(self, *, paused: bool = False) -> list[str]:
        """The base URLs of the running nodes (and of the paused ones with ``paused``)."""
        with self.lock:
            states = ("up", "paused") if paused else ("up",)
            return [n.url for n in self.nodes if n.state in states and n.url]

    def pick(self, rng: random.Random, *, paused_chance: float = 0.0) -> str | None:
        urls = self.urls(paused=rng.random() < paused_chance)
        return rng.choice(urls) if urls else None

    # -- Redis faults ----------------------------------------------------------------------

    def kill_redis(self) -> None:
        assert self.private is not None
        self.private.kill()

    def start_redis(self, *, empty: bool) -> None:
        assert self.private is not None
        assert self._directory is not None
        if empty:
            for child in self._directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        self.private.start()

    def epoch_start(self, timeout: float = 20.0) -> int | None:
        """The first rv of the Redis log's current epoch (a new one after an empty restart),
        once a node has opened it."""
        assert self.private is not None
        client = redis.Redis(port=self.private.port, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    start = client.hget(f"{{{self.prefix}}}:meta", "start")
                    if start is not None:
                        return int(start)
                time.sleep(0.05)
        finally:
            client.close()
        return None

    def close(self) -> list[str]:
        """Stop every node, remove the log; returns the nodes' logs."""
        logs: list[str] = []
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
            logs += node.logs
        private = self.private
        if private is not None and private.process is not None and private.process.poll() is None:
            private.kill()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        if self._remove is not None:
            with contextlib.suppress(Exception):
                self._remove()
        return logs


def available(engine: str) -> str | None:
    """Why ``engine`` cannot run here, or ``None``."""
    if engine == "redis":
        if shutil.which("redis-server") is None:
            return "redis-server is not installed"
        return None
    host, port = SERVICES[engine]
    if not reachable(host, port):
        return f"{engine} is not running on {host}:{port}"
    return None


__all__ = ["ENGINES", "Cluster", "Node", "available"]
