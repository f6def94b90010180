"""``AuthRequest.bearer_token``: every source, and a 400 for ambiguous credentials."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from starlette.datastructures import Headers

from watchroutes import AuthRequest, BadRequest


def test_each_source_alone() -> None:
    assert AuthRequest(headers={"authorization": "Bearer a"}).bearer_token() == "a"
    assert AuthRequest(cookies={"token": "a"}).bearer_token() == "a"
    assert AuthRequest(cookies={"sid": "a"}).bearer_token(cookie="sid") == "a"
    assert AuthRequest(query=[("access_token", "a")]).bearer_token() is None  # opt-in
    assert AuthRequest(query=[("access_token", "a")]).bearer_token(query=True) == "a"
    assert AuthRequest(subprotocols=["watchroutes.v1", "bearer.a"]).bearer_token() == "a"


def test_another_scheme_is_never_a_fallback() -> None:
    request = AuthRequest(headers={"authorization": "Basic dTpw"}, cookies={"token": "a"})
    assert request.bearer_token() is None


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer a,Bearer b"},  # joined by a WSGI server or Django
        {"authorization": "Bearer a, Bearer a"},
        Headers(raw=[(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]),
        CIMultiDict([("Authorization", "Bearer a"), ("authorization", "Bearer a")]),
    ],
)
def test_a_repeated_authorization_header_is_a_400(headers: object) -> None:
    with pytest.raises(BadRequest, match="more than one Authorization header") as refused:
        AuthRequest(headers=headers).bearer_token()  # type: ignore[arg-type]
    assert refused.value.code == 400


@pytest.mark.parametrize(
    ("request_", "sources"),
    [
        (
            AuthRequest(headers={"authorization": "Bearer a"}, cookies={"token": "b"}),
            "the Authorization header and the 'token' cookie",
        ),
        (
            AuthRequest(subprotocols=["bearer.a"], headers={"authorization": "Bearer b"}),
            "a bearer subprotocol and the Authorization header",
        ),
        (
            AuthRequest(subprotocols=["bearer.a", "bearer.b"]),
            "a bearer subprotocol and a bearer subprotocol",
        ),
        (
            AuthRequest(cookies={"token": "a"}, query=[("access_token", "b")]),
            "the 'token' cookie and the access_token query parameter",
        ),
    ],
)
def test_different_tokens_in_two_sources_are_a_400(request_: AuthRequest, sources: str) -> None:
    with pytest.raises(BadRequest) as refused:
        request_.bearer_token(query=True)
    message = refused.value.message
    assert message == f"conflicting credentials: {sources} carry different tokens; send one"


def test_the_same_token_everywhere_is_one_token() -> None:
    request = AuthRequest(
        subprotocols=["bearer.a"],
        headers={"authorization": "Bearer a"},
        cookies={"token": "a"},
        query=[("access_token", "a")],
    )
    assert request.bearer_token(query=True) == "a"


def test_a_source_the_hook_did_not_ask_for_is_not_compared() -> None:
    request = AuthRequest(headers={"authorization": "Bearer a"}, query=[("access_token", "b")])
    assert request.bearer_token() == "a"  # query=False: the query is not a source here
    request = AuthRequest(headers={"authorization": "Bearer a"}, cookies={"token": "b"})
    assert request.bearer_token(cookie=None) == "a"
