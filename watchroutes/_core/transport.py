"""How each transport carries a refusal (protocol.md §3.3-3.6, §4): one decision, made here.

A watch that cannot be served as asked is refused in one of three forms, and which one
depends on the transport, on the error, and (for an expired resume point) on whether the
resource has a state to start over from:

======================  =====================================  ==============================
transport               error                                  form
======================  =====================================  ==============================
SSE                     ``Expired``, the resource has a state  ``RESET``: 200, ``RESET``, the
                                                               state again (§3.3)
SSE                     a retryable one (429, 503, 504)        ``IN_STREAM``: 200, ``retry``,
                                                               one ``ERROR`` (§3.3)
JSON lines              ``Expired``                            ``IN_STREAM``: 200, one
                                                               ``ERROR`` line (§3.4, as
                                                               kube-apiserver)
WebSocket               any (a subscription's)                 ``IN_STREAM``: one ``ERROR``
                                                               envelope; the socket stays (§4)
any                     anything else                          ``STATUS``: the HTTP status
                                                               and its Status body
======================  =====================================  ==============================

Why SSE differs: a non-200 answer stops a browser's ``EventSource`` for good (WHATWG HTML
§9.2.3, "fail the connection"), so what a retry fixes must come as a 200 that the browser
retries; and an expired rv is repaired by starting over, which ``RESET`` tells it to do.
Long poll and lists answer every error with its status: their clients read statuses.

:func:`error_form` is the only place these rules live: the hub's state asks it whether an
expired resume becomes a ``RESET`` (:meth:`~watchroutes._core.state.HubState.open_watch`), and
the runtime asks it how to answer every other refusal (``_runtime/reply.py``'s
``error_reply``, the WebSocket protocol's per-subscription ``ERROR``).
"""

from __future__ import annotations

import enum

from .errors import ClientError, Expired
from .params import Mode

__all__ = ["ErrorForm", "error_form"]


class ErrorForm(enum.Enum):
    """How a refusal reaches the client."""

    #: The error's HTTP status and Status body, before any stream.
    STATUS = "status"
    #: 200 and the stream's headers, then one ``ERROR`` event, then the end (on a WebSocket:
    #: one ``ERROR`` envelope for the subscription, and the socket stays open).
    IN_STREAM = "in-stream"
    #: Not a refusal: 200, ``RESET``, then the current state as initial events.
    RESET = "reset"


def error_form(exc: ClientError, mode: Mode, *, has_state: bool = False) -> ErrorForm:
    """The form of refusing ``exc`` on ``mode``; ``has_state``: the resource can send its
    current state (a watch cache or a snapshot callback), which an expired SSE resume
    restarts from."""
    if mode is Mode.WEBSOCKET:
        return ErrorForm.IN_STREAM
    expired = isinstance(exc, Expired)
    if mode is Mode.SSE:
        if expired and has_state:
            return ErrorForm.RESET
        return ErrorForm.IN_STREAM if exc.retryable else ErrorForm.STATUS
    if mode is Mode.JSONLINES and expired:
        return ErrorForm.IN_STREAM
    return ErrorForm.STATUS
