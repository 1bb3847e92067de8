"""Tasks that deliver a completed generation: download its files, publish them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from luma_prefect._models import Generation, GenerationId, GenerationRequest
from luma_prefect._outcomes import AssetName, DownloadedGeneration, PublishedGeneration
from luma_prefect._urls import public_url
from luma_prefect.delivery._download import (
    DEFAULT_MAX_BYTES,
    VIDEO_SOURCES,
    download_generation_files,
    files_line,
)
from luma_prefect.delivery._publish import (
    EVENT_PUBLISHED,
    MANIFEST_NAME,
    build_manifest,
    create_summary_artifact,
    emit_generation_event,
    manifest_bytes,
    summary_artifact_key,
)
from luma_prefect.storage import storage_for
from luma_prefect.tasks import _names as names
from luma_prefect.tasks._common import (
    DOWNLOAD_BACKSTOP_SECONDS,
    PUBLISH_BACKSTOP_SECONDS,
    READ_OPTIONS,
    CredentialsInput,
    Destination,
    media_client_for,
    relay_client,
    resolve_credentials,
)
from luma_prefect.tasks._progress import DownloadProgress


@task(
    name="download-generation",
    task_run_name=names.download_name,
    tags=[names.RUN_TAG],
    timeout_seconds=DOWNLOAD_BACKSTOP_SECONDS,
    **READ_OPTIONS,
)
async def download_generation(
    credentials: CredentialsInput,
    generation: Generation | GenerationId,
    destination: Destination,
    assets: Sequence[AssetName] = ("video", "thumbnail", "last_frame"),
    video_sources: Sequence[str] = VIDEO_SOURCES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_concurrent_downloads: int = 3,
    part_tag: str | None = None,
    progress_artifact: bool = True,
    progress_after_seconds: float = 0.0,
) -> DownloadedGeneration:
    """Download a completed generation's files to `<destination>/<generation id>/`.

    `generation` is a `Generation` or a generation id (then fetched first). `destination`
    is a local folder, an fsspec URL (`s3://bucket/luma`, `memory://x`), or a Prefect
    `LocalFileSystem` / `RemoteFileSystem` block. The video comes from the first of
    `video_sources` the generation has (watermark-free first); thumbnail and last frame
    are skipped with a warning when missing. Files stream to disk, are verified (length,
    sha256) and resumed with HTTP Range after a broken connection; expired links are
    refreshed once from the relay; a rerun reuses verified files without downloading.
    `part_tag` (letters and digits) names the partial files after their holder, so two
    concurrent deliveries of one generation never write into the same `.part`.
    With `progress_artifact` (the default) a progress artifact shows the bytes done, updated
    at most every 5 s; with `progress_after_seconds` only once the download has run that
    long (a batch's quick downloads cost no artifact each).

    Example:
        ```python
        from prefect import flow
        from luma_prefect.tasks import download_generation, wait_for_generation

        @flow
        async def fetch_video(generation_id: str) -> str:
            done = await wait_for_generation("luma-relay", generation_id)
            downloaded = await download_generation("luma-relay", done, "./luma-output")
            return downloaded.assets["video"].path
        ```
    """
    downloaded = await fetch_files(
        credentials,
        generation,
        destination,
        assets,
        video_sources,
        max_bytes,
        max_concurrent_downloads,
        part_tag,
        progress_artifact,
        progress_after_seconds,
    )
    get_run_logger().info(
        "Downloaded generation %s: %s.", downloaded.generation.id, files_line(downloaded)
    )
    return downloaded


async def fetch_files(
    credentials: CredentialsInput,
    generation: Generation | GenerationId,
    destination: Destination,
    assets: Sequence[AssetName] = ("video", "thumbnail", "last_frame"),
    video_sources: Sequence[str] = VIDEO_SOURCES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_concurrent_downloads: int = 3,
    part_tag: str | None = None,
    progress_artifact: bool = True,
    progress_after_seconds: float = 0.0,
) -> DownloadedGeneration:
    """`download_generation`'s body without its INFO line: `deliver_generation` says
    downloaded and published in one line (a log record costs CPU in Prefect's handlers)."""
    block = await resolve_credentials(credentials)
    storage = storage_for(destination)
    async with (
        relay_client(block) as client,
        media_client_for(block, max_concurrent_downloads) as http,
    ):
        if not isinstance(generation, Generation):
            generation = (
                Generation.model_validate(generation)
                if isinstance(generation, dict)
                else await client.get_generation(generation)
            )
        progress = (
            DownloadProgress(generation.id, after_seconds=progress_after_seconds)
            if progress_artifact
            else None
        )
        if progress is not None:
            await progress.start()
        try:
            downloaded = await download_generation_files(
                client,
                generation,
                storage,
                assets=assets,
                video_sources=video_sources,
                max_bytes=max_bytes,
                max_concurrent=max_concurrent_downloads,
                http=http,
                logger=get_run_logger(),
                part_tag=part_tag,
                on_progress=progress.bytes if progress is not None else None,
            )
        except Exception as exc:
            if progress is not None:
                await progress.fail(exc)
            raise
        if progress is not None:
            sizes = [asset.bytes for asset in downloaded.assets.values()]
            await progress.finish(len(sizes), sum(sizes))
    return downloaded.model_copy(
        update={"relay_base_url": public_url(block.base_url), "relay_style": block.api_style}
    )


@task(
    name="publish-generation",
    task_run_name=names.publish_name,
    tags=[names.RUN_TAG],
    cache_policy=NO_CACHE,
    timeout_seconds=PUBLISH_BACKSTOP_SECONDS,
)
async def publish_generation(
    downloaded: DownloadedGeneration,
    destination: Destination | None = None,
    request: GenerationRequest | None = None,
    timeline: dict[str, datetime] | None = None,
    create_artifacts: bool = True,
    emit_events: bool = True,
) -> PublishedGeneration:
    """Publish a downloaded generation: `manifest.json` beside its files, a markdown
    artifact in the run, and the `luma.generation.published` event.

    The artifact shows our own copy of the thumbnail (inlined; the relay's links expire)
    and where each file is; its key is one per flow and deployment
    (`luma-generate-video`), the generation in its description.

    `destination` defaults to the one the files were downloaded to; pass the block again
    when that was a filesystem block. The manifest lists the request, the states with their
    times, each file (bytes, sha256, size, source link without secrets) and the relay.

    Example:
        ```python
        from luma_prefect.tasks import download_generation, publish_generation

        downloaded = await download_generation("luma-relay", generation, "./luma-output")
        published = await publish_generation(downloaded)
        print(published.manifest_path)
        ```
    """
    published, states = await publish_files(
        downloaded,
        destination=destination,
        request=request,
        timeline=timeline,
        create_artifacts=create_artifacts,
    )
    return announce_published(published, states, emit_event=emit_events)


async def publish_files(
    downloaded: DownloadedGeneration,
    destination: Destination | None = None,
    request: GenerationRequest | None = None,
    timeline: dict[str, datetime] | None = None,
    create_artifacts: bool = True,
) -> tuple[PublishedGeneration, list[dict[str, str]]]:
    """`publish_generation` without its event, and the manifest's states for that event.

    The flows send the event themselves, once the files are checked against the manifest
    and the ledger says published: automations act on it, so it never comes for a manifest
    that is taken back.
    """
    generation = downloaded.generation
    storage = storage_for(downloaded.destination if destination is None else destination)
    manifest = build_manifest(downloaded, request=request, timeline=timeline)
    # In a worker thread, as every storage call of the flows: never on the event loop.
    manifest_path = await asyncio.to_thread(
        storage.write_bytes, f"{generation.id}/{MANIFEST_NAME}", manifest_bytes(manifest)
    )
    keys: list[str] = []
    if create_artifacts:
        key = summary_artifact_key()
        await create_summary_artifact(downloaded, manifest_path, key, storage)
        keys.append(key)
    published = PublishedGeneration(
        generation_id=generation.id,
        downloaded=downloaded,
        manifest_path=manifest_path,
        artifact_keys=keys,
    )
    return published, manifest["states"]


def announce_published(
    published: PublishedGeneration,
    states: list[dict[str, str]],
    *,
    emit_event: bool = True,
    downloaded_too: bool = False,
) -> PublishedGeneration:
    """Say it: the INFO line (`downloaded_too`: with the files downloaded, for a download
    that said nothing itself), and (`emit_event`) `luma.generation.published` with
    manifest, files and states, `published` then naming the event."""
    if downloaded_too:
        get_run_logger().info(
            "Downloaded and published generation %s (%s): %s",
            published.generation_id,
            files_line(published.downloaded),
            published.manifest_path,
        )
    else:
        get_run_logger().info(
            "Published generation %s: %s", published.generation_id, published.manifest_path
        )
    if not emit_event:
        return published
    files = {name: asset.path for name, asset in published.downloaded.assets.items()}
    emit_generation_event(
        EVENT_PUBLISHED,
        published.downloaded.generation,
        {"manifest": published.manifest_path, "files": files, "states": states},
    )
    return published.model_copy(update={"events": [*published.events, EVENT_PUBLISHED]})
