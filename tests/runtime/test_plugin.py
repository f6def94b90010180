"""The pytest plugin registered through the ``pytest11`` entry point."""

from __future__ import annotations

import pytest

from watchroutes import Hub
from watchroutes.testing import FakeClock


def test_fixtures_are_registered(fake_clock: FakeClock, watch_hub: Hub) -> None:
    assert watch_hub.clock is fake_clock
    res = watch_hub.resource("orders")
    stored = res.create({"metadata": {"name": "a"}})
    assert int(stored["metadata"]["resourceVersion"]) == fake_clock.time_us() + 1


def test_plugin_is_an_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("watchroutes")
