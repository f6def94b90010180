from __future__ import annotations

import contextlib
import uuid
from contextlib import asynccontextmanager

import nats
import nats.js.errors

from watchroutes.backends.nats import NatsLog

from .._services import NATS_URL, free_port, require
from .harness import Harness, Iter


@asynccontextmanager
async def harness() -> Iter:
    require("nats")
    stream = f"test-{uuid.uuid4().hex[:12]}"
    client = await nats.connect(NATS_URL)
    js = client.jetstream()

    async def wipe() -> None:
        """Delete the stream and the state bucket, as an operator would."""
        for name in (stream, f"KV_{stream}_state"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)

    h = Harness(
        make=lambda: NatsLog(NATS_URL, stream=stream, poll_interval=0.2),
        wipe=wipe,
        dead=lambda: NatsLog(f"nats://127.0.0.1:{free_port()}", timeout=1.0),
        url=f"{NATS_URL}?stream={stream}",
    )
    try:
        yield h
    finally:
        for backend in h.opened:
            await backend.close()
        await wipe()
        await client.close()
