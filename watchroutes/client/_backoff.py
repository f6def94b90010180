"""Reconnect delays: exponential backoff with full jitter and a cap, reset after a healthy
period. Sans-IO: time comes in as ``now``, randomness from an injected source.

The numbers are client-go's (``wait.NewExponentialBackoffManager`` in the reflector: 800 ms
initial, doubling, 30 s cap, reset after 2 minutes without a failure); the jitter is AWS's
"full jitter" (a uniform draw in ``[0, ceiling)``), which spreads a herd of clients that lost
the same server far better than a small multiplicative jitter does.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Final

__all__ = [
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_RESET_AFTER",
    "Backoff",
]

#: The first ceiling, in seconds (client-go's reflector: 800 ms).
DEFAULT_BACKOFF_INITIAL: Final = 0.8
#: The largest ceiling, in seconds (client-go: 30 s).
DEFAULT_BACKOFF_CAP: Final = 30.0
#: A failure this long after the previous one starts the sequence over (client-go: 2 min).
DEFAULT_BACKOFF_RESET_AFTER: Final = 120.0


class Backoff:
    """``failure(now)`` gives the delay before the next attempt.

    The n-th failure in a row (counting from 0) waits a uniform draw in
    ``[0, min(cap, initial * factor**n))``; a failure at least ``reset_after`` seconds after
    the previous one counts as the first again (the connection was healthy in between).
    """

    def __init__(
        self,
        *,
        initial: float = DEFAULT_BACKOFF_INITIAL,
        cap: float = DEFAULT_BACKOFF_CAP,
        factor: float = 2.0,
        reset_after: float = DEFAULT_BACKOFF_RESET_AFTER,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 < initial <= cap or factor < 1 or reset_after <= 0:
            raise ValueError("need 0 < initial <= cap, factor >= 1 and reset_after > 0")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.reset_after = reset_after
        self._random = random
        self._attempt = 0
        self._last_failure: float | None = None

    @property
    def attempt(self) -> int:
        """Failures in a row so far."""
        return self._attempt

    def ceiling(self) -> float:
        """The upper bound of the next draw (without a reset)."""
        # min() before the power overflows: factor**attempt grows without bound.
        exponent = min(self._attempt, 64)
        return min(self.cap, self.initial * self.factor**exponent)

    def failure(self, now: float) -> float:
        """Record a failure at ``now``; the seconds to wait before the next attempt."""
        if self._last_failure is not None and now - self._last_failure >= self.reset_after:
            self._attempt = 0
        ceiling = self.ceiling()
        self._attempt += 1
        self._last_failure = now
        return self._random() * ceiling

    def reset(self) -> None:
        """Start over (a later failure waits at most ``initial``)."""
        self._attempt = 0
        self._last_failure = None
