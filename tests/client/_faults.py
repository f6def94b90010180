"""Network faults for the client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

__all__ = ["Network"]


class _CutStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, network: Network) -> None:
        self.inner = inner
        self.network = network

    async def __aiter__(self) -> AsyncIterator[bytes]:
        generation = self.network.generation
        async for chunk in self.inner:
            if self.network.generation != generation:
                raise httpx.ReadError("the connection was cut")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Network(httpx.AsyncBaseTransport):
    """The app's transport, with faults: ``cut()`` breaks every open response at its next
    chunk (the chunk is lost, as on a real drop); ``refuse`` connection attempts fail."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.generation = 0
        self.refuse = 0
        self.requests: list[httpx.Request] = []

    def cut(self) -> None:
        self.generation += 1

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.refuse:
            self.refuse -= 1
            raise httpx.ConnectError("connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CutStream(response.stream, self),
            request=request,
        )
