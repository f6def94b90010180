from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from watchroutes.backends.redis import RedisLog

from .._services import REDIS_URL, free_port, require
from .harness import Harness, Iter


@asynccontextmanager
async def harness() -> Iter:
    require("redis")
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)

    async def wipe() -> None:
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*")]
        if keys:
            await client.delete(*keys)

    h = Harness(
        make=lambda: RedisLog(REDIS_URL, prefix=prefix, poll_interval=0.2),
        wipe=wipe,
        dead=lambda: RedisLog(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0),
        url=f"{REDIS_URL}?prefix={prefix}",
    )
    try:
        yield h
    finally:
        for backend in h.opened:
            await backend.close()
        await wipe()
        await client.aclose()
