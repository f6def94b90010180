"""Errors, and the Kubernetes ``Status`` body every one of them renders to.

The tree::

    WatchError                      base of everything watchroutes raises on purpose
    ├── UsageError (ValueError)     *local*: the application misused the API
    └── ClientError                 *remote*: a request or a write the client got wrong,
        │                           or a condition it must retry; carries HTTP code + reason
        ├── BadRequest                400  (InvalidParameter, InvalidSelector,
        │                                   InvalidResourceVersion are BadRequests)
        ├── Unauthorized              401
        ├── Forbidden                 403
        ├── NotFound                  404
        ├── MethodNotAllowed          405
        ├── AlreadyExists             409
        ├── Conflict                  409
        ├── Expired                   410
        ├── RequestEntityTooLarge     413
        ├── UnsupportedMediaType      415
        ├── Invalid                   422  (an object's name or labels)
        ├── TooManyRequests           429  (retryable)
        ├── InternalError             500
        ├── ServiceUnavailable        503  (retryable)
        └── Timeout                   504  (retryable)

A ``ClientError`` becomes the Status body of protocol.md §3.5 through :meth:`ClientError.status`.
Messages say what was wrong and never carry internals (no tracebacks, paths or addresses).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AlreadyExists",
    "BadRequest",
    "ClientError",
    "Conflict",
    "Expired",
    "Forbidden",
    "InternalError",
    "InvalidParameter",
    "InvalidResourceVersion",
    "InvalidSelector",
    "MethodNotAllowed",
    "NotFound",
    "RequestEntityTooLarge",
    "ServiceUnavailable",
    "Status",
    "StatusDetails",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "UsageError",
    "WatchError",
]


class StatusDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    retryAfterSeconds: int | None = None  # noqa: N815 - wire name


class Status(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The Kubernetes ``metav1.Status`` body, field order as on the wire (protocol.md §3.5)."""

    kind: str
    apiVersion: str  # noqa: N815 - wire name
    metadata: dict[str, Any]
    status: str
    code: int
    reason: str
    message: str
    details: StatusDetails | None = None


class WatchError(Exception):
    """Base class of every error watchroutes raises on purpose."""


class UsageError(WatchError, ValueError):
    """The application used the API wrongly (a local error, never the client's fault)."""


class ClientError(WatchError):
    """An error answered to the client with an HTTP status and a Status body."""

    code: ClassVar[int] = 400
    reason: ClassVar[str] = "BadRequest"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = (
            retry_after if retry_after is not None else (1 if self.retryable else None)
        )

    def status(self) -> Status:
        details = None
        if self.retry_after is not None:
            details = StatusDetails(retryAfterSeconds=self.retry_after)
        return Status(
            kind="Status",
            apiVersion="v1",
            metadata={},
            status="Failure",
            code=self.code,
            reason=self.reason,
            message=self.message,
            details=details,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(ClientError):
    code = 400
    reason = "BadRequest"


class InvalidParameter(BadRequest):
    """A query parameter has a value outside its grammar or range."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter


class InvalidResourceVersion(InvalidParameter):
    pass


class InvalidSelector(InvalidParameter):
    pass


class Unauthorized(ClientError):
    code = 401
    reason = "Unauthorized"


class Forbidden(ClientError):
    code = 403
    reason = "Forbidden"


class NotFound(ClientError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(ClientError):
    code = 405
    reason = "MethodNotAllowed"


class AlreadyExists(ClientError):
    code = 409
    reason = "AlreadyExists"


class Conflict(ClientError):
    code = 409
    reason = "Conflict"


class Expired(ClientError):
    code = 410
    reason = "Expired"


class Invalid(ClientError):
    """An object that breaks the object rules (its name, its labels): Kubernetes' 422."""

    code = 422
    reason = "Invalid"


class RequestEntityTooLarge(ClientError):
    code = 413
    reason = "RequestEntityTooLarge"


class UnsupportedMediaType(ClientError):
    code = 415
    reason = "UnsupportedMediaType"


class TooManyRequests(ClientError):
    code = 429
    reason = "TooManyRequests"
    retryable = True


class InternalError(ClientError):
    code = 500
    reason = "InternalError"


class ServiceUnavailable(ClientError):
    code = 503
    reason = "ServiceUnavailable"
    retryable = True


class Timeout(ClientError):
    code = 504
    reason = "Timeout"
    retryable = True
