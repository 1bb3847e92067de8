"""The HTTP side of downloads: the CDN client, and streaming one file into its `.part`.

Media links point at third-party CDNs, so they are fetched with a plain client of their
own that never holds the relay key. `PartTransfer` streams one response into a `PartFile`,
hashing on the way, and resumes it with HTTP Range after a break-off.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import posixpath
import re
import ssl
import time
import typing
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError
from luma_prefect.delivery._download_net import LargeReads
from luma_prefect.delivery._plain_http import PlainHTTPTransport
from luma_prefect.storage import PartFile

__all__ = [
    "LinkRefused",
    "PartTransfer",
    "TransientError",
    "file_extension",
    "media_client",
    "progress_reporter",
]

_log = logging.getLogger("luma_prefect.download")
EXPIRED_STATUSES = (401, 403, 404, 410)
_TRANSIENT = (408, 425, 429, 500, 502, 503, 504, 520, 522, 524)
_PROGRESS_EVERY = 0.25  # seconds: a few updates a second are plenty for a progress bar
_EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
}
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)

Progress = Callable[[int, int | None], Awaitable[None]]


def file_extension(content_type: str | None, url: str, name: str) -> str:
    """The file extension for a download: from its Content-Type, else its URL, else a default."""
    word = (content_type or "").split(";")[0].strip().lower()
    if word in _EXTENSIONS:
        return _EXTENSIONS[word]
    suffix = posixpath.splitext(urlsplit(url).path)[1].lower()
    suffix = ".jpg" if suffix == ".jpeg" else suffix
    if suffix in _EXTENSIONS.values():
        return suffix
    return ".mp4" if name == "video" else ".jpg"


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~25 ms: once per process, not once per download.
    return httpx.create_ssl_context()


def _https_transport(max_connections: int) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(
        verify=_ssl_context(), limits=httpx.Limits(max_connections=max_connections)
    )
    # httpx has no public hook for the network backend; without this, reads stay small.
    pool = getattr(transport, "_pool", None)
    current = getattr(pool, "_network_backend", None)
    if isinstance(current, httpcore.AsyncNetworkBackend):
        pool._network_backend = LargeReads(current)  # type: ignore[union-attr]
    return transport


def media_client(max_connections: int = 3) -> httpx.AsyncClient:
    """A plain client for CDN links: no relay key, redirects followed, large socket reads.

    With a proxy configured in the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
    with `NO_PROXY`), httpx's own transports carry everything through it; otherwise plain
    `http://` bodies come through `PlainHTTPTransport` and https reads are 1 MiB large.
    """
    options: dict[str, Any] = {
        "follow_redirects": True,
        "timeout": httpx.Timeout(60.0, connect=15.0),
        "headers": {"User-Agent": "luma-prefect/0.1"},
    }
    if urllib.request.getproxies().keys() & {"http", "https", "all"}:
        # httpx applies environment proxies only to the transports it builds itself.
        limits = httpx.Limits(max_connections=max_connections)
        try:
            return httpx.AsyncClient(verify=_ssl_context(), limits=limits, **options)
        except ImportError as exc:  # a socks5:// proxy without httpx's socks extra
            raise LumaConfigurationError(
                f"The proxy configured in the environment needs a package that is not "
                f"installed ({exc}). Install it (pip install 'httpx[socks]'), or unset the "
                "proxy variables for media downloads."
            ) from exc
    return httpx.AsyncClient(
        transport=_https_transport(max_connections),
        mounts={"http://": PlainHTTPTransport(max_connections)},
        **options,
    )


class LinkRefused(Exception):
    """The link answered 401/403/404/410: expired (or never valid); ask for a fresh one."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class TransientError(Exception):
    """A transient status or an unusable answer: retried like a broken-off transfer."""


def _total_of(response: httpx.Response, encoded: bool) -> int | None:
    if response.status_code == 206:
        match = _CONTENT_RANGE.search(response.headers.get("content-range", ""))
        return int(match.group(3)) if match and match.group(3) != "*" else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() and not encoded else None


