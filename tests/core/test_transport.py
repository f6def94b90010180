"""The one decision of how each transport carries a refusal (protocol.md §3.3-3.6, §4)."""

from __future__ import annotations

import pytest

from watchroutes._core.errors import (
    BadRequest,
    ClientError,
    Expired,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Timeout,
    TooManyRequests,
    Unauthorized,
)
from watchroutes._core.params import Mode
from watchroutes._core.transport import ErrorForm, error_form

STATUS, IN_STREAM, RESET = ErrorForm.STATUS, ErrorForm.IN_STREAM, ErrorForm.RESET
RETRYABLE = [TooManyRequests("x"), ServiceUnavailable("x"), Timeout("x")]
FINAL = [BadRequest("x"), Unauthorized("x"), Forbidden("x"), NotFound("x")]


@pytest.mark.parametrize("has_state", [False, True])
@pytest.mark.parametrize("exc", [*RETRYABLE, *FINAL, Expired("x")], ids=repr)
def test_every_transport(exc: ClientError, has_state: bool) -> None:
    expired = isinstance(exc, Expired)
    sse = RESET if expired and has_state else IN_STREAM if exc.retryable else STATUS
    assert error_form(exc, Mode.SSE, has_state=has_state) is sse
    # kube-apiserver: an expired rv is 200 and one ERROR line; the rest is the status
    assert error_form(exc, Mode.JSONLINES, has_state=has_state) is (
        IN_STREAM if expired else STATUS
    )
    # a subscription's refusal is one ERROR envelope; the socket stays
    assert error_form(exc, Mode.WEBSOCKET, has_state=has_state) is IN_STREAM
    # long poll and lists: the status, whatever it is (no RESET: poll again without an rv)
    assert error_form(exc, Mode.LONGPOLL, has_state=has_state) is STATUS
    assert error_form(exc, Mode.LIST, has_state=has_state) is STATUS


def test_expired_sse_resume_restarts_only_from_a_state() -> None:
    assert error_form(Expired("x"), Mode.SSE) is STATUS  # no state source: 410
    assert error_form(Expired("x"), Mode.SSE, has_state=True) is RESET
