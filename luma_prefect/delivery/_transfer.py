"""The HTTP side of downloads: the CDN client, and streaming one file into its `.part`.

Media links point at third-party CDNs, so they are fetched with a plain client of their
own that never holds the relay key. `PartTransfer` streams one response into a `PartFile`,
hashing on the way, resumes it with HTTP Range after a break-off, and cuts an attempt that
stalls (too few bytes over a window) or outlives the file's total deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import logging
import posixpath
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError
from luma_prefect._tls import Verify, ssl_context
from luma_prefect.delivery._guard import UnsafeLink, media_hooks
from luma_prefect.storage import PartFile
from luma_prefect.wait._settings import Clock, SystemClock

__all__ = [
    "LinkRefused",
    "PartTransfer",
    "Stalled",
    "TransferLimits",
    "TransientError",
    "UnsafeLink",
    "file_extension",
    "media_client",
    "progress_reporter",
]

_log = logging.getLogger("luma_prefect.download")
EXPIRED_STATUSES = (401, 403, 404, 410)
_TRANSIENT = (408, 425, 429, 500, 502, 503, 504, 520, 522, 524)
_PROGRESS_EVERY = 0.25  # seconds: a few updates a second are plenty for a progress bar
# A 64 KiB write into the page cache takes tens of microseconds; one that takes longer than
# this means a slow or throttled mount (a NAS under writeback), and the part's later writes
# go to a worker thread, so the event loop stays free for the stall check and the other
# deliveries. In a thread, 64 KiB writes cost 7.0 CPU s per GiB against 4.3 here (512 MiB
# over https, 3 alternated rounds): the loop's own thread is the fast path, not the only one.
_SLOW_WRITE_SECONDS = 0.05
_MAX_REDIRECTS = 10
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


def media_client(
    max_connections: int = 3,
    *,
    verify: Verify = True,
    allow_private_hosts: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A plain client for CDN links: no relay key, checked redirects, httpx's own transport.

    `verify` is True, False or a CA bundle path (one SSL context per process and setting).
    Links and redirects to private, loopback or link-local hosts are refused unless
    `allow_private_hosts`; an https link never follows a redirect to http. Proxies from the
    environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`) apply as in httpx
    (unless a `transport` is given). Why httpx's own transport: README, "Media files".
    """
    try:
        return httpx.AsyncClient(
            verify=ssl_context(verify),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            # Per read; the whole transfer is bounded by PartTransfer's deadline and stall check.
            timeout=httpx.Timeout(60.0, connect=15.0),
            headers={"User-Agent": "luma-prefect/0.1"},
            event_hooks=media_hooks(allow_private_hosts),
        )
    except ImportError as exc:  # a socks5:// proxy without httpx's socks extra
        raise LumaConfigurationError(
            f"The proxy configured in the environment needs a package that is not "
            f"installed ({exc}). Install it (pip install 'httpx[socks]'), or unset the "
            "proxy variables for media downloads."
        ) from exc


class Stalled(Exception):
    """An attempt cut because too few bytes came over the stall window: resumed like a break.

    Example:
        ```python
        raise Stalled("fewer than 65536 bytes in 30 s")
        ```
    """


