"""The live page with ``--users`` and ``--token-ttl`` in headless Chromium: its stream ends
with the 401 of expired credentials, the page shows it (and does not retry with the stale
token), and signing in again through its box resumes from the last event it saw."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from .test_live_page import WAIT, App, Tab, browser, is_live, start_app, tab

__all__ = ["browser", "start_app", "tab"]  # the fixtures, shared with test_live_page

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]


def auth_of(tab: Tab) -> str:
    return str(tab.evaluate("document.querySelector('[data-testid=\"auth\"]').textContent"))


def test_expired_credentials_are_shown_and_a_new_sign_in_resumes(
    tab: Tab, start_app: Callable[..., App]
) -> None:
    app = start_app("--users", "alice:TA,bob:TB", "--token-ttl", "2")
    order = {"metadata": {"name": "a-1"}, "spec": {"item": "book", "qty": 1}}
    with httpx.Client(base_url=app.url, timeout=WAIT) as http:
        alice = {"authorization": "Bearer TA"}
        assert http.post("/orders", json=order, headers=alice).status_code == 201
        bobs = {**order, "metadata": {"name": "b-1"}}
        assert (
            http.post("/orders", json=bobs, headers={"authorization": "Bearer TB"}).status_code
            == 201
        )
        tab.open(app.url + "/?access_token=TA")
        tab.wait_for("alice's order, live", is_live(1))
        assert auth_of(tab) == "signed in"
        snap = tab.wait_for("the credentials to expire", lambda s: s.state == "closed")
        assert "credentials expired" in (snap.error or "")
        assert auth_of(tab) == "expired"
        assert snap.rows == {"a-1": ""}  # the table stays
        order2 = {**order, "metadata": {"name": "a-2"}}
        assert http.post("/orders", json=order2, headers=alice).status_code == 201
    tab.evaluate(
        """(() => {
          const form = document.getElementById("login");
          form.elements.namedItem("token").value = "TA";
          form.requestSubmit();
        })()"""
    )
    snap = tab.wait_for("the resumed stream", lambda s: s.state == "live" and "a-2" in s.rows)
    assert set(snap.rows) == {"a-1", "a-2"}  # resumed: a-1 kept, a-2 from the replay
    assert auth_of(tab) == "signed in"


def test_a_missing_or_wrong_token_is_signed_out(tab: Tab, start_app: Callable[..., App]) -> None:
    app = start_app("--users", "alice:TA")
    tab.open(app.url + "/?access_token=nope")
    tab.wait_for("the refusal", lambda s: s.state == "closed")
    tab.wait_for("signed out", lambda s: auth_of(tab) == "signed out")
