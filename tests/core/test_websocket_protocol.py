"""The WebSocket protocol's sans-IO rules (protocol.md §4)."""

from __future__ import annotations

import pytest

from watchroutes._core.websocket import (
    CloseCode,
    ProtocolViolation,
    RateLimiter,
    UnwatchMessage,
    WatchMessage,
    decode_message,
    negotiate,
    origin_allowed,
    watch_query,
)


def test_negotiate() -> None:
    assert negotiate([]) == (None, None, None)
    assert negotiate(["watchroutes.v1"])[:2] == ("watchroutes.v1", None)
    assert negotiate(["bearer.abc", "watchroutes.v1"])[:2] == ("watchroutes.v1", "abc")
    refused = negotiate(["bearer.abc"])
    assert refused.subprotocol is None
    assert refused.refusal is not None
    assert refused.refusal.code is CloseCode.INVALID


@pytest.mark.parametrize(
    ("origin", "host", "secure", "allowed", "ok"),
    [
        (None, "h", False, None, True),
        ("http://h", "h", False, None, True),
        ("http://h:80", "h", False, None, True),
        ("https://h", "h", True, None, True),
        ("https://h:443/", "h:443", True, None, True),
        ("http://h", "h", True, None, False),
        ("http://h:8080", "h", False, None, False),
        ("http://[::1]:8000", "[::1]:8000", False, None, True),
        ("http://H", "h", False, None, True),
        ("null", "h", False, None, False),
        ("http://h/path", "h", False, None, False),
        ("ftp://h", "h", False, None, False),
        ("http://h", None, False, None, False),
        ("http://a.example", "h", False, ["https://a.example", "http://a.example"], True),
        ("http://b.example", "h", False, ["http://a.example"], False),
        ("http://b.example", "h", False, ["*"], True),
        ("http://h:99999", "h", False, None, False),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, secure: bool, allowed: list[str] | None, ok: bool
) -> None:
    assert origin_allowed(origin, host=host, secure=secure, allowed=allowed) is ok


def test_messages_and_their_query() -> None:
    message = decode_message(
        '{"op":"watch","id":"s","labelSelector":"a=b","sendInitialEvents":false,'
        '"allowWatchBookmarks":true,"resourceVersion":"7","key":"k"}'
    )
    assert isinstance(message, WatchMessage)
    assert message.key == "k"
    assert watch_query(message) == [
        ("labelSelector", "a=b"),
        ("resourceVersion", "7"),
        ("sendInitialEvents", "false"),
        ("allowWatchBookmarks", "true"),
    ]
    assert decode_message('{"op":"unwatch","id":"s"}') == UnwatchMessage(id="s")


def test_close_reasons_fit_a_control_frame() -> None:
    violation = ProtocolViolation(CloseCode.INVALID, "é" * 200)
    assert len(violation.reason.encode()) <= 123
    assert violation.reason.endswith("...")


def test_rate_limiter() -> None:
    limiter = RateLimiter(2, now=0.0)
    assert [limiter.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow(0.5)  # one token back
    assert not limiter.allow(0.5)
    assert limiter.allow(100.0)
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, now=0.0)
