"""The client's exceptions. Everything a retry can fix is retried, never raised::

WatchClientError            anything this client raises
├── StatusError             the server refused the watch for good (400, 403, 404, ...):
│   │                       .code, .reason, .message and the whole Status in .status
│   └── UnauthorizedError   401, with no token refresh or after one that did not help
└── ProtocolError           the answer is not a watch of protocol.md §3 (a wrong URL or a
                            non-watchable route; retrying would not help either)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProtocolError", "StatusError", "UnauthorizedError", "WatchClientError"]


class WatchClientError(Exception):
    """Base class of the client's errors."""


class StatusError(WatchClientError):
    """The server answered a Status (protocol.md §3.5) that a retry cannot fix."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        code = status.get("code")
        self.code: int = code if isinstance(code, int) else 0
        self.reason: str = str(status.get("reason") or "Unknown")
        self.message: str = str(status.get("message") or "")
        super().__init__(f"{self.code} {self.reason}: {self.message}")


class UnauthorizedError(StatusError):
    """401 ``Unauthorized``: no valid credentials, and no token refresh gave new ones."""


class ProtocolError(WatchClientError):
    """The server's answer does not follow the watch contract."""
