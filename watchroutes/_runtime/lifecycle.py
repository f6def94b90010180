"""What a hub does when it starts and stops, besides serving: the exit signals
(:mod:`.signals`) and the warnings about a set-up that cannot work as the user expects.

``Hub.__aenter__`` calls :func:`hub_started` once the hub is running, and ``Hub.__aexit__``
calls :func:`hub_stopping` first thing.

**One log per worker.** A hub without ``backend=`` keeps its event log in the process's memory.
Under a server that runs the app in several worker processes (uvicorn ``--workers N``,
gunicorn ``-w N``, hypercorn ``-w N``, fastapi-cli ``--workers N``) every worker has its own
log: a list answers differently depending on the worker that serves it, and a watcher never
sees the writes made on another worker. The first such hub to start in a worker says so, once
per process. How a worker is recognised, most certain first:

1. the process was started by ``multiprocessing`` from the server's supervisor and the
   process's target received the server's config (uvicorn and hypercorn pass it as
   ``config=``): its ``workers`` and, for uvicorn, ``reload`` settle it;
2. gunicorn's arbiter sets ``SERVER_SOFTWARE=gunicorn/...`` in its environment, which its
   forked workers inherit;
3. the command line (``sys.argv``, which a spawned child gets from its parent, and the parent
   process's own command line where ``/proc`` shows it): ``--workers N``, ``-w N``, also in
   ``GUNICORN_CMD_ARGS``, or ``WEB_CONCURRENCY`` (the default of uvicorn's and gunicorn's
   worker count);
4. under gunicorn with the count in a config file, the parent's other children running the
   same program (Linux).
A plain process — ``uvicorn app:app``, ``--reload``, ``fastapi dev``, one worker — is not
warned.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from . import signals

if TYPE_CHECKING:
    from .node import Node

__all__ = ["freeze_startup_objects", "hub_started", "hub_stopping", "worker_server"]

logger = logging.getLogger("watchroutes")

#: Servers whose command line says how many workers they run.
SERVERS: Final = ("uvicorn", "gunicorn", "hypercorn", "fastapi", "granian")

MULTI_WORKER_WARNING: Final = (
    "watchroutes: this process is one of several workers of %s, and its hub keeps the event "
    "log in memory: each worker has its own log, so lists and watches differ between workers "
    "and a watcher never sees writes made on another worker. Share one log between them with "
    'Hub(backend="redis://..." | "postgresql://..." | "nats://..."), or run a single worker.'
)

_warned = False


def hub_started(hub: Node) -> None:
    """The hub is running on its loop: chain the exit signals, warn about one log per worker."""
    global _warned
    if hub.follower is None and not _warned:
        server = worker_server()
        if server is not None:
            _warned = True
            logger.warning(MULTI_WORKER_WARNING, server)
    if hub.handle_signals:
        signals.install(hub)


def hub_stopping(hub: Node) -> None:
    """The hub is stopping: give back the signal handlers it chained."""
    signals.restore(hub)


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now (modules, the app, its routes) out of the
    garbage collector's reach for the life of the process (``gc.freeze``): each later full
    collection scans only what was made since, which is what its pauses are made of once
    thousands of watches are open (docs/operations.md, "The garbage collector"). Called by
    ``adapters.uvicorn.Server`` (and ``adapters.aiohttp.setup(..., freeze_gc=True)``) once the
    app has started; objects frozen stay frozen (they were meant to live as long as the
    process), a garbage cycle among them is never freed, and ``gc.get_referrers`` no longer
    sees them (which tools such as Hypothesis rely on: not for a test process). Once per
    process.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()


_frozen = False


def worker_server() -> str | None:
    """``"uvicorn --workers 2"`` (or similar) when this process is one of several workers of
    a multi-process server; ``None`` otherwise."""
    in_child = multiprocessing.parent_process() is not None
    gunicorn = os.environ.get("SERVER_SOFTWARE", "").lower().startswith("gunicorn")
    if not (in_child or gunicorn):
        return None
    config = _supervisor_config()
    if config is not None:
        name = type(config).__module__.partition(".")[0]
        workers = getattr(config, "workers", None)
        if getattr(config, "reload", False) or getattr(config, "use_reloader", False):
            return None  # a reloader runs one worker at a time
        if isinstance(workers, int):
            return f"{name} --workers {workers}" if workers > 1 else None
    parent = _parent_command_line()
    for argv in (sys.argv, parent):
        server = _named_server(argv)
        if server is None:
            continue
        if "--reload" in argv:
            return None
        workers = _workers_option(argv)
        if workers is None and server == "gunicorn":
            workers = _workers_option(shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")))
        if workers is None and server in ("uvicorn", "gunicorn"):
            workers = _int(os.environ.get("WEB_CONCURRENCY"))
        if workers is None and server == "gunicorn":
            workers = _siblings() + 1
        if workers is not None:
            return f"{server} --workers {workers}" if workers > 1 else None
    return None


def _supervisor_config() -> object | None:
    """The server config the supervisor handed this worker process (``config=``)."""
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    config = kwargs.get("config") if isinstance(kwargs, dict) else None
    return config if hasattr(config, "workers") else None


def _named_server(argv: Sequence[str]) -> str | None:
    """The server a command line runs: ``uvicorn ...``, ``python -m gunicorn ...``."""
    for arg in argv[:3]:
        name = Path(arg).name
        if name == "__main__.py":
            name = Path(arg).parent.name
        for server in SERVERS:
            if name == server or name.startswith(server + "-") or name == server + ".exe":
                return server
    return None


def _workers_option(argv: Sequence[str]) -> int | None:
    for i, arg in enumerate(argv):
        if arg in ("--workers", "-w") and i + 1 < len(argv):
            return _int(argv[i + 1])
        if arg.startswith("--workers="):
            return _int(arg.partition("=")[2])
        if arg.startswith("-w") and arg[2:].isdigit():
            return _int(arg[2:])
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parent_command_line() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _siblings() -> int:
    """How many other children of this process's parent run the same program (Linux)."""
    ppid = os.getppid()
    try:
        exe = os.readlink("/proc/self/exe")
        children = Path(f"/proc/{ppid}/task/{ppid}/children").read_text().split()
    except OSError:
        return 0
    count = 0
    for pid in children:
        if pid == str(os.getpid()):
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe") == exe:
                count += 1
        except OSError:
            continue
    return count
