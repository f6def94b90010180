"""Ending the watches on the server's exit signal, however the app is run (protocol.md §5.6).

uvicorn sends the ASGI lifespan shutdown only after every connection has closed, so a hub
closed from the lifespan waits for watch streams that never end; hypercorn cancels them after
its graceful timeout, mid-stream. So a hub entered in the lifespan also listens for the exit
signal itself: when it starts (``Hub.__aenter__``, on the main thread) it *chains* the process's
SIGINT/SIGTERM handlers, and restores them when it stops (``Hub.__aexit__``). Nothing is patched
at import time, and ``Hub(handle_signals=False)`` turns all of it off.

Three ways a server learns that it must stop, and what the hub does for each:

- **A Python handler** (``signal.signal``; uvicorn >= 0.29 in ``capture_signals``, trio,
  ``asyncio.run``'s SIGINT handler): the hub installs its own handler, which schedules the
  hub's shutdown on the loop thread-safely and then calls the handler it replaced, so the
  server proceeds exactly as before. A signal handler interrupts the loop's thread between
  two bytecodes, possibly in the middle of a change to the hub, so it never runs hub code
  itself: it only hands a callback to the loop (``call_soon_threadsafe``, or trio's
  ``run_sync_soon``, both safe there).
- **An asyncio loop handler** (``loop.add_signal_handler``; hypercorn's in-process worker,
  ``hypercorn.asyncio.serve``): ``signal.getsignal`` shows only asyncio's no-op, so the hub
  reads the loop's own handler for that signal and replaces it, through
  ``add_signal_handler``, with one that begins the shutdown and then calls it. That one runs
  as a loop callback, not in signal context.
- **A supervisor's shutdown event** (hypercorn's worker processes, which ignore SIGINT and get
  no SIGTERM handler: the supervisor tells them to stop through a ``multiprocessing.Event``
  that the worker polls): a daemon thread polls the same event and begins the shutdown.

Signal dispositions ``SIG_DFL`` and ``SIG_IGN`` are left alone: the process dies, or does not
care, as it would without the hub.

Restoring puts back exactly what was replaced, unless something replaced the hub's handler
since (then that stays, and the hub's handler, if it is still called, only passes the signal
on). Beginning a shutdown twice is harmless, so ``watchroutes.adapters.uvicorn.Server`` and
these handlers do not get in each other's way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

if TYPE_CHECKING:
    from .node import Node

__all__ = ["install", "restore"]

logger = logging.getLogger("watchroutes")

#: The signals servers treat as "stop": Ctrl-C, ``kill``/orchestrators, Ctrl-Break (Windows).
HANDLED_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)
#: How often the thread watching a supervisor's shutdown event looks at it (hypercorn's
#: workers poll the same event at this rate).
SUPERVISOR_POLL_SECONDS: Final = 0.1

_PythonHandler = Callable[[int, FrameType | None], Any]
_Schedule = Callable[[Callable[[], object]], object]
_LoopEntry = tuple[
    asyncio.AbstractEventLoop, Callable[[], None], Callable[..., Any], tuple[Any, ...]
]


class _EventLike(Protocol):
    def is_set(self) -> bool: ...


class _Hooks:
    """What one ``Hub.__aenter__`` installed, so that its ``__aexit__`` can take it back."""

    def __init__(self, hub: Node, schedule: _Schedule) -> None:
        self.hub = hub
        self.active = True
        self._schedule = schedule
        self._tasks: set[asyncio.Task[None]] = set()
        #: signal -> (the handler installed, the handler it replaced)
        self._python: dict[int, tuple[_PythonHandler, _PythonHandler]] = {}
        #: signal -> (the loop, the callback installed, the callback and args it replaced)
        self._loop: dict[int, _LoopEntry] = {}
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- beginning the shutdown ---------------------------------------------------------------

    def trigger(self) -> None:
        """Begin the hub's shutdown soon, on its loop. Safe in a signal handler and from any
        thread: it only hands a callback to the loop."""
        if not self.active:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._schedule(self._on_loop)

    def _on_loop(self) -> None:
        hub = self.hub
        if not self.active or hub.closing:
            return
        if hub.follower is None:
            hub.begin_shutdown()  # nothing to wait for: the streams end with this call
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _spawn_trio(_begin_shutdown, hub)
        else:
            task = loop.create_task(_begin_shutdown(hub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- Python handlers ------------------------------------------------------------------------

    def chain_python(self, signum: int, previous: _PythonHandler) -> None:
        def handler(signum: int, frame: FrameType | None) -> Any:
            self.trigger()
            return previous(signum, frame)

        signal.signal(signum, handler)
        self._python[signum] = (handler, previous)

    # -- asyncio loop handlers ------------------------------------------------------------------

    def chain_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        signum: int,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        def handler() -> None:
            self.trigger()
            callback(*args)

        loop.add_signal_handler(signum, handler)
        self._loop[signum] = (loop, handler, callback, args)

    # -- a supervisor's shutdown event ----------------------------------------------------------

    def watch_supervisor(self, event: _EventLike) -> None:
        def watch() -> None:
            while not self._stop_watching.wait(SUPERVISOR_POLL_SECONDS):
                if event.is_set():
                    self.trigger()
                    return

        self._watcher = threading.Thread(
            target=watch, name="watchroutes-supervisor-watch", daemon=True
        )
        self._watcher.start()

    # -- taking it back -------------------------------------------------------------------------

    def restore(self) -> None:
        self.active = False
        for signum, (handler, previous) in self._python.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, previous)
        for signum, (loop, installed, callback, args) in self._loop.items():
            if not loop.is_closed() and _loop_handler(loop, signum) == (installed, ()):
                loop.add_signal_handler(signum, callback, *args)
        self._python.clear()
        self._loop.clear()
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(2 * SUPERVISOR_POLL_SECONDS)
            self._watcher = None


_installed: weakref.WeakKeyDictionary[Node, list[_Hooks]] = weakref.WeakKeyDictionary()


def install(hub: Node) -> None:
    """Chain the exit signals' handlers (and a supervisor's shutdown event) to ``hub``'s
    shutdown. Called on the hub's loop when the hub starts; undone by :func:`restore`."""
    schedule = _scheduler()
    if schedule is None:  # an event loop this module does not know how to reach
        return
    hooks = _Hooks(hub, schedule)
    if threading.current_thread() is threading.main_thread():
        for signum in HANDLED_SIGNALS:
            _chain(hooks, signum)
    event = _supervisor_event()
    if event is not None:
        hooks.watch_supervisor(event)
    _installed.setdefault(hub, []).append(hooks)


