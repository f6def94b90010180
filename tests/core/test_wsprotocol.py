"""The sans-IO WebSocket protocol (protocol.md §4), driven by hand with a fake ``now``: the
handshake, ids, limits, the rate limit, token expiry, origins and every close code. No
sockets, no sleeping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from watchroutes._core.errors import (
    BadRequest,
    Forbidden,
    InternalError,
    NotFound,
    Unauthorized,
    UsageError,
)
from watchroutes._core.params import parse_request
from watchroutes._core.registry import CloseReason
from watchroutes._core.session import WatchSession
from watchroutes._core.state import StateSource
from watchroutes._core.websocket import (
    IMPLICIT_ID,
    CloseCode,
    WebSocketLimits,
    WebSocketRequest,
)
from watchroutes._core.wire.websocket import WebSocketWire
from watchroutes._core.wsprotocol import (
    Rejected,
    Round,
    SocketState,
    Subscribe,
    Unsubscribed,
    Violation,
    WebSocketProtocol,
    url_timeout,
)

from .harness import Core, order

REQUEST = WebSocketRequest(query=[], subprotocols=["watchroutes.v1"], host="h")
END = 3600.0


class Socket:
    """A protocol, a hub state and a hand-driven clock."""

    def __init__(self, limits: WebSocketLimits | None = None, **kwargs: Any) -> None:
        self.core = Core()
        self.protocol = WebSocketProtocol("orders", limits=limits, resources=["users"])
        handshake = self.protocol.handshake(REQUEST)
        assert handshake.subprotocol == "watchroutes.v1"
        assert handshake.refusal is None
        self.protocol.accept(self.core.now, end_at=kwargs.get("end_at", END))
        assert self.protocol.state is SocketState.OPEN

    def open(self, sub_id: str, query: dict[str, str] | None = None, **kwargs: Any) -> None:
        """What the runtime does for a ``Subscribe``: open a session on the hub's state."""
        core = self.core
        request = parse_request(list((query or {}).items()), websocket=True)
        opening = core.state.open_watch(
            "orders", request, source=StateSource.CACHE, buffer=core.buffer
        )
        wire = WebSocketWire("Order", "v1", sub_id, bookmarks=request.allow_watch_bookmarks)
        session = WatchSession(
            wire=wire,
            subscription=opening.subscription,
            now=core.now,
            snapshot_rv=opening.head,
            start_rv=opening.start_rv,
            initial=opening.initial,
            replay=opening.replay,
            **kwargs,
        )
        self.protocol.subscribed(sub_id, session)

    def send(self, message: dict[str, Any] | str | bytes) -> Any:
        data = message if isinstance(message, str | bytes) else json.dumps(message)
        return self.protocol.receive(data, self.core.now)

    def step(self, *, closing: bool = False) -> Round:
        out = self.protocol.step(self.core.now, self.core.state.head, closing=closing)
        for ended in out.ended:  # the runtime's side of an end
            self.core.state.close_watch(ended.subscription, ended.reason)
        deadline = self.protocol.deadline()
        assert deadline is None or self.protocol.ready or deadline > self.core.now, "spins"
        return out

    def messages(self, *, closing: bool = False) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.step(closing=closing).messages]

    @property
    def close(self) -> tuple[CloseCode | None, str]:
        assert self.protocol.closed
        return self.protocol.close_code, self.protocol.close_reason


def watch(sub_id: str, **fields: Any) -> dict[str, Any]:
    return {"op": "watch", "id": sub_id, **fields}


# -- the handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (WebSocketRequest(query=[], subprotocols=["other"]), CloseCode.INVALID, "unsupported"),
        (WebSocketRequest(query=[], origin="http://evil", host="h"), CloseCode.FORBIDDEN, "origin"),
        (WebSocketRequest(query=[], origin="null", host="h"), CloseCode.FORBIDDEN, "origin"),
    ],
)
def test_a_refused_handshake_is_accepted_then_closed(
    request_: WebSocketRequest, code: CloseCode, reason: str
) -> None:
    protocol = WebSocketProtocol("orders")
    handshake = protocol.handshake(request_)
    assert handshake.subprotocol is None
    assert handshake.refusal is not None
    assert protocol.closed
    assert protocol.close_code is code
    assert reason in protocol.close_reason
    assert protocol.deadline() is None
    with pytest.raises(UsageError):
        protocol.accept(0.0, end_at=END)


