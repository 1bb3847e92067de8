"""HTTP/1.1 over plain TCP for `http://` media links: h11 reads the head, the body is ours.

Through httpcore, every body byte is copied four times in Python (h11's receive buffer, two
slices, `bytes()`): on a fast link that costs more CPU than the kernel's own work, and a
download competing for the CPU with its hashing falls well behind curl. Here h11 still
writes the request and parses the response head (all the protocol's rules stay h11's), but
a body framed by Content-Length, or by the end of the connection, comes straight off the
socket: each piece is the bytes object `recv` filled, with no copy at all. Chunked bodies go
through h11 as usual.

One connection per request, closed with the response (`Connection: close`): media links are
a few large files, where a handshake costs nothing. No proxy and no TLS: `media_client`
mounts this transport for `http://` only when no proxy is configured for it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import h11
import httpx

from luma_prefect.delivery._download_net import READ_BYTES

__all__ = ["MAX_HEAD_BYTES", "PlainHTTPTransport"]

MAX_HEAD_BYTES = 64 * 1024
"""A response head larger than this is refused (h11's own default limit is 16 KiB)."""
_HEAD_END = re.compile(rb"\n\r?\n")  # h11's own end-of-head rule: bare LF is tolerated
_NO_BODY = -1  # `_Body` framing: nothing follows the head
_UNTIL_CLOSE = -2  # `_Body` framing: the body ends when the server closes the connection
T = TypeVar("T")


async def _within(what: Awaitable[T], timeout: float | None) -> T:
    """`await what`, raising the builtin TimeoutError after `timeout` seconds (None: never)."""
    if timeout is None:
        return await what
    if sys.version_info >= (3, 11):
        # Cheaper than wait_for (no task per wait), and this runs once per empty socket.
        async with asyncio.timeout(timeout):
            return await what
    return await _within_py310(what, timeout)  # pragma: no cover - Python 3.10


async def _within_py310(what: Awaitable[T], timeout: float) -> T:  # pragma: no cover
    # Python 3.10's wait_for can swallow a cancellation that meets a finished read (fixed in
    # 3.12): a cancelled download would go on. Cancel this very task from a timer instead.
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await what
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError(f"no answer within {timeout} s") from None
        raise
    finally:
        timer.cancel()


class _Socket:
    """A non-blocking socket with timeouts; failures raised as httpx's transport errors.

    `release` is called once, when the socket is closed (a connection-limit slot).
    """

    def __init__(
        self, sock: socket.socket, request: httpx.Request, release: Callable[[], None]
    ) -> None:
        self.sock = sock
        self.request = request
        self._release: Callable[[], None] | None = release
        timeouts = request.extensions.get("timeout", {})
        self.read_timeout: float | None = timeouts.get("read")
        self.write_timeout: float | None = timeouts.get("write")

    @classmethod
    async def connect(cls, request: httpx.Request, release: Callable[[], None]) -> _Socket:
        """A connection to the request's host: each address in turn, all within one timeout."""
        host = request.url.raw_host.decode("ascii")  # IDNA-encoded by httpx, as httpcore does
        port = request.url.port or 80
        timeout = request.extensions.get("timeout", {}).get("connect")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        try:
            found = await _within(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), left())
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"timed out resolving {host}", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}", request=request) from exc
        error: httpx.TransportError = httpx.ConnectError(f"no address for {host}", request=request)
        for family, kind, proto, _, address in found:
            sock: socket.socket | None = None
            try:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await _within(loop.sock_connect(sock, address), left())
                return cls(sock, request, release)
            except TimeoutError:
                if sock is not None:
                    sock.close()
                raise httpx.ConnectTimeout(
                    f"timed out connecting to {host}:{port}", request=request
                ) from None
            except OSError as exc:  # refused, unreachable, or no such family here: next one
                if sock is not None:
                    sock.close()
                error = httpx.ConnectError(
                    f"cannot connect to {host}:{port}: {exc}", request=request
                )
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        raise error

    async def recv(self, size: int) -> bytes:
        try:
            # Data already in the kernel: take it without a trip through the event loop.
            return self.sock.recv(size)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise httpx.ReadError(str(exc), request=self.request) from exc
        loop = asyncio.get_running_loop()
        try:
            return await _within(loop.sock_recv(self.sock, size), self.read_timeout)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(
                "timed out reading from the server", request=self.request
            ) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc), request=self.request) from exc

    async def send(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            await _within(loop.sock_sendall(self.sock, data), self.write_timeout)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(
                "timed out writing to the server", request=self.request
            ) from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc), request=self.request) from exc

    def close(self) -> None:
        self.sock.close()
        release, self._release = self._release, None
        if release is not None:
            release()


def _nothing() -> None:
    pass


def _protocol_error(exc: h11.ProtocolError, request: httpx.Request) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"the server broke HTTP/1.1: {exc}", request=request)


