"""watchroutes: make REST resources optionally watchable.

The same route answers a plain GET with a snapshot and, when the client asks, a live stream
of changes (Server-Sent Events or Kubernetes-style JSON lines) that resumes exactly where it
left off. Start with :class:`Hub`; mount it with ``watchroutes.adapters.starlette``.
"""

from __future__ import annotations

from ._core.access import Access as Access
from ._core.access import AuthRequest as AuthRequest
from ._core.access import Cors as Cors
from ._core.access import Principal as Principal
from ._core.access import WatchLimits as WatchLimits
from ._core.access import WatchScope as WatchScope
from ._core.errors import AlreadyExists as AlreadyExists
from ._core.errors import BadRequest as BadRequest
from ._core.errors import ClientError as ClientError
from ._core.errors import Conflict as Conflict
from ._core.errors import Expired as Expired
from ._core.errors import Forbidden as Forbidden
from ._core.errors import InternalError as InternalError
from ._core.errors import Invalid as Invalid
from ._core.errors import InvalidParameter as InvalidParameter
from ._core.errors import InvalidResourceVersion as InvalidResourceVersion
from ._core.errors import InvalidSelector as InvalidSelector
from ._core.errors import MethodNotAllowed as MethodNotAllowed
from ._core.errors import NotFound as NotFound
from ._core.errors import RequestEntityTooLarge as RequestEntityTooLarge
from ._core.errors import ServiceUnavailable as ServiceUnavailable
from ._core.errors import Status as Status
from ._core.errors import Timeout as Timeout
from ._core.errors import TooManyRequests as TooManyRequests
from ._core.errors import Unauthorized as Unauthorized
from ._core.errors import UnsupportedMediaType as UnsupportedMediaType
from ._core.errors import UsageError as UsageError
from ._core.errors import WatchError as WatchError
from ._core.events import EventType as EventType
from ._core.wire.sse import encode_event as encode_event
from ._public import present_as_public as _present_as_public
from ._runtime.answers import RequestInfo as RequestInfo
from ._runtime.clock import Clock as Clock
from ._runtime.clock import SystemClock as SystemClock
from ._runtime.hub import Hub as Hub
from ._runtime.hub import HubStatistics as HubStatistics
from ._runtime.hub import Resource as Resource
from ._runtime.reply import Reply as Reply
from ._runtime.websocket import WebSocketLimits as WebSocketLimits
from ._runtime.websocket import WebSocketRequest as WebSocketRequest

__version__ = "0.1.0"

__all__ = (
    "Access",
    "AlreadyExists",
    "AuthRequest",
    "BadRequest",
    "ClientError",
    "Clock",
    "Conflict",
    "Cors",
    "EventType",
    "Expired",
    "Forbidden",
    "Hub",
    "HubStatistics",
    "InternalError",
    "Invalid",
    "InvalidParameter",
    "InvalidResourceVersion",
    "InvalidSelector",
    "MethodNotAllowed",
    "NotFound",
    "Principal",
    "Reply",
    "RequestEntityTooLarge",
    "RequestInfo",
    "Resource",
    "ServiceUnavailable",
    "Status",
    "SystemClock",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "UsageError",
    "WatchError",
    "WatchLimits",
    "WatchScope",
    "WebSocketLimits",
    "WebSocketRequest",
    "encode_event",
)


_present_as_public(globals())  # the names' __module__ is this public module