def restore(hub: Node) -> None:
    """Undo the latest :func:`install` for ``hub`` (nested ``async with hub`` unwind in order)."""
    stack = _installed.get(hub)
    if stack:
        stack.pop().restore()


def _chain(hooks: _Hooks, signum: int) -> None:
    current = signal.getsignal(signum)
    if current is _asyncio_noop():
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        found = _loop_handler(loop, signum)
        if found is not None:
            hooks.chain_loop(loop, signum, *found)
        return
    # SIG_DFL, SIG_IGN (ints) and None (installed outside Python) stay as they are.
    if callable(current):
        hooks.chain_python(signum, current)


def _loop_handler(
    loop: asyncio.AbstractEventLoop, signum: int
) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    """The callback and arguments ``loop.add_signal_handler`` registered for ``signum``.

    asyncio keeps them in the loop's ``_signal_handlers`` (a ``Handle`` per signal) and offers
    no public way to read them back; a loop without that table (uvloop) is left alone.
    """
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(signum) if isinstance(handlers, dict) else None
    if not isinstance(handle, asyncio.Handle) or handle.cancelled():
        return None
    callback = getattr(handle, "_callback", None)
    args = getattr(handle, "_args", None)
    if not callable(callback) or not isinstance(args, tuple):
        return None
    return callback, args


def _asyncio_noop() -> object:
    """The Python-level handler asyncio installs under ``loop.add_signal_handler``."""
    unix_events = sys.modules.get("asyncio.unix_events")
    return getattr(unix_events, "_sighandler_noop", _NOTHING)


_NOTHING: Final = object()


def _scheduler() -> _Schedule | None:
    """A callable that hands a callback to the running loop, safely from a signal handler
    or another thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return loop.call_soon_threadsafe
    if "trio" in sys.modules:
        import trio

        with contextlib.suppress(RuntimeError):
            return trio.lowlevel.current_trio_token().run_sync_soon
    return None


def _spawn_trio(func: Callable[[Node], Any], hub: Node) -> None:
    import trio

    trio.lowlevel.spawn_system_task(func, hub)


def _supervisor_event() -> _EventLike | None:
    """The ``multiprocessing.Event`` a supervisor stops this worker process with, if any.

    hypercorn starts each worker with ``shutdown_event=`` among the process target's keyword
    arguments; the worker ignores SIGINT and installs no handler for SIGTERM, and stops when
    the supervisor sets the event.
    """
    if multiprocessing.parent_process() is None:
        return None
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = kwargs.get("shutdown_event") if isinstance(kwargs, dict) else None
    return event if callable(getattr(event, "is_set", None)) else None


async def _begin_shutdown(hub: Node) -> None:
    """What ``hub.aclose()`` does before it waits: on a shared log, let this node apply the
    writes it acknowledged (bounded), so each final bookmark is at least at the newest version
    it gave a client; then end every stream."""
    from .node import SHUTDOWN_APPLY_WAIT

    try:
        replica = hub.follower
        if replica is not None and replica.available and not hub.closing:
            with anyio.move_on_after(SHUTDOWN_APPLY_WAIT):
                await replica.own_writes()
        hub.begin_shutdown()
    except Exception:  # a system task's failure would end the whole trio run
        logger.exception("watchroutes: could not begin the shutdown on the exit signal")
