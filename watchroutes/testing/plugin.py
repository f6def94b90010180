"""pytest fixtures for applications that use watchroutes (registered through ``pytest11``)."""

from __future__ import annotations

import pytest

from .._runtime.hub import Hub
from ._clock import FakeClock

__all__ = ["fake_clock", "watch_hub"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` at time 0; pass it to ``Hub(clock=...)``."""
    return FakeClock()


@pytest.fixture
def watch_hub(fake_clock: FakeClock) -> Hub:
    """A fresh in-memory :class:`Hub` driven by ``fake_clock``."""
    return Hub(clock=fake_clock)