class PartTransfer:
    """One file's bytes into its `.part`, across resumed attempts; `run` is one attempt.

    `have` is the part's length and `digest` the sha256 of exactly those bytes once an
    attempt ends (normally or not), so the next attempt asks for `Range: bytes=<have>-`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        part: PartFile,
        *,
        name: str,
        generation_id: str,
        meta: dict[str, Any],
        max_bytes: int = 4 * 1024**3,
        chunk_size: int = 1024 * 1024,
        progress: Progress | None = None,
    ) -> None:
        self.http, self.part, self.name, self.gid = http, part, name, generation_id
        self.meta, self.max_bytes, self.chunk_size = meta, max_bytes, chunk_size
        self.progress = progress
        self.have = 0
        self.digest: Any = None
        self._hashed = -1  # bytes fed to `digest`; -1: unknown, hash the part from disk

    async def run(self, url: str) -> None:
        """One attempt: request from `have` on, append or start over, verify the length.

        Raises `LinkRefused`, `TransientError`, `httpx.TransportError` (break-off: call
        again to resume) or `LumaDownloadError` (final).
        """
        self.have = await asyncio.to_thread(lambda: self.part.size)
        # identity: the bytes on disk are then the bytes Content-Length and Range count.
        headers = {"Accept-Encoding": "identity"}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        async with self.http.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status in EXPIRED_STATUSES:
                raise LinkRefused(status)
            if status == 416 and self.have:
                return await self._unsatisfiable(response)
            if status in _TRANSIENT:
                raise TransientError(f"HTTP {status}")
            if status not in (200, 206):
                raise LumaDownloadError(
                    f"The {self.name} link of generation {self.gid} answered HTTP {status}: "
                    "the CDN refused it. Try again later, or resubmit the generation.",
                    generation_id=self.gid,
                )
            encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
            total = _total_of(response, encoded)
            append = status == 206
            if append:
                match = _CONTENT_RANGE.search(response.headers.get("content-range", ""))
                if encoded or not match or not match.group(1) or int(match.group(1)) != self.have:
                    await asyncio.to_thread(self.part.discard)
                    raise TransientError("the server answered another range: starting over")
            self.have = self.have if append else 0  # 200 to a Range: the whole file again
            if total is not None and total > self.max_bytes:
                await self._too_big(f"announces {total} bytes")
            self.meta.update(total=total, content_type=response.headers.get("content-type"))
            await asyncio.to_thread(self.part.write_meta, self.meta)
            if not append:
                self.digest = hashlib.sha256()
            elif self._hashed != self.have:
                self.digest = await asyncio.to_thread(self.part.hash_existing)
            self._hashed = self.have
            pieces = response.aiter_bytes() if encoded else response.aiter_raw()
            await self._copy(pieces, append, total)
            if total is not None and self.have != total:
                raise TransientError(f"the body ended at {self.have} of {total} bytes")

    async def _copy(self, pieces: AsyncIterator[bytes], append: bool, total: int | None) -> None:
        """Network pieces into the part in batches of `chunk_size`, hashed on the way.

        Batched here, not with httpx's `chunk_size`: httpx drops a half-filled chunk when the
        connection breaks, and those bytes would be downloaded twice. Each batch is hashed
        here, as it arrives and while its bytes are still in this core's cache, then queued
        to a one-thread writer (one `writev`, the pieces never joined) that writes it while
        the next batch arrives. Hashing in the writer instead measured about 20 % more CPU:
        each batch crossed to another core to be read a second time.

        Whatever ends the attempt (a break-off, cancellation), every queued batch is written
        before this returns, so `have` and `digest` cover exactly the bytes in the part; a
        failed write leaves the digest unknown (`_hashed = -1`).
        """
        loop = asyncio.get_running_loop()
        last, over = 0.0, False
        batch: list[bytes] = []
        size = 0
        unfinished: list[asyncio.Future[None]] = []  # queued writes, in order
        with (
            self.part.writer(append=append) as write,
            ThreadPoolExecutor(1, thread_name_prefix="luma-part-writer") as writer,
        ):
            digest = self.digest

            async def flush() -> None:
                nonlocal batch, size
                done, count = batch, size
                batch, size = [], 0
                _hash_pieces(digest, done)  # sha256 releases the GIL: the writer goes on
                # Hashed, queued and counted with no await in between: never one without all.
                unfinished.append(loop.run_in_executor(writer, write, done))
                self.have += count
                if len(unfinished) > 1:  # two batches in flight at most: memory stays flat
                    await asyncio.shield(unfinished[0])
                    unfinished.pop(0)

            try:
                async for piece in pieces:
                    batch.append(piece)
                    size += len(piece)
                    if self.have + size > self.max_bytes:
                        over = True
                        break
                    if size >= self.chunk_size:
                        await flush()
                        if self.progress and time.monotonic() - last >= _PROGRESS_EVERY:
                            last = time.monotonic()
                            await self.progress(self.have, total)
            finally:
                # What arrived before a break-off is kept: the resume starts after it.
                if batch and not over:
                    await flush()
                await self._finish_writes(unfinished)
        if over:
            await self._too_big(f"grew past {self.max_bytes} bytes")
        if self.progress:
            await self.progress(self.have, total)

    async def _finish_writes(self, unfinished: list[asyncio.Future[None]]) -> None:
        """Wait for every queued write; the first failure is raised, the digest then unknown."""
        self._hashed = -1  # until every write is known to be done (even if cancelled again)
        outcomes = await asyncio.shield(asyncio.gather(*unfinished, return_exceptions=True))
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
        self._hashed = self.have

    async def _unsatisfiable(self, response: httpx.Response) -> None:
        # 416 with the part already whole: a crash came between the last byte and the rename.
        match = _CONTENT_RANGE.search(response.headers.get("content-range", ""))
        if match and match.group(3) != "*" and int(match.group(3)) == self.have:
            self.meta.setdefault("total", self.have)
            if self._hashed != self.have:
                self.digest = await asyncio.to_thread(self.part.hash_existing)
                self._hashed = self.have
            return
        await asyncio.to_thread(self.part.discard)
        raise TransientError("range not satisfiable: starting over")

    async def _too_big(self, what: str) -> typing.NoReturn:
        await asyncio.to_thread(self.part.discard)
        raise LumaDownloadError(
            f"The {self.name} of generation {self.gid} {what}, over the limit of "
            f"{self.max_bytes} bytes (max_bytes): download stopped and the partial file "
            "removed. Raise max_bytes if a file this large is expected.",
            generation_id=self.gid,
        )


def _hash_pieces(digest: Any, pieces: list[bytes]) -> None:
    for piece in pieces:
        digest.update(piece)


def progress_reporter(
    callback: Callable[[str, int, int | None], Any] | None, name: str
) -> Progress | None:
    """`callback(name, done, total)` as a `Progress`; sync or async, its failures ignored."""
    if callback is None:
        return None

    async def report(done: int, total: int | None) -> None:
        try:
            outcome = callback(name, done, total)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:  # a broken progress display must not break the download
            _log.debug("on_progress failed: %r", exc)

    return report
