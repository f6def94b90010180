"""Clients for watch routes (extra ``client``: ``pip install 'watchroutes[client]'``).

- :func:`watch` / :func:`watch_sync`: the events of a watch route (SSE, JSON lines or long
  poll), resumed from the last rv across reconnects, with backoff, for as long as you iterate.
- :class:`Informer` / :class:`SyncInformer`: a local store (key -> object) kept equal to the
  server's collection across reconnects, ``RESET`` and 410, with callbacks, an iterator of
  changes, a synced signal and statistics.
- :func:`browser_module`: the same informer for browsers, as an ES module to serve.

Errors::

    WatchClientError            anything this client raises
    ├── StatusError             a refusal no retry can fix (400, 403, 404, ...)
    │   └── UnauthorizedError   401 without a token refresh, or after one that did not help
    └── ProtocolError           the answer is not a watch (a wrong URL)
"""

from __future__ import annotations

from ._aio import AsyncTokenRefresh as AsyncTokenRefresh
from ._aio import Watch as Watch
from ._aio import watch as watch
from ._backoff import DEFAULT_BACKOFF_CAP as DEFAULT_BACKOFF_CAP
from ._backoff import DEFAULT_BACKOFF_INITIAL as DEFAULT_BACKOFF_INITIAL
from ._backoff import DEFAULT_BACKOFF_RESET_AFTER as DEFAULT_BACKOFF_RESET_AFTER
from ._backoff import Backoff as Backoff
from ._browser import BROWSER_MODULE_MEDIA_TYPE as BROWSER_MODULE_MEDIA_TYPE
from ._browser import browser_module as browser_module
from ._errors import ProtocolError as ProtocolError
from ._errors import StatusError as StatusError
from ._errors import UnauthorizedError as UnauthorizedError
from ._errors import WatchClientError as WatchClientError
from ._events import INITIAL_EVENTS_END as INITIAL_EVENTS_END
from ._events import Change as Change
from ._events import ChangeType as ChangeType
from ._events import EventType as EventType
from ._events import KeyFunc as KeyFunc
from ._events import WatchEvent as WatchEvent
from ._events import default_key as default_key
from ._informer import DEFAULT_CHANGES_BUFFER as DEFAULT_CHANGES_BUFFER
from ._informer import ChangeHandler as ChangeHandler
from ._informer import ChangeStream as ChangeStream
from ._informer import Informer as Informer
from ._informer import InformerStatistics as InformerStatistics
from ._informer import SyncInformer as SyncInformer
from ._protocol import DEFAULT_HEARTBEAT as DEFAULT_HEARTBEAT
from ._protocol import DEFAULT_POLL_TIMEOUT as DEFAULT_POLL_TIMEOUT
from ._protocol import Transport as Transport
from ._protocol import WatchStatistics as WatchStatistics
from ._store import InformerStore as InformerStore
from ._sync import SyncWatch as SyncWatch
from ._sync import TokenRefresh as TokenRefresh
from ._sync import watch_sync as watch_sync

__all__ = (
    "AsyncTokenRefresh",
    "BROWSER_MODULE_MEDIA_TYPE",
    "Backoff",
    "Change",
    "ChangeHandler",
    "ChangeStream",
    "ChangeType",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_RESET_AFTER",
    "DEFAULT_CHANGES_BUFFER",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_POLL_TIMEOUT",
    "EventType",
    "INITIAL_EVENTS_END",
    "Informer",
    "InformerStatistics",
    "InformerStore",
    "KeyFunc",
    "ProtocolError",
    "StatusError",
    "SyncInformer",
    "SyncWatch",
    "TokenRefresh",
    "Transport",
    "UnauthorizedError",
    "Watch",
    "WatchClientError",
    "WatchEvent",
    "WatchStatistics",
    "browser_module",
    "default_key",
    "watch",
    "watch_sync",
)
