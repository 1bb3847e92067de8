"""PlainHTTPTransport against a scripted HTTP server on 127.0.0.1: framing, errors, proxies."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from luma_prefect import LumaConfigurationError
from luma_prefect.delivery._plain_http import MAX_HEAD_BYTES, PlainHTTPTransport
from luma_prefect.delivery._transfer import media_client


@dataclass
class Script:
    """A one-answer-per-connection server: records each request head, sends `answer`."""

    answer: bytes = b""
    close_after: bool = True
    heads: list[bytes] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.log.append("connected")
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self.answer)
            await writer.drain()
            if not self.close_after:
                await reader.read()  # keep the connection open until the client goes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Script]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: bytes = b"", close_after: bool = True) -> Script:
        script = Script(answer, close_after)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        script.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return script

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=PlainHTTPTransport(), timeout=5.0) as client:
        yield client


async def body_of(http: httpx.AsyncClient, url: str, method: str = "GET") -> bytes:
    async with http.stream(method, url) as response:
        return b"".join([piece async for piece in response.aiter_raw()])


async def test_a_content_length_body_arrives_whole_and_the_request_says_close(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, more than one socket read
    script = await serve(
        b"HTTP/1.1 206 Partial Content\r\nContent-Type: video/mp4\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
        close_after=False,  # the length alone must end the body
    )

    async with http.stream("GET", f"{script.url}/v.mp4?sig=1", headers={"Range": "bytes=5-"}) as r:
        received = b"".join([piece async for piece in r.aiter_raw()])

    assert received == body
    assert (r.status_code, r.reason_phrase, r.http_version) == (206, "Partial Content", "HTTP/1.1")
    assert r.headers["content-type"] == "video/mp4"
    head = script.heads[0].decode().lower()
    assert head.startswith("get /v.mp4?sig=1 http/1.1\r\n")
    assert f"host: 127.0.0.1:{script.port}\r\n" in head
    assert "range: bytes=5-\r\n" in head and "connection: close\r\n" in head


async def test_a_body_cut_short_is_a_protocol_error_saying_how_much_came(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n1234")

    with pytest.raises(httpx.RemoteProtocolError, match="received 4 bytes, expected 10"):
        await body_of(http, script.url)


async def test_a_body_without_length_runs_until_the_server_closes(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"HTTP/1.1 200 OK\r\n\r\nall of it")

    assert await body_of(http, script.url) == b"all of it"


async def test_a_chunked_body_is_decoded(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        close_after=False,  # the last chunk alone must end the body
    )

    assert await body_of(http, script.url) == b"hello world"


async def test_a_chunked_body_cut_short_is_a_protocol_error(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")

    with pytest.raises(httpx.RemoteProtocolError):
        await body_of(http, script.url)


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
async def test_answers_without_a_body_end_at_their_head(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient, method: str, answer: bytes
) -> None:
    script = await serve(answer, close_after=False)  # the head alone must end the answer

    assert await body_of(http, script.url, method) == b""


async def test_an_informational_answer_before_the_real_one_is_skipped(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
    )

    async with http.stream("GET", script.url) as response:
        body = await response.aread()

    assert (response.status_code, response.headers["x-final"], body) == (200, "yes", b"ok")


async def test_a_head_with_bare_line_feeds_is_understood(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc")

    assert await body_of(http, script.url) == b"abc"


async def test_an_endless_head_is_refused(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(
        b"HTTP/1.1 200 OK\r\n" + b"X-Padding: aaaaaaaa\r\n" * (MAX_HEAD_BYTES // 10)
    )

    with pytest.raises(httpx.RemoteProtocolError, match="head is over"):
        await body_of(http, script.url)


async def test_a_malformed_head_is_a_protocol_error(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"SPDY/9 nonsense\r\n\r\n")

    with pytest.raises(httpx.RemoteProtocolError, match=r"broke HTTP/1\.1"):
        await body_of(http, script.url)


async def test_a_server_that_closes_without_answering_is_a_protocol_error(
    serve: Callable[..., Awaitable[Script]], http: httpx.AsyncClient
) -> None:
    script = await serve(b"")

    with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
        await body_of(http, script.url)


async def test_a_silent_server_is_a_read_timeout(
    serve: Callable[..., Awaitable[Script]],
) -> None:
    script = await serve(b"", close_after=False)

    async with httpx.AsyncClient(transport=PlainHTTPTransport(), timeout=0.05) as quick:
        with pytest.raises(httpx.ReadTimeout):
            await body_of(quick, script.url)


async def test_a_refused_connection_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed at once: nothing listens there

    with pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}"):
        await body_of(http, f"http://127.0.0.1:{port}/v.mp4")


async def test_only_plain_http_is_served() -> None:
    request = httpx.Request("GET", "https://127.0.0.1/v.mp4")

    with pytest.raises(httpx.UnsupportedProtocol, match="http:// only"):
        await PlainHTTPTransport().handle_async_request(request)


async def test_the_media_client_sends_plain_http_through_a_configured_proxy(
    serve: Callable[..., Awaitable[Script]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async with media_client() as http:
        assert await body_of(http, "http://cdn.invalid/v.mp4") == b"ok"

    # The proxy got the request in absolute form: httpx's own transport, not ours.
    assert proxy.heads[0].startswith(b"GET http://cdn.invalid/v.mp4 HTTP/1.1\r\n")


@pytest.mark.parametrize("unrelated", [{}, {"ftp": "http://127.0.0.1:9", "no": "localhost"}])
async def test_the_media_client_reads_plain_http_itself_without_an_http_proxy(
    serve: Callable[..., Awaitable[Script]],
    monkeypatch: pytest.MonkeyPatch,
    unrelated: dict[str, str],
) -> None:
    monkeypatch.setattr(urllib.request, "getproxies", lambda: unrelated)
    script = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with media_client() as http:
        assert await body_of(http, f"{script.url}/v.mp4") == b"ok"

    assert b"connection: close\r\n" in script.heads[0].lower()  # PlainHTTPTransport's mark


async def test_a_proxy_that_needs_a_missing_package_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: the SOCKS proxy would just work")
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")

    with pytest.raises(LumaConfigurationError, match=r"httpx\[socks\]"):
        media_client()


async def test_at_most_max_connections_are_open_and_a_failed_one_frees_its_slot(
    serve: Callable[..., Awaitable[Script]],
) -> None:
    script = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close_after=False)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}/"

    async with httpx.AsyncClient(transport=PlainHTTPTransport(max_connections=1)) as http:
        with pytest.raises(httpx.ConnectError):
            await body_of(http, refused)  # its slot comes back: the next requests can run
        first = await http.send(http.build_request("GET", script.url), stream=True)
        second = asyncio.ensure_future(body_of(http, script.url))
        for _ in range(50):  # time enough for a loopback connect, were one allowed
            await asyncio.sleep(0)
        script.log.append("first closed")
        await first.aclose()

        assert await second == b"ok"

    assert script.log == ["connected", "first closed", "connected"]
