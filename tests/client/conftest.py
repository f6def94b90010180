"""The headless Chromium of the live-page tests, for the browser helper's tests."""

from __future__ import annotations

from ..examples.test_live_page import browser, tab

__all__ = ["browser", "tab"]