def test_origins_from_the_allow_list() -> None:
    allowed = WebSocketLimits(origins=["https://app.example.com"])
    for origin, ok in [("https://app.example.com", True), ("http://h", False), (None, True)]:
        protocol = WebSocketProtocol("orders", limits=allowed)
        refusal = protocol.handshake(WebSocketRequest(query=[], origin=origin, host="h")).refusal
        assert (refusal is None) is ok


def test_the_route_resource_must_exist() -> None:
    protocol = WebSocketProtocol("nope")
    handshake = protocol.handshake(REQUEST, known=False)
    assert handshake.subprotocol is None  # accepted without one, then closed
    assert (protocol.close_code, protocol.close_reason) == (
        CloseCode.NOT_FOUND,
        "resource 'nope' not found",
    )


@pytest.mark.parametrize(
    ("request_", "token"),
    [
        (WebSocketRequest(query=[("access_token", "q")], subprotocols=[]), "q"),
        (WebSocketRequest(query=[("access_token", "q")], authorization="Bearer h"), "h"),
        (
            WebSocketRequest(
                query=[("access_token", "q")],
                authorization="Bearer h",
                subprotocols=["bearer.s", "watchroutes.v1"],
            ),
            "s",
        ),
        (WebSocketRequest(query=[], authorization="Basic x"), None),
    ],
)
def test_the_token_for_the_authorize_hook(request_: WebSocketRequest, token: str | None) -> None:
    handshake = WebSocketProtocol("orders").handshake(request_)
    assert handshake.token == token


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unauthorized("no token"), CloseCode.UNAUTHORIZED),
        (Forbidden("not yours"), CloseCode.FORBIDDEN),
        (InternalError("hook failed"), CloseCode.ERROR),
    ],
)
def test_refused_credentials_close_with_their_code(error: Exception, code: CloseCode) -> None:
    protocol = WebSocketProtocol("orders")
    protocol.handshake(REQUEST)
    assert protocol.state is SocketState.AUTHENTICATING
    assert isinstance(error, Unauthorized | Forbidden | InternalError)
    protocol.refuse(error)
    assert (protocol.close_code, protocol.close_reason) == (code, error.message)


def test_a_socket_opened_during_shutdown_closes_1012() -> None:
    protocol = WebSocketProtocol("orders")
    protocol.handshake(REQUEST)
    protocol.accept(0.0, end_at=END, closing=True)
    assert protocol.close_code is CloseCode.RESTART


def test_misuse_fails_fast() -> None:
    protocol = WebSocketProtocol("orders")
    with pytest.raises(UsageError):
        protocol.receive("{}", 0.0)
    with pytest.raises(UsageError):
        protocol.step(0.0, 0)


# -- subscriptions -----------------------------------------------------------------------------


def test_the_url_subscription_then_more_by_message() -> None:
    s = Socket()
    s.core.publish("ADDED", order("a"))
    s.open(IMPLICIT_ID)
    assert [(m["id"], m["type"]) for m in s.messages()] == [("", "ADDED")]
    event = s.send(watch("s1", resourceVersion=str(s.core.state.head), labelSelector="x=y"))
    assert event == Subscribe(
        "s1",
        "orders",
        [("labelSelector", "x=y"), ("resourceVersion", str(s.core.state.head))],
        None,
    )
    assert s.send(watch("u", resource="users", key="k")) == Subscribe("u", "users", [], "k")
    s.open("s1", {"resourceVersion": str(s.core.state.head)})
    s.core.publish("MODIFIED", order("a", phase="paid"))
    assert sorted((m["id"], m["type"]) for m in s.messages()) == [
        ("", "MODIFIED"),
        ("s1", "MODIFIED"),
    ]


def test_ids_must_be_unique_and_known() -> None:
    s = Socket()
    s.open("s1")
    duplicate = s.send(watch("s1"))
    assert isinstance(duplicate, Rejected)
    assert isinstance(duplicate.error, BadRequest)
    assert "already in use" in duplicate.error.message
    assert isinstance(s.send(watch("s2")), Subscribe)  # being opened: its id is taken too
    assert isinstance(s.send(watch("s2")), Rejected)
    unknown = s.send({"op": "unwatch", "id": "zz"})
    assert isinstance(unknown, Rejected)
    assert isinstance(unknown.error, NotFound)
    elsewhere = s.send(watch("s3", resource="invoices"))  # not listed by the route
    assert isinstance(elsewhere, Rejected)
    assert elsewhere.error.message == "no watchable resource 'invoices'"
    errors = [m for m in s.messages() if m["type"] == "ERROR"]
    assert [(m["id"], m["object"]["code"]) for m in errors] == [
        ("s1", 400),
        ("s2", 400),
        ("zz", 404),
        ("s3", 404),
    ]
    assert not s.protocol.closed