class _DeadlinePassed(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class TransferLimits:
    """How long one file may take: `deadline_seconds` in all (resumes and pauses included),
    and at least `stall_bytes` every `stall_seconds`, or the attempt is cut and resumed.

    Example:
        ```python
        TransferLimits(deadline_seconds=600, stall_seconds=20, stall_bytes=256 * 1024)
        ```
    """

    deadline_seconds: float = 1800.0
    stall_seconds: float = 30.0
    stall_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if not (self.deadline_seconds > 0 and self.stall_seconds > 0 and self.stall_bytes >= 0):
            raise LumaConfigurationError(
                "deadline_seconds and stall_seconds must be > 0, and stall_bytes >= 0."
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
    attempt ends (normally or not, cancelled included), so the next attempt asks for
    `Range: bytes=<have>-`.

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
        chunk_size: int = 64 * 1024,
        progress: Progress | None = None,
        limits: TransferLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.http, self.part, self.name, self.gid = http, part, name, generation_id
        self.meta, self.max_bytes, self.chunk_size = meta, max_bytes, chunk_size
        self.progress = progress
        self.limits = limits or TransferLimits()
        self.clock: Clock = clock or SystemClock()
        self.have = 0
        self.received = 0  # bytes off the network in this attempt: what the stall check counts
        self.digest: Any = None
        self._hashed = -1  # bytes fed to `digest`; -1: unknown, hash the part from disk
        self._threaded = False  # a write was slow: the next ones go to a worker thread

    async def run(self, url: str, *, deadline: float) -> None:
        """One attempt, cut when it stalls or when the clock passes `deadline`.

        Raises `LinkRefused`, `TransientError`, `Stalled`, `httpx.TransportError` (break-off:
        call again to resume) or `LumaDownloadError` (final: refused link, redirect loop,
        too big, deadline passed).
        """
        self.received = 0
        attempt = asyncio.ensure_future(self._attempt(url))
        watch = asyncio.ensure_future(self._watch(deadline))
        try:
            await asyncio.wait({attempt, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not attempt.done():
                # Cut (or cancelled from outside): the attempt ends its writes first, so
                # `have` and `digest` still match the part.
                attempt.cancel()
                await asyncio.wait({attempt})
        if attempt.cancelled() and not watch.cancelled() and watch.done():
            reason = watch.exception()
            if isinstance(reason, _DeadlinePassed):
                raise self._late()
            raise reason or Stalled("cut")
        try:
            attempt.result()
        except UnsafeLink as exc:
            raise LumaDownloadError(
                f"The {self.name} link of generation {self.gid} {exc}, so it was refused. "
                "If your CDN really is on a private network, set allow_private_media_hosts "
                "on the credentials block.",
                generation_id=self.gid,
            ) from None
        except httpx.TooManyRedirects:
            raise LumaDownloadError(
                f"The {self.name} link of generation {self.gid} redirected more than "
                f"{_MAX_REDIRECTS} times (a redirect loop), so it was given up. The relay or "
                "its CDN sent an unusable link: report it to them.",
                generation_id=self.gid,
            ) from None

    async def _watch(self, deadline: float) -> None:
        """Returns (by raising) when the attempt must be cut: deadline passed, or a stall."""
        window, floor = self.limits.stall_seconds, self.limits.stall_bytes
        since, mark = self.clock.monotonic(), self.received
        while True:
            now = self.clock.monotonic()
            await self.clock.sleep(max(min(deadline, since + window) - now, 0.0))
            now = self.clock.monotonic()
            if now >= deadline:
                raise _DeadlinePassed
            if now - since >= window:
                if self.received - mark < floor:
                    raise Stalled(f"fewer than {floor} bytes in {window:g} s")
                since, mark = now, self.received

    def _late(self) -> LumaDownloadError:
        return LumaDownloadError(
            f"The {self.name} of generation {self.gid} was not downloaded within its limit "
            f"of {self.limits.deadline_seconds:g} s ({self.have} bytes so far). The partial "
            "file is kept: run again soon, before the links expire, to resume it.",
            generation_id=self.gid,
            retryable=True,
        )

    async def _attempt(self, url: str) -> None:
        self.have = await asyncio.to_thread(lambda: self.part.size)
        # identity: the bytes on disk are then the bytes Content-Length and Range count.
        headers = {"Accept-Encoding": "identity"}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        async with self.http.stream(
            "GET", url, headers=headers, timeout=self._timeout()
        ) as response:
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

    def _timeout(self) -> httpx.Timeout:
        """The client's timeouts, without the per-read one when the stall check is stricter.

        A silent connection is cut by `_watch` within two stall windows; where that is no
        later than the client's read timeout, the read timeout adds nothing but a timer
        armed and cancelled on every TLS record (65,536 per GiB): 0.25 CPU s per GiB over
        https on loopback (4.38 with it, 4.13 without, 3 alternated rounds).
        """
        timeout = self.http.timeout
        read, limits = timeout.read, self.limits
        if limits.stall_bytes > 0 and read is not None and 2 * limits.stall_seconds <= read:
            read = None
        return httpx.Timeout(
            connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool
        )

    async def _copy(self, pieces: AsyncIterator[bytes], append: bool, total: int | None) -> None:
        """Network pieces into the part in batches of `chunk_size`, hashed on the way.

        Each piece is hashed as it arrives and its batch written by this thread in one
        vectored write, while the bytes are still in this core's cache: the part is always a
        local file (remote storage stages it), and a 64 KiB write into the page cache is
        cheaper than a hop to a thread on the other core (unless writes turn out slow: see
        `_write`). CPU s per GiB over https on loopback (2 alternated rounds): 1 MiB batches
        joined and written in a thread 6.60 (their copy into the page cache ran on the
        other core and missed its cache); 1 MiB written here 6.45 (313k page faults per GiB:
        the heap's pages returned and faulted again); 32 KiB 4.59; 64 KiB 4.13 (216
        faults); 128 KiB 4.73; 256 KiB 4.93; plain httpx writing each piece 5.55 (275k
        faults).
        Batched here, not with httpx's `chunk_size`: httpx drops a half-filled chunk when
        the connection breaks, and those bytes would be downloaded twice. Whatever ends the
        attempt (a break-off, a cut, cancellation), what arrived is written before this
        returns, so `have` and `digest` cover exactly the bytes in the part.
        """
        last, over = -_PROGRESS_EVERY, False  # the first batch is reported at once
        batch: list[bytes] = []
        size = 0
        digest = self.digest
        with self.part.writer(append=append) as write:
            try:
                async for piece in pieces:
                    self.received += len(piece)
                    if self.have + size + len(piece) > self.max_bytes:
                        over = True
                        break
                    if not batch:
                        self._hashed = -1  # the digest runs ahead of the part until written
                    digest.update(piece)
                    batch.append(piece)
                    size += len(piece)
                    if size >= self.chunk_size:
                        full, batch, size = batch, [], 0
                        await self._write(write, full)
                        now = self.clock.monotonic()
                        if self.progress and now - last >= _PROGRESS_EVERY:
                            last = now
                            await self.progress(self.have, total)
            finally:
                # What arrived before a break-off is kept: the resume starts after it.
                if batch and not over:
                    await self._write(write, batch)
        if over:
            await self._too_big(f"grew past {self.max_bytes} bytes")
        if self.progress:
            await self.progress(self.have, total)

    async def _write(self, write: Callable[[list[bytes]], None], batch: list[bytes]) -> None:
        """Write one hashed batch, then count it (a failed write raised LumaDownloadError,
        the part removed). Here, or in a thread once a write was slow; a cancellation
        waits for a write in a thread, so `have` and `digest` still match the part."""
        if self._threaded:
            written = asyncio.get_running_loop().run_in_executor(None, write, batch)
            cancelled = False
            while not written.done():
                try:
                    await asyncio.wait({written})
                except asyncio.CancelledError:
                    cancelled = True
            written.result()
        else:
            began = self.clock.monotonic()
            write(batch)
            self._threaded = self.clock.monotonic() - began > _SLOW_WRITE_SECONDS
            cancelled = False
        self.have += sum(map(len, batch))
        self._hashed = self.have
        if cancelled:
            raise asyncio.CancelledError

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