class _Body(httpx.AsyncByteStream):
    """A response body read off its own connection, which it closes when done."""

    def __init__(
        self, conn: _Socket, h11_conn: h11.Connection, leftover: bytes, length: int | None
    ) -> None:
        # length: bytes still to come (Content-Length), _UNTIL_CLOSE, _NO_BODY, or None when
        # h11 decodes the body (chunked).
        self._conn, self._h11, self._leftover, self._length = conn, h11_conn, leftover, length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._length is None:
                async for piece in self._decoded():
                    yield piece
            elif self._length != _NO_BODY:
                async for piece in self._raw():
                    yield piece
        finally:
            self._conn.close()

    async def _raw(self) -> AsyncIterator[bytes]:
        expected = self._length
        remaining = expected if expected >= 0 else None
        if self._leftover:
            first = self._leftover if remaining is None else self._leftover[:remaining]
            self._leftover = b""
            if remaining is not None:
                remaining -= len(first)
            yield first
        while remaining is None or remaining > 0:
            piece = await self._conn.recv(
                READ_BYTES if remaining is None else min(READ_BYTES, remaining)
            )
            if not piece:
                if remaining is None:
                    return
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {expected - remaining} bytes, expected {expected})",
                    request=self._conn.request,
                )
            if remaining is not None:
                remaining -= len(piece)
            yield piece
            # A fast link never empties the socket, so recv never waits: let others run.
            await asyncio.sleep(0)

    async def _decoded(self) -> AsyncIterator[bytes]:
        data, self._leftover = self._leftover, b""
        while True:
            if data:
                self._h11.receive_data(data)
            while True:
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _protocol_error(exc, self._conn.request) from exc
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif event is h11.NEED_DATA:
                    break
                else:  # EndOfMessage
                    return
            data = await self._conn.recv(READ_BYTES)
            if not data:
                self._h11.receive_data(b"")  # h11 tells a clean end from a cut-off one

    async def aclose(self) -> None:
        self._conn.close()


class PlainHTTPTransport(httpx.AsyncBaseTransport):
    """An httpx transport for `http://` links that reads response bodies without copies.

    For large downloads over plain HTTP (a LAN mirror, a local relay): the body of a
    Content-Length or read-until-close response is handed on as the socket delivers it.
    Each request opens its own connection; at most `max_connections` are open at once
    (None: no limit), a response holding its connection until it is closed. It speaks no
    TLS and no proxy: mount it for `http://` only, and only when no HTTP proxy applies.

    Example:
        ```python
        client = httpx.AsyncClient(mounts={"http://": PlainHTTPTransport(max_connections=3)})
        ```
    """

    def __init__(self, max_connections: int | None = None) -> None:
        self._max_connections = max_connections
        self._slots: asyncio.Semaphore | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a new connection; the response streams its body from it.

        Example:
            ```python
            response = await PlainHTTPTransport().handle_async_request(request)
            ```
        """
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"PlainHTTPTransport serves http:// only, not {request.url.scheme}://",
                request=request,
            )
        if self._max_connections is not None and self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        try:
            conn = await _Socket.connect(request, slots.release if slots else _nothing)
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        try:
            h11_conn = h11.Connection(h11.CLIENT)
            await self._send_request(conn, h11_conn, request)
            response, leftover = await self._read_head(conn, h11_conn)
            body = _Body(conn, h11_conn, leftover, self._framing(h11_conn, response))
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers.raw_items(),
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    @staticmethod
    async def _send_request(
        conn: _Socket, h11_conn: h11.Connection, request: httpx.Request
    ) -> None:
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"connection"]
        headers.append((b"Connection", b"close"))
        try:
            head = h11_conn.send(
                h11.Request(method=request.method, target=request.url.raw_path, headers=headers)
            )
            await conn.send(head or b"")
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    await conn.send(h11_conn.send(h11.Data(data=chunk)) or b"")
            await conn.send(h11_conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc

    @staticmethod
    async def _read_head(conn: _Socket, h11_conn: h11.Connection) -> tuple[h11.Response, bytes]:
        """The final response head (1xx ones skipped), and the body bytes read with it."""
        buffer = bytearray()
        searched = 0
        while True:
            end = _HEAD_END.search(buffer, max(0, searched - 2))  # the end may straddle reads
            if (end.end() if end else len(buffer)) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(
                    f"the response head is over {MAX_HEAD_BYTES} bytes", request=conn.request
                )
            if end is None:
                data = await conn.recv(MAX_HEAD_BYTES)
                if not data:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering", request=conn.request
                    )
                searched = len(buffer)
                buffer += data
                continue
            head, buffer, searched = bytes(buffer[: end.end()]), buffer[end.end() :], 0
            try:
                h11_conn.receive_data(head)
                event = h11_conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _protocol_error(exc, conn.request) from exc
            if isinstance(event, h11.Response):
                return event, bytes(buffer)
            # An InformationalResponse (100 Continue, 103 Early Hints): the real one follows.

    @staticmethod
    def _framing(h11_conn: h11.Connection, response: h11.Response) -> int | None:
        try:
            if h11_conn.next_event() is not h11.NEED_DATA:  # HEAD, 204, 304, Content-Length: 0
                return _NO_BODY
        except h11.RemoteProtocolError:  # pragma: no cover - h11 checked the head already
            return None
        headers = {name.lower(): value for name, value in response.headers}
        if b"transfer-encoding" in headers:
            return None  # chunked: h11 decodes it
        if b"content-length" in headers:
            return int(headers[b"content-length"])  # h11 has checked it is one number
        return _UNTIL_CLOSE
