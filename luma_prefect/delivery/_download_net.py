"""Larger socket reads under httpcore, for media links fetched through httpx (https).

httpcore reads 64 KiB per call, each a trip through anyio and the event loop: on a fast
link that caps a download well below what curl does. `LargeReads` wraps any httpcore
network backend so every read asks for up to `READ_BYTES`. Plain `http://` links skip
httpcore altogether when no proxy is configured (see `_plain_http`).
"""

from __future__ import annotations

from typing import Any

import httpcore

__all__ = ["READ_BYTES", "LargeReads"]

READ_BYTES = 1024 * 1024
"""The most one socket read asks for: what the kernel holds, up to 1 MiB."""


class _LargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class LargeReads(httpcore.AsyncNetworkBackend):
    """Wraps an httpcore network backend so that every socket read asks for up to 1 MiB.

    Example:
        ```python
        backend = LargeReads(httpcore.AnyIOBackend())
        ```
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
