"""Socket layers under the media client: larger reads, and a lean path for plain http.

httpcore reads 64 KiB per call, each a trip through anyio and the event loop: on a fast
link (a LAN mirror, a local relay, the simulator) that caps a download at about a third of
what curl does. Two remedies, both behind httpcore's public network-backend interface:

- `LargeReads` wraps any backend so every read asks for up to 1 MiB (used for https).
- `PlainTCPBackend` reads plain-TCP sockets with `loop.sock_recv`, which takes what the
  kernel holds (up to 1 MiB) without waiting when data is already there. It has no TLS,
  so it only serves `http://` links, and only when no proxy is configured for http.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterable
from typing import Any

import httpcore

__all__ = ["READ_BYTES", "LargeReads", "PlainTCPBackend"]

READ_BYTES = 1024 * 1024


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


def _readable(sock: socket.socket) -> bool:
    # httpcore asks before reusing a kept-alive connection: readable means closed by the peer.
    if sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class _SocketStream(httpcore.AsyncNetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        size = max(max_bytes, READ_BYTES)
        try:
            # Data already in the kernel: take it without a trip through the event loop.
            return self._sock.recv(size)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self._sock, size), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ReadTimeout("timed out reading from the server") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_sendall(self._sock, buffer), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.WriteTimeout("timed out writing to the server") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("this plain-TCP stream cannot start TLS (https)")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _readable(self._sock)
        if info in ("client_addr", "server_addr"):
            try:
                return (
                    self._sock.getsockname() if info == "client_addr" else self._sock.getpeername()
                )
            except OSError:
                return None
        return None


class PlainTCPBackend(httpcore.AsyncNetworkBackend):
    """Plain-TCP connections read with `loop.sock_recv`; for `http://` links only (no TLS).

    Example:
        ```python
        pool = httpcore.AsyncConnectionPool(network_backend=PlainTCPBackend())
        ```
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            addresses = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except asyncio.TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out resolving {host}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
                return _SocketStream(sock)
            except asyncio.TimeoutError:
                sock.close()
                error = httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}")
            except OSError as exc:
                sock.close()
                error = httpcore.ConnectError(str(exc))
            except BaseException:
                sock.close()
                raise
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for media links")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
