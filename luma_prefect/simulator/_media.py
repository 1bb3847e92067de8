"""Media the simulator serves like a CDN: real small files, or large synthetic videos.

Synthetic bodies are position-determined bytes cut from one precomputed 1 MiB block, so a
1 GiB download costs a flat 1 MiB of memory, and any Range of it can be checked against
`synthetic_bytes`. Chunks are aligned on that block, so all but the first and last are the
block itself, sent without a copy: the simulator should cost its host as little CPU as a
CDN on another machine would.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from importlib import resources

from starlette.types import Receive, Scope, Send

from luma_prefect.simulator._responses import ConnectionDropped

__all__ = [
    "CHUNK_SIZE",
    "MediaResponse",
    "Unsatisfiable",
    "media_file",
    "parse_range",
    "synthetic_bytes",
]

CHUNK_SIZE = 1 << 20
# A real MP4 `ftyp` box first, so a magic-bytes check on a synthetic video passes.
_FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
_FILES = {
    "video.mp4": ("video.mp4", "video/mp4"),
    "video_raw.mp4": ("video.mp4", "video/mp4"),
    "thumbnail.jpg": ("thumbnail.jpg", "image/jpeg"),
    "last_frame.jpg": ("last_frame.jpg", "image/jpeg"),
}


@functools.lru_cache(maxsize=1)
def _block() -> bytes:
    return _FTYP + random.Random(0x1D5EA5E).randbytes(CHUNK_SIZE - len(_FTYP))


def synthetic_bytes(start: int, length: int) -> bytes:
    """`length` bytes of the synthetic video body from offset `start` (for checking downloads)."""
    parts = []
    position, end = start, start + length
    while position < end:
        offset = position % CHUNK_SIZE
        size = min(CHUNK_SIZE - offset, end - position)
        parts.append(_block()[offset : offset + size])
        position += size
    return b"".join(parts)


@functools.cache
def media_file(name: str) -> tuple[bytes, str]:
    """The bytes and Content-Type of one shipped media file, by its public name."""
    filename, media_type = _FILES[name]
    data = resources.files("luma_prefect.simulator").joinpath("media", filename).read_bytes()
    return data, media_type


class Unsatisfiable(Exception):
    """A Range that selects nothing of the body: answered with 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, as (first, last) inclusive; None for the whole body.

    Invalid or multi-range headers are ignored (whole body), as RFC 9110 allows.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    try:
        first = int(first_text) if first_text.strip() else None
        last = int(last_text) if last_text.strip() else None
    except ValueError:
        return None
    if not dash or (first is None and last is None):
        return None
    if first is None:
        assert last is not None
        if last <= 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - last), size - 1
    if first >= size:
        raise Unsatisfiable(header)
    last = size - 1 if last is None else last
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


class MediaResponse:
    """A CDN answer with Range support, streamed in 1 MiB chunks.

    With `drop`, the connection is cut `drop_after` bytes into the body (default: half);
    with `stall` as well, the body goes silent there instead (until the client leaves), and
    with `trickle` it goes on one byte every `trickle` seconds.
    """

    def __init__(
        self,
        *,
        size: int,
        media_type: str,
        range_header: str | None,
        content: bytes | None = None,
        drop: bool = False,
        drop_after: int | None = None,
        stall: bool = False,
        trickle: float | None = None,
        on_bytes: Callable[[int], None] = lambda count: None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.size = size
        self.content = content
        self.media_type = media_type
        self.range_header = range_header
        self.drop = drop
        self.drop_after = drop_after
        self.stall = stall
        self.trickle = trickle
        self.on_bytes = on_bytes
        self.extra_headers = extra_headers or {}

    def _headers(self, items: dict[str, str]) -> list[tuple[bytes, bytes]]:
        merged = {"accept-ranges": "bytes", **self.extra_headers, **items}
        return [(k.lower().encode(), v.encode()) for k, v in merged.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            selected = parse_range(self.range_header, self.size)
        except Unsatisfiable:
            headers = {"content-range": f"bytes */{self.size}", "content-length": "0"}
            await send(
                {"type": "http.response.start", "status": 416, "headers": self._headers(headers)}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        first, last = selected if selected else (0, self.size - 1)
        length = max(0, last - first + 1)
        headers = {"content-type": self.media_type, "content-length": str(length)}
        if selected:
            headers["content-range"] = f"bytes {first}-{last}/{self.size}"
        status = 206 if selected else 200
        await send(
            {"type": "http.response.start", "status": status, "headers": self._headers(headers)}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        dropping = self.drop and (self.drop_after is None or self.drop_after < length)
        limit = (
            (length // 2 if self.drop_after is None else self.drop_after) if dropping else length
        )
        await self._stream(receive, send, first, limit, dropping, length)

    async def _stream(
        self, receive: Receive, send: Send, first: int, limit: int, dropping: bool, length: int
    ) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            sent = 0
            while sent < limit and not gone.is_set():
                # Up to the next block boundary, so the chunks after the first are whole blocks.
                size = min(CHUNK_SIZE - (first + sent) % CHUNK_SIZE, limit - sent)
                chunk = self._chunk(first + sent, size)
                more = dropping or sent + size < limit
                # Counted before sending: once sent, the client (another thread) may read the
                # counters before this coroutine runs again.
                self.on_bytes(size)
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                sent += size
                # Uvicorn's send returns at once, without yielding, once the client is gone:
                # yield so the watcher can notice, or a lost 1 GiB download spins to its end.
                await asyncio.sleep(0)
            if limit == 0 and not dropping:
                await send({"type": "http.response.body", "body": b""})
            if dropping and (self.stall or self.trickle is not None):
                await self._slow_rest(send, first + sent, length - sent, gone)
                return
        finally:
            watcher.cancel()
        if dropping and not gone.is_set():
            raise ConnectionDropped("media body cut on purpose by a DROP_CONNECTION fault")

    async def _slow_rest(self, send: Send, position: int, left: int, gone: asyncio.Event) -> None:
        """The rest of a stalling body (nothing) or of a trickling one (a byte at a time)."""
        while left > 0 and not gone.is_set():
            if self.trickle is None:
                await gone.wait()
                return
            try:
                await asyncio.wait_for(gone.wait(), self.trickle)
                return
            except asyncio.TimeoutError:
                pass
            self.on_bytes(1)
            left -= 1
            await send(
                {
                    "type": "http.response.body",
                    "body": self._chunk(position, 1),
                    "more_body": left > 0,
                }
            )
            position += 1

    def _chunk(self, position: int, size: int) -> bytes:
        if self.content is not None:
            return self.content[position : position + size]
        offset = position % CHUNK_SIZE
        if offset == 0 and size == CHUNK_SIZE:
            return _block()  # the whole block: no copy
        return _block()[offset : offset + size]