def test_a_refused_subscription_gets_an_error_and_the_socket_stays() -> None:
    s = Socket()
    assert isinstance(s.send(watch("s1")), Subscribe)
    s.protocol.refuse(BadRequest("bad selector"), "s1")
    (error,) = s.messages()
    assert (error["id"], error["type"], error["object"]["code"]) == ("s1", "ERROR", 400)
    assert isinstance(s.send(watch("s1")), Subscribe)  # the id is free again


def test_unwatch_ends_one_with_unwatched_and_nothing_after() -> None:
    s = Socket()
    s.open(IMPLICIT_ID)
    s.open("s1")
    event = s.send({"op": "unwatch", "id": "s1"})
    assert isinstance(event, Unsubscribed)
    assert event.id == "s1"
    s.core.state.close_watch(event.subscription, CloseReason.CLIENT)
    s.core.publish("ADDED", order("a"))
    assert [(m["id"], m["type"]) for m in s.messages()] == [("s1", "UNWATCHED"), ("", "ADDED")]
    assert list(s.protocol.sessions) == [IMPLICIT_ID]


def test_at_most_max_subscriptions() -> None:
    s = Socket(WebSocketLimits(max_subscriptions=2))
    s.open(IMPLICIT_ID)
    s.open("s1")
    refused = s.send(watch("s2"))
    assert isinstance(refused, Rejected)
    assert refused.error.message == "at most 2 subscriptions per socket"


def test_ids_are_at_most_256_characters() -> None:
    s = Socket()
    assert isinstance(s.send(watch("x" * 256)), Subscribe)
    assert s.send(watch("x" * 257)) == Violation(
        CloseCode.INVALID, "invalid message: an id is at most 256 characters"
    )


# -- violations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not json", CloseCode.INVALID),
        (b"{}", CloseCode.INVALID),  # binary
        ('{"op":"watch"}', CloseCode.INVALID),  # no id
        ('{"op":"dance","id":"a"}', CloseCode.INVALID),
        ('{"op":"watch","id":"a","timeoutSeconds":"5"}', CloseCode.INVALID),
        ('{"op":"watch","id":"' + "x" * 70_000 + '"}', CloseCode.TOO_BIG),
    ],
)
def test_a_violation_closes_the_socket(data: str | bytes, code: CloseCode) -> None:
    s = Socket()
    event = s.send(data)
    assert isinstance(event, Violation)
    assert event.code is code
    assert s.close == (code, event.reason)
    assert len(event.reason.encode()) <= 123


def test_the_rate_limit_closes_4429_and_refills_with_time() -> None:
    s = Socket(WebSocketLimits(max_messages_per_second=2))
    unwatch = {"op": "unwatch", "id": "zz"}
    assert isinstance(s.send(unwatch), Rejected)
    assert isinstance(s.send(unwatch), Rejected)  # a burst of 2
    s.core.now += 0.5  # one more token
    assert isinstance(s.send(unwatch), Rejected)
    assert s.send(unwatch) == Violation(CloseCode.RATE, "more than 2 messages per second")
    assert s.close == (CloseCode.RATE, "more than 2 messages per second")


# -- how a socket ends -------------------------------------------------------------------------


def test_the_url_timeout_closes_1000_after_the_last_bookmark() -> None:
    assert url_timeout([("timeoutSeconds", "30"), ("timeoutSeconds", "1")]) == 30
    assert url_timeout([("timeoutSeconds", "x")]) is None
    assert url_timeout([]) is None
    s = Socket(end_at=30.0)
    query = {"allowWatchBookmarks": "true", "labelSelector": "region=us"}
    s.open(IMPLICIT_ID, query, end_at=30.0)
    s.open("s1")  # no duration of its own
    s.step()
    assert s.protocol.deadline() == 15.0  # the heartbeat's
    s.core.publish("ADDED", order("a"))  # not for the URL's subscription: it moves on
    s.core.now = 30.0
    out = s.messages()
    assert [(m["id"], m["type"]) for m in out] == [("", "BOOKMARK"), ("s1", "ADDED")]
    assert out[0]["resourceVersion"] == str(s.core.state.head)
    assert s.close == (CloseCode.NORMAL, "timeoutSeconds passed")


