from __future__ import annotations

import importlib
from collections.abc import AsyncIterator

import pytest

from .harness import Harness

ENGINES = ["memory", "redis", "postgres", "nats"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py, psycopg and nats-py are asyncio libraries


@pytest.fixture(params=ENGINES)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    module = importlib.import_module(f"tests.backends.harness_{request.param}")
    async with module.harness() as h:
        yield h
