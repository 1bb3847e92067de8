"""The download engine: a completed generation's files, streamed, verified and stored.

`download_generation_files` fetches the video (watermark-free source first), thumbnail and
last frame into `<destination>/<generation id>/`, with a plain HTTP client that never sends
the relay key (media links point at third-party CDNs). Each file streams into a `.part` in
64 KiB batches (memory stays flat), hashed on the way, checked against the announced length,
then renamed into place. Broken-off transfers resume with HTTP Range; a link that answers
401/403/404/410 (expired) is refreshed once from the relay; a rerun reuses the verified files
recorded in `<id>/.download.json` without any media request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError, LumaError
from luma_prefect._ids import check_generation_id
from luma_prefect._models import Generation, GenerationState
from luma_prefect._outcomes import DownloadedAsset, DownloadedGeneration
from luma_prefect._urls import public_url
from luma_prefect.delivery._transfer import (
    LinkRefused,
    PartTransfer,
    Stalled,
    TransferLimits,
    TransientError,
    file_extension,
    media_client,
    progress_reporter,
)
from luma_prefect.relay._client import LumaClient
from luma_prefect.storage import Storage
from luma_prefect.wait._settings import Clock, SystemClock

__all__ = [
    "ASSET_NAMES",
    "DEFAULT_MAX_BYTES",
    "RECORD_NAME",
    "VIDEO_SOURCES",
    "ProgressCallback",
    "TransferLimits",
    "discard_holder_parts",
    "download_generation_files",
    "files_line",
    "media_client",
]

ASSET_NAMES: tuple[str, ...] = ("video", "thumbnail", "last_frame")
"""Every asset a download can fetch, in this order."""
VIDEO_SOURCES: tuple[str, ...] = ("video_raw", "download_url", "url")
"""Where the video may come from, watermark-free first."""
DEFAULT_MAX_BYTES = 4 * 1024**3
RECORD_NAME = ".download.json"
"""Per generation folder: what was downloaded and verified (size, sha256, source)."""
ProgressCallback = Callable[[str, int, int | None], Any]
"""`on_progress(asset_name, bytes_done, total_or_None)`, sync or async, ~4 calls a second."""

Logger = logging.Logger | logging.LoggerAdapter
_log = logging.getLogger("luma_prefect.download")


@dataclass(frozen=True)
class _Source:
    kind: str
    url: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None


def _dims(asset: Any) -> tuple[int | None, int | None, float | None]:
    if asset is None:
        return None, None, None
    return asset.width, asset.height, getattr(asset, "duration", None)


class _Links:
    """The generation's media links, refreshed from the relay at most once per version.

    Shared by the assets, so three expired links cost one re-query, not three.
    """

    def __init__(
        self, client: LumaClient, generation: Generation, sources: Sequence[str], logger: Logger
    ) -> None:
        self.client, self.generation, self.sources = client, generation, tuple(sources)
        self.logger = logger
        self.version = 0
        self._lock = asyncio.Lock()
        self._asked: dict[int, str | None] = {}

    async def source(self, name: str) -> _Source | None:
        g = self.generation
        if name != "video":
            image = g.thumbnail if name == "thumbnail" else g.last_frame
            if image is None or not image.url:
                return None
            return _Source(name, image.url, image.width, image.height)
        found = {
            "video_raw": (g.video_raw and g.video_raw.url, g.video_raw),
            "download_url": (g.video and g.video.download_url, g.video),
            "url": (g.video and g.video.url, g.video),
        }
        no_link = not any(url for url, _ in found.values())
        for kind in self.sources:
            url, asset = found[kind]
            # No watermark-free link in the object: relays have a route for one (asked only
            # where the style has it, or when the object has no video link at all).
            if not url and kind == "download_url" and (no_link or self._has_route()):
                url, asset = await self._ask_download_url(), g.video_raw or g.video
            if url:
                return _Source(kind, url, *_dims(asset))
        return None

    def _has_route(self) -> bool:
        return self.client.routes.download_url(self.generation.id) is not None

    async def _ask_download_url(self) -> str | None:
        async with self._lock:
            if self.version not in self._asked:
                gid = self.generation.id
                url = None
                try:
                    url = await self.client.get_download_url(gid)
                except LumaError as exc:
                    self.logger.warning("No watermark-free link for %s: %s", gid, exc)
                self._asked[self.version] = url
            return self._asked[self.version]

    async def refresh(self, seen: int) -> None:
        async with self._lock:
            if self.version == seen:
                self.generation = await self.client.get_generation(self.generation.id)
                self.version += 1


@dataclass
class _Context:
    storage: Storage
    http: httpx.AsyncClient
    links: _Links
    gid: str
    record: dict[str, Any]
    record_lock: asyncio.Lock
    gate: asyncio.Semaphore
    max_bytes: int
    chunk_size: int
    max_resume_attempts: int
    on_progress: ProgressCallback | None
    logger: Logger
    limits: TransferLimits
    clock: Clock
    part_tag: str | None = None


async def download_generation_files(
    client: LumaClient,
    generation: Generation,
    storage: Storage,
    *,
    assets: Sequence[str] = ASSET_NAMES,
    video_sources: Sequence[str] = VIDEO_SOURCES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_concurrent: int = 3,
    chunk_size: int = 64 * 1024,
    max_resume_attempts: int = 3,
    http: httpx.AsyncClient | None = None,
    on_progress: ProgressCallback | None = None,
    logger: Logger | None = None,
    limits: TransferLimits | None = None,
    clock: Clock | None = None,
    part_tag: str | None = None,
) -> DownloadedGeneration:
    """Download a completed generation's files into `storage`, under `<generation id>/`.

    The video comes from the first of `video_sources` the generation has: `video_raw`,
    then `download_url` (asking the relay's no-watermark route when the object has none),
    then the watermarked `url`; it is required. Thumbnail and last frame are skipped with a
    warning when the generation has none. At most `max_concurrent` files are fetched at
    once. `http` may be shared between calls: a plain client (see `media_client` and
    `LumaRelayCredentials.get_media_client`), never one that carries the relay key; the
    default one verifies TLS and refuses private hosts. Each file has a total deadline and
    a stall check (`limits`, timed by `clock`). `logger` gets the warnings (a file skipped,
    a link refreshed) and DEBUG lines; the caller says what was downloaded (`files_line`).
    `part_tag` names the `.part` files after their holder (a claim's owner), so two
    deliveries of one generation never write into the same part.

    """
    gid = generation.id
    _check_options(assets, video_sources, max_bytes, max_concurrent, chunk_size)
    if part_tag is not None and not (part_tag.isascii() and part_tag.isalnum()):
        raise LumaConfigurationError("part_tag must be ASCII letters and digits only.")
    if generation.state in (GenerationState.PENDING, GenerationState.PROCESSING):
        raise LumaDownloadError(
            f"Generation {gid} is {generation.state.value}, not completed: it has no files "
            "yet. Wait for it (wait_for_generation) before downloading.",
            generation_id=gid,
        )
    if generation.state is GenerationState.FAILED:
        raise LumaDownloadError(
            f"Generation {gid} failed ({generation.failure_reason or 'no reason given'}): "
            "there is nothing to download. Change the prompt and resubmit it.",
            generation_id=gid,
        )
    raw = await asyncio.to_thread(storage.read_bytes, f"{gid}/{RECORD_NAME}")
    own_http = http is None
    ctx = _Context(
        storage=storage,
        http=http or media_client(max_concurrent),
        links=_Links(client, generation, video_sources, logger or _log),
        gid=gid,
        record=_parse_record(raw),
        record_lock=asyncio.Lock(),
        gate=asyncio.Semaphore(max_concurrent),
        max_bytes=max_bytes,
        chunk_size=chunk_size,
        max_resume_attempts=max_resume_attempts,
        on_progress=on_progress,
        logger=logger or _log,
        limits=limits or TransferLimits(),
        clock=clock or SystemClock(),
        part_tag=part_tag,
    )
    try:
        # Every asset runs to its end, so the finished ones are recorded even if one fails.
        names = list(dict.fromkeys(assets))
        outcomes = await asyncio.gather(
            *(_fetch_asset(ctx, name) for name in names), return_exceptions=True
        )
    finally:
        if own_http:
            await ctx.http.aclose()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if isinstance(outcome, LumaError) and outcome.generation_id is None:
                outcome.generation_id = gid
            raise outcome
    files: dict[str, DownloadedAsset] = {
        a.name: a for a in outcomes if isinstance(a, DownloadedAsset)
    }
    return DownloadedGeneration(
        generation=ctx.links.generation,
        destination=storage.root,
        folder=storage.uri(gid),
        assets=files,
        downloaded_at=datetime.now(timezone.utc),
    )


def files_line(downloaded: DownloadedGeneration) -> str:
    """The files of a download and their sizes, for a log line: `video 1,234 B, ...`."""
    assets = downloaded.assets.items()
    return ", ".join(f"{name} {a.bytes:,} B" for name, a in assets) or "no files"


def discard_holder_parts(storage: Storage, generation_id: str, *, keep: str | None) -> list[str]:
    """Remove the part files of a generation that other holders left (`<asset>.<tag>.part`
    whose tag is not `keep`); returns the names removed.

    Only for the holder of the generation's claim: every other holder has lost it (dead,
    or silent past its lease), and a part is only resumed by the holder that wrote it, so
    theirs would stay forever. Untagged parts (downloads outside any claim) are left alone.
    """
    gid = check_generation_id(generation_id)
    removed = []
    for relpath in storage.parts(gid):
        asset, _, tag = relpath.rsplit("/", 1)[-1].partition(".")
        if asset in ASSET_NAMES and tag.isascii() and tag.isalnum() and tag != keep:
            storage.open_part(relpath).discard()
            removed.append(relpath)
    return removed


def _check_options(
    assets: Sequence[str], sources: Sequence[str], max_bytes: int, concurrent: int, chunk: int
) -> None:
    if isinstance(assets, str) or isinstance(sources, str):
        raise LumaConfigurationError(
            "assets and video_sources are lists of names, e.g. assets=['video'], not a string."
        )
    wrong = [a for a in assets if a not in ASSET_NAMES]
    wrong += [s for s in sources if s not in VIDEO_SOURCES]
    if wrong:
        raise LumaConfigurationError(
            f"Unknown assets or video sources {wrong}: assets are some of {ASSET_NAMES}, "
            f"video_sources some of {VIDEO_SOURCES}."
        )
    if max_bytes < 1 or concurrent < 1 or chunk < 1:
        raise LumaConfigurationError("max_bytes, max_concurrent and chunk_size must be >= 1.")


def _parse_record(raw: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    assets = data.get("assets") if isinstance(data, dict) else None
    return {"version": 1, "assets": assets if isinstance(assets, dict) else {}}


async def _fetch_asset(ctx: _Context, name: str) -> DownloadedAsset | None:
    async with ctx.gate:
        reused = await _reuse(ctx, name)
        if reused is not None:
            return reused
        refused: LinkRefused | None = None
        while True:
            seen = ctx.links.version
            source = await ctx.links.source(name)
            if source is None:
                _missing(ctx, name)
                return None
            try:
                return await _transfer(ctx, name, source)
            except LinkRefused as exc:
                if refused is not None:
                    raise _expired(ctx, name, source, exc.status) from None
                refused = exc
            ctx.logger.debug("%s link of %s answered %s", name, ctx.gid, refused.status)
            try:
                await ctx.links.refresh(seen)
            except LumaError as exc:
                raise _expired(ctx, name, source, refused.status, exc) from exc


def _expired(
    ctx: _Context, name: str, source: _Source, status: int, error: LumaError | None = None
) -> LumaDownloadError:
    then = (
        f"and asking the relay for fresh links failed ({error})"
        if error
        else ("also after asking the relay for fresh links")
    )
    return LumaDownloadError(
        f"The {name} of generation {ctx.gid} could not be downloaded: its {source.kind} link "
        f"answered HTTP {status}, {then}. Relay links expire within about an hour of "
        "completion: download promptly, or resubmit the generation if it is older.",
        generation_id=ctx.gid,
    )


def _missing(ctx: _Context, name: str) -> None:
    if name == "video":
        raise LumaDownloadError(
            f"Generation {ctx.gid} has no video link among the allowed sources "
            f"({', '.join(ctx.links.sources)}). Check that it is completed, or allow more "
            "video_sources.",
            generation_id=ctx.gid,
        )
    ctx.logger.warning("Generation %s has no %s: skipped.", ctx.gid, name)


async def _reuse(ctx: _Context, name: str) -> DownloadedAsset | None:
    """The asset recorded by an earlier run, if its file is there with the same sha256."""
    entry = ctx.record["assets"].get(name)
    if not isinstance(entry, dict):
        return None
    try:
        asset = DownloadedAsset.model_validate({**entry, "name": name, "path": "", "reused": True})
    except ValueError:
        return None
    if name == "video" and asset.source_kind not in ctx.links.sources:
        return None
    relpath = f"{ctx.gid}/{asset.file_name}"
    size = await asyncio.to_thread(ctx.storage.size, relpath)
    if size != asset.bytes or await asyncio.to_thread(ctx.storage.sha256, relpath) != asset.sha256:
        return None
    ctx.logger.debug("Reusing %s of %s: %s (%d bytes)", name, ctx.gid, relpath, size)
    return asset.model_copy(update={"path": ctx.storage.uri(relpath)})


async def _transfer(ctx: _Context, name: str, source: _Source) -> DownloadedAsset:
    scheme = urlsplit(source.url).scheme.lower()
    if scheme not in ("http", "https"):
        raise LumaDownloadError(
            f"The {name} link of generation {ctx.gid} is not an http(s) URL ({scheme or 'no'} "
            "scheme), so it was refused. The relay sent an unusable link: report it to them.",
            generation_id=ctx.gid,
        )
    tag = f".{ctx.part_tag}" if ctx.part_tag else ""
    part = ctx.storage.open_part(f"{ctx.gid}/{name}{tag}")
    meta = {"kind": source.kind, "url": public_url(source.url)}
    old = await asyncio.to_thread(part.read_meta) or {}
    if {key: old.get(key) for key in meta} != meta:
        # A left-over part from another link (or of unknown origin) cannot be appended to.
        await asyncio.to_thread(part.discard)
        old = {}
    transfer = PartTransfer(
        ctx.http,
        part,
        name=name,
        generation_id=ctx.gid,
        meta={**old, **meta},
        max_bytes=ctx.max_bytes,
        chunk_size=ctx.chunk_size,
        progress=progress_reporter(ctx.on_progress, name),
        limits=ctx.limits,
        clock=ctx.clock,
    )
    deadline = ctx.clock.monotonic() + ctx.limits.deadline_seconds
    failures = 0
    while True:
        try:
            await transfer.run(source.url, deadline=deadline)
            break
        except httpx.UnsupportedProtocol as exc:
            raise LumaDownloadError(
                f"The {name} link of generation {ctx.gid} redirected to an unsupported URL "
                f"({exc}). The relay sent an unusable link: report it to them.",
                generation_id=ctx.gid,
            ) from exc
        except (httpx.TransportError, TransientError, Stalled) as exc:
            if _untrusted(exc):
                raise LumaDownloadError(
                    f"The {name} link of generation {ctx.gid} failed TLS verification "
                    f"({exc}). If the CDN uses a private CA, give its bundle as `verify` on "
                    "the credentials.",
                    generation_id=ctx.gid,
                ) from exc
            failures = await _broke_off(ctx, name, transfer, failures, exc, deadline)
    content_type = transfer.meta.get("content_type")
    file_name = name + file_extension(content_type, source.url, name)
    path = await asyncio.to_thread(part.commit, f"{ctx.gid}/{file_name}")
    asset = DownloadedAsset(
        name=name,  # type: ignore[arg-type]
        path=path,
        file_name=file_name,
        bytes=transfer.have,
        sha256=transfer.digest.hexdigest(),
        content_type=content_type,
        source_kind=source.kind,
        source_url=public_url(source.url),
        width=source.width,
        height=source.height,
        duration=source.duration,
    )
    await _record(ctx, asset)
    # DEBUG: the caller's one INFO line names every file and its size (`files_line`); a line
    # per file made three INFO records more per generation, CPU in Prefect's log handlers.
    ctx.logger.debug("Wrote the %s of %s: %d bytes to %s", name, ctx.gid, asset.bytes, path)
    return asset


def _untrusted(exc: BaseException) -> bool:
    """Whether a transport error is a failed certificate check (whatever class the transport
    mapped it to: a transport given to `media_client` may make it a ConnectTimeout)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _broke_off(
    ctx: _Context,
    name: str,
    transfer: PartTransfer,
    failures: int,
    exc: Exception,
    deadline: float,
) -> int:
    """Count one broken-off attempt: fail past `max_resume_attempts`, else pause if asked."""
    failures += 1
    if failures > ctx.max_resume_attempts:
        raise LumaDownloadError(
            f"The {name} of generation {ctx.gid} broke off {failures} times, the last "
            f"after {transfer.have} bytes ({exc!r}). The partial file is kept: run "
            "again soon, before the links expire, to resume it.",
            generation_id=ctx.gid,
            retryable=True,
        ) from exc
    ctx.logger.debug("%s of %s broke off at %d: %r", name, ctx.gid, transfer.have, exc)
    if isinstance(exc, TransientError):
        # The one retry schedule: the relay client's policy, slept through its (injectable)
        # sleep, never past the file's deadline.
        client = ctx.links.client
        pause = client.retry.delay(failures)
        await client.sleep(max(min(pause, deadline - ctx.clock.monotonic()), 0.0))
    return failures


async def _record(ctx: _Context, asset: DownloadedAsset) -> None:
    # After each verified file, so a crash later still lets a rerun reuse this one.
    async with ctx.record_lock:
        entry = asset.model_dump(mode="json", exclude={"name", "path", "reused"})
        ctx.record["assets"][asset.name] = entry
        # Compact: with `indent`, json leaves its C encoder (2.8x slower per record).
        body = json.dumps(ctx.record, sort_keys=True, separators=(",", ":")).encode()
        await asyncio.to_thread(ctx.storage.write_bytes, f"{ctx.gid}/{RECORD_NAME}", body)
