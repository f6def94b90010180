"""``watchroutes.client`` keeps ``__all__`` honest, and runs on trio as well as asyncio."""

from __future__ import annotations

import types

import pytest

import watchroutes.client

from .test_servers import Restartable


def test_all_is_honest() -> None:
    module = watchroutes.client
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert set(module.__all__) == public
    assert list(module.__all__) == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.network
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_informer_on_trio() -> None:
    server = Restartable("starlette", "--seed", "2")
    try:
        async with watchroutes.client.Informer(server.url, heartbeat=1) as informer:
            await informer.wait_synced()
            assert sorted(informer.store) == ["o-1", "o-2"]
            async with informer.changes() as changes:
                server.server.delete("o-1")
                change = await changes.__anext__()
            assert (change.type, change.key) == ("DELETED", "o-1")
    finally:
        server.server.stop()