def test_the_socket_ends_on_time_even_when_its_url_subscription_failed() -> None:
    s = Socket(end_at=5.0, limits=WebSocketLimits(idle_seconds=100))
    s.open("s1")
    s.step()
    assert s.protocol.deadline() == 5.0
    s.core.now = 5.0
    s.step()
    assert s.close == (CloseCode.NORMAL, "timeoutSeconds passed")


def test_a_message_subscription_that_times_out_leaves_the_socket_open() -> None:
    s = Socket()
    s.open(IMPLICIT_ID)
    s.open("s1", end_at=1.0)
    s.step()
    s.core.now = 1.0
    out = s.step()
    assert [e.id for e in out.ended] == ["s1"]
    assert not s.protocol.closed


def test_a_socket_without_subscriptions_closes_1000_after_the_idle_period() -> None:
    s = Socket(WebSocketLimits(idle_seconds=10))
    s.open("s1")
    s.step()
    s.send({"op": "unwatch", "id": "s1"})
    s.core.now = 2.0
    s.step()  # idle since now
    assert s.protocol.deadline() == 12.0
    s.core.now = 11.999
    s.step()
    assert not s.protocol.closed
    s.core.now = 12.0
    s.step()
    assert s.close == (CloseCode.NORMAL, "no subscription for 10 s")


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (CloseReason.SLOW, CloseCode.SLOW),
        (CloseReason.SHUTDOWN, CloseCode.RESTART),
        (CloseReason.UNAVAILABLE, CloseCode.TRY_AGAIN),
        (CloseReason.REVOKED, CloseCode.FORBIDDEN),
    ],
)
@pytest.mark.parametrize("sub_id", [IMPLICIT_ID, "s1"])
def test_a_subscription_ended_by_the_server_ends_the_socket(
    reason: CloseReason, code: CloseCode, sub_id: str
) -> None:
    s = Socket()
    s.open(sub_id)
    s.step()
    s.core.state.registry.all()[0].close(reason, s.core.state.head)
    out = s.step()
    assert [(e.id, e.reason) for e in out.ended] == [(sub_id, reason)]
    assert s.close[0] is code


def test_a_failed_watch_closes_1011() -> None:
    s = Socket()
    s.open("s1")
    s.step()
    session = s.protocol.sessions["s1"]
    session.fail(InternalError("boom").status())
    s.step()
    assert s.close == (CloseCode.ERROR, "the watch failed")


def test_expired_credentials_close_4401_after_the_error() -> None:
    s = Socket()
    s.open(IMPLICIT_ID, expires_at=60.0)
    s.step()
    assert s.protocol.deadline() == 15.0
    s.core.now = 60.0
    (error,) = s.messages()
    assert (error["type"], error["object"]["code"]) == ("ERROR", 401)
    assert s.close == (CloseCode.UNAUTHORIZED, "credentials expired")


def test_a_revoked_principal_closes_4403() -> None:
    s = Socket()
    s.open(IMPLICIT_ID)
    s.step()
    s.protocol.revoke()
    s.step()
    assert s.close == (CloseCode.FORBIDDEN, "access revoked")


def test_shutdown_closes_1012_once_the_subscriptions_ended() -> None:
    s = Socket()
    s.step(closing=True)
    assert s.close == (CloseCode.RESTART, "the server is shutting down")
    s = Socket()
    s.protocol.abort()
    assert s.close == (CloseCode.RESTART, "the server is shutting down")


def test_a_stalled_write_closes_4008_whatever_was_decided() -> None:
    s = Socket()
    s.protocol.revoke()
    s.step()
    s.protocol.write_timed_out()
    assert s.close == (CloseCode.SLOW, "slow consumer: resume from the last resourceVersion")


def test_a_peer_that_left_gets_no_close_frame() -> None:
    s = Socket()
    s.open("s1")
    s.protocol.peer_gone()
    assert s.close == (None, "")
    ended = s.protocol.end()
    assert [(e.id, e.reason) for e in ended] == [("s1", CloseReason.CLIENT)]
    assert not s.protocol.sessions
